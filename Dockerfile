# cutover's image: the one `cutover` binary (server, CLI and the demo's upstream application) on a
# small base, running as an unprivileged user. `docker compose up` builds it (docker-compose.yml);
# on its own: `docker build -t cutover .`.

# Build: the release binary, with the versions in Cargo.lock and cluster mode (`serve --etcd`).
FROM rust:1.95-slim-bookworm AS build
# jemalloc (cutover's allocator) is built from C source with make, which the slim image lacks;
# the `cluster` feature's etcd client compiles etcd's protos with protoc (protobuf-compiler).
RUN apt-get update \
 && apt-get install -y --no-install-recommends make protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin cutover --features cluster \
 && mkdir -p /out/state /out/certs \
 && cp target/release/cutover /out/cutover

# Run: distroless (glibc, libgcc, CA certificates; no shell, no package manager), ~25 MB plus the
# binary, as its `nonroot` user (uid 65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/cutover /usr/local/bin/cutover
# Where `--state /var/lib/cutover/state.json` keeps the runtime state: writable by the user, as
# the deployment file's directory usually is not (a read-only mount, a ConfigMap).
COPY --from=build --chown=65532:65532 /out/state /var/lib/cutover
# Where the compose demo's `certs` service writes its certificates: a new volume mounted here
# takes this directory's owner, so the user can write it.
COPY --from=build --chown=65532:65532 /out/certs /certs
USER 65532:65532
# ADS (gRPC), admin API, and the demo upstream's default port.
EXPOSE 18000 19000 8080
ENTRYPOINT ["/usr/local/bin/cutover"]
CMD ["--help"]
