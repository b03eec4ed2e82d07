#!/usr/bin/env python3
"""Switch latency: how fast a save of the deployment file reaches Envoy through cutover,
compared with Envoy's own file-based dynamic configuration applying the same change.

Two setups run side by side on this machine, each with its own Envoy, in front of the same two
upstreams (HTTP servers in this process answering "blue" and "green"):

  A  cutover: `cutover serve deploy.yaml` + an Envoy from `cutover bootstrap` (ADS over gRPC).
     A switch rewrites deploy.yaml (`active: blue` <-> `active: green`) by write-then-rename.
  B  Envoy file-based xDS: the resources `cutover render --format json` prints for the same
     deployment, with every ADS config source replaced by a `path_config_source` with a
     `watched_directory` (CDS, LDS, RDS and per-cluster EDS each in a file of their own
     directory). A switch rewrites the RDS file by write-then-rename.

For each switch: t0 just before the rename; then the setup's listener is polled over one
keep-alive HTTP connection (a fresh request every ~0.2 ms) until the body is the new colour; that
response's arrival is t1. Latency = t1 - t0. A and B switches are interleaved (A, B, A, B, ...)
with a short pause between switches, so machine noise hits both alike; during the pauses a
trickle of requests (one per setup every ~1 ms) keeps both pipelines warm and checks that every
answer has the colour the setup should be serving.

Where the time goes, without the probe's own round trip: both Envoys run with
`--component-log-level rds:debug` and a microsecond log timestamp, so the moment each Envoy's
main thread takes the new route configuration ("rds: loading new configuration") is known on the
same clock as t0; cutover runs with RUST_LOG=cutover=debug and JSON logs, giving "config published",
the RDS push and Envoy's ACK. `--quiet-logs` turns all of that off.

Usage (from the repository root, after `cargo build --release`):

    python3 bench/switch_latency.py                  # 100 switches each
    python3 bench/switch_latency.py --switches 300 --json results.json
    python3 bench/switch_latency.py --services 1000  # one route changed among 1000 services

Standard library only; Python 3.11+. Only 127.0.0.1 is used. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import http.client
import http.server
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COLOURS = ("blue", "green")
HCM_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)


# ---------------------------------------------------------------------------------------------
# Small helpers


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (all held open until all are chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_atomic(path: Path, text: str) -> Path:
    """Writes `text` to a temporary file next to `path` and returns it; rename it to commit."""
    tmp = path.with_name("." + path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    return tmp


def http_get(url: str, timeout: float = 1.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def wait_until(what: str, check, timeout: float, interval: float = 0.02):
    """Calls check() until it returns something truthy; bounded by `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_err = None
    while time.monotonic() < deadline:
        try:
            v = check()
            if v:
                return v
        except (OSError, http.client.HTTPException, ValueError) as e:
            last_err = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_err})")


def percentile(sorted_xs: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_xs:
        return float("nan")
    k = (len(sorted_xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (k - lo)


def summary(xs: list[float]) -> dict:
    s = sorted(xs)
    return {
        "n": len(s),
        "median": percentile(s, 50),
        "p90": percentile(s, 90),
        "p99": percentile(s, 99),
        "min": s[0] if s else float("nan"),
        "max": s[-1] if s else float("nan"),
        "mean": statistics.fmean(s) if s else float("nan"),
    }


# ---------------------------------------------------------------------------------------------
# Upstreams


class ColourHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Envoy reuses its upstream connections
    disable_nagle_algorithm = True
    colour = b""

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        body = self.colour
        # One write for headers and body: no Nagle/delayed-ACK stalls.
        self.wfile.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )

    def log_message(self, format, *args) -> None:  # noqa: A002
        pass


class Upstream:
    def __init__(self, colour: str):
        handler = type(f"{colour}Handler", (ColourHandler,), {"colour": colour.encode()})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------------------------
# Processes


class Processes:
    """Child processes, each in its own process group, all stopped by stop_all()."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        out = open(self.logdir / f"{name}.log", "wb")
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches this script only; it stops the children
        )
        out.close()
        self.procs.append((name, p))
        return p

    def check_alive(self) -> None:
        for name, p in self.procs:
            if p.poll() is not None:
                tail = (self.logdir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with status {p.returncode}; log tail:\n{tail}")

    def stop_all(self) -> None:
        for _, p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 5
        for name, p in reversed(self.procs):
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{name} did not stop on SIGTERM; killing it")
                p.kill()
                p.wait(timeout=5)
        self.procs.clear()


# ---------------------------------------------------------------------------------------------
# Configuration


def deployment_yaml(listener_port: int, blue: int, green: int, active: str, services: int = 1) -> str:
    """The deployment both setups serve: `checkout` (the one switched) behind `/`, and
    `services - 1` more services of their own, each routed by a prefix of its own before it, so
    that a switch changes one route of a route configuration as large as the file."""
    routes = "".join(
        f"      - match: {{ prefix: /s{i}/ }}\n        service: s{i}\n" for i in range(1, services)
    )
    others = "".join(
        f"  s{i}:\n    versions:\n      blue:  {{ endpoints: [127.0.0.1:{blue}] }}\n"
        f"      green: {{ endpoints: [127.0.0.1:{green}] }}\n    active: blue\n"
        for i in range(1, services)
    )
    return f"""\
# Generated by bench/switch_latency.py
listeners:
  - name: public
    address: 127.0.0.1:{listener_port}
    routes:
{routes}      - match: {{ prefix: / }}
        service: checkout

services:
  checkout:
    versions:
      blue:  {{ endpoints: [127.0.0.1:{blue}] }}
      green: {{ endpoints: [127.0.0.1:{green}] }}
    active: {active}
{others}"""


def cutover_render(cutover: str, spec: Path) -> dict:
    out = subprocess.run(
        [cutover, "render", str(spec), "--format", "json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return json.loads(out.stdout)


def path_source(original: dict, file: Path) -> dict:
    """`original` (an ADS config source) with `ads` replaced by a watched path source."""
    if "ads" not in original:
        raise ValueError(f"expected an ADS config source, got {original}")
    src = {k: v for k, v in original.items() if k != "ads"}
    src["path_config_source"] = {
        "path": str(file),
        "watched_directory": {"path": str(file.parent)},
    }
    return src


def contains_key(value, key: str) -> bool:
    if isinstance(value, dict):
        return key in value or any(contains_key(v, key) for v in value.values())
    if isinstance(value, list):
        return any(contains_key(v, key) for v in value)
    return False


def safe_name(resource_name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in resource_name)


class FileLayout:
    """Where setup B's resource files live: each in a watched directory of its own (the least
    work per save for Envoy: a rename reloads only that file), or all in one shared directory
    (as with a Kubernetes ConfigMap: a rename reloads every file)."""

    def __init__(self, root: Path, shared: bool):
        self.root = root
        self.shared = shared
        self.cds = self._path("cds")
        self.lds = self._path("lds")
        self.rds = self._path("rds")

    def _path(self, name: str) -> Path:
        return self.root / f"{name}.json" if self.shared else self.root / name / f"{name}.json"

    def eds(self, cluster: str) -> Path:
        return self._path(f"eds-{safe_name(cluster)}")


def file_based_resources(rendered: dict, layout: FileLayout) -> dict[Path, dict]:
    """Setup B's files from `cutover render` output: {path: DiscoveryResponse-shaped JSON}."""
    r = copy.deepcopy(rendered)
    files: dict[Path, dict] = {}
    version = r["version"]
    for cluster in r["clusters"]:
        eds = cluster["eds_cluster_config"]
        eds["eds_config"] = path_source(eds["eds_config"], layout.eds(cluster["name"]))
    for cla in r["endpoints"]:
        files[layout.eds(cla["cluster_name"])] = {"version_info": version, "resources": [cla]}
    n_rds = 0
    for listener in r["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                tc = f["typed_config"]
                if tc.get("@type") == HCM_TYPE:
                    tc["rds"]["config_source"] = path_source(tc["rds"]["config_source"], layout.rds)
                    n_rds += 1
    if n_rds != 1 or len(r["routes"]) != 1:
        raise ValueError("expected exactly one listener with RDS and one route configuration")
    files[layout.cds] = {"version_info": version, "resources": r["clusters"]}
    files[layout.lds] = {"version_info": version, "resources": r["listeners"]}
    files[layout.rds] = {"version_info": version, "resources": r["routes"]}
    for path, content in files.items():
        if contains_key(content, "ads"):
            raise ValueError(f"{path}: an ADS config source is left")
    return files


def file_based_bootstrap(layout: FileLayout, admin_port: int) -> dict:
    def src(p: Path) -> dict:
        return {
            "resource_api_version": "V3",
            "path_config_source": {"path": str(p), "watched_directory": {"path": str(p.parent)}},
        }

    return {
        "node": {"id": "bench-file", "cluster": "bench-file"},
        "dynamic_resources": {"cds_config": src(layout.cds), "lds_config": src(layout.lds)},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
    }


# ---------------------------------------------------------------------------------------------
# Measuring


class Prober:
    """Fresh HTTP requests over one keep-alive connection to an Envoy listener."""

    def __init__(self, port: int):
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def get(self) -> tuple[int | None, str]:
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                self.conn.connect()
                self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conn.request("GET", "/")
            resp = self.conn.getresponse()
            body = resp.read().decode(errors="replace")
            if resp.will_close:
                self.close()
            return resp.status, body
        except (OSError, http.client.HTTPException) as e:
            self.close()
            return None, f"{type(e).__name__}: {e}"

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Setup:
    """One side of the comparison: its Envoy listener, and the file whose rename is a switch."""

    def __init__(self, name: str, listener_port: int, target: Path, texts: dict[str, str]):
        self.name = name
        self.prober = Prober(listener_port)
        self.target = target  # deploy.yaml (A) or the RDS file (B)
        self.texts = texts  # its content per colour
        self.colour = "blue"
        self.pause_requests = 0
        self.pause_errors = 0
        self.pause_error_samples: list[str] = []

    def prepare(self, colour: str) -> Path:
        """Writes the temporary file for a switch to `colour`; returns it (not yet renamed)."""
        return write_atomic(self.target, self.texts[colour])


def switch(setup: Setup, new: str, poll_interval: float, timeout: float) -> dict:
    old = setup.colour
    tmp = setup.prepare(new)
    wall0 = time.time_ns()
    t0 = time.perf_counter_ns()
    os.rename(tmp, setup.target)
    renamed = time.perf_counter_ns()
    polls = old_seen = errors = 0
    error_samples: list[str] = []
    t1 = None
    sent = last_old_sent = first_new_sent = None
    trace: list[tuple[float, float, str]] = []  # (sent, received) ms after t0, and what came back
    deadline = t0 + int(timeout * 1e9)
    while True:
        sent = time.perf_counter_ns()
        status, body = setup.prober.get()
        now = time.perf_counter_ns()
        polls += 1
        if len(trace) < 100:
            kind = "new" if status == 200 and body == new else "old" if status == 200 and body == old else "error"
            trace.append((round((sent - t0) / 1e6, 3), round((now - t0) / 1e6, 3), kind))
        if status == 200 and body == new:
            t1, first_new_sent = now, sent
            break
        if status == 200 and body == old:
            old_seen += 1
            last_old_sent = sent
        else:
            errors += 1
            if len(error_samples) < 3:
                error_samples.append(f"{status}: {body[:120]}")
        if now >= deadline:
            break
        time.sleep(poll_interval)
    setup.colour = new
    return {
        "setup": setup.name,
        "to": new,
        "wall_t0_ns": wall0,
        "latency_ms": None if t1 is None else (t1 - t0) / 1e6,
        "timed_out": t1 is None,
        "rename_ms": (renamed - t0) / 1e6,  # part of the latency, for both setups alike
        # The switch took effect in Envoy after the last old-colour request was sent (or t0) and
        # before the first new-colour response arrived (t1).
        "last_old_sent_ms": None if last_old_sent is None else (last_old_sent - t0) / 1e6,
        "first_new_sent_ms": None if first_new_sent is None else (first_new_sent - t0) / 1e6,
        "polls": polls,
        "old_responses": old_seen,
        "error_responses": errors,
        "error_samples": error_samples,
        "poll_period_ms": ((now - t0) / 1e6 / polls) if polls else None,
        "probe_trace": trace,
    }


def wait_colour(setup: Setup, colour: str, timeout: float) -> None:
    def check():
        status, body = setup.prober.get()
        return status == 200 and body == colour

    wait_until(f"setup {setup.name} to answer {colour!r}", check, timeout, interval=0.01)


def cutover_in_sync(admin: int, version: str) -> bool:
    status, body = http_get(f"http://127.0.0.1:{admin}/status")
    if status != 200:
        return False
    report = json.loads(body)
    nodes = [n for n in report["nodes"] if n["id"] == "bench-cutover"]
    return report.get("config_version") == version and len(nodes) == 1 and nodes[0]["in_sync"]


def warm_pause(setups: list[Setup], seconds: float, probe: bool) -> None:
    """Waits `seconds`; with `probe`, keeps a trickle of requests (one per setup every ~1 ms) on
    both Envoys meanwhile, so that no switch starts from an idle, cold pipeline, and checks that
    every answer is the colour the setup should serve."""
    end = time.perf_counter() + seconds
    if not probe:
        time.sleep(seconds)
        return
    while time.perf_counter() < end:
        for s in setups:
            status, body = s.prober.get()
            s.pause_requests += 1
            if not (status == 200 and body == s.colour):
                s.pause_errors += 1
                if len(s.pause_error_samples) < 3:
                    s.pause_error_samples.append(f"{status}: {body[:120]}")
        time.sleep(0.001)


# ---------------------------------------------------------------------------------------------
# Logs: where the time goes


def parse_ts(ts: str) -> int:
    """RFC 3339 timestamp (any number of fractional digits) to ns since the epoch."""
    ts = ts.replace("Z", "+00:00")
    main, _, rest = ts.partition(".")
    frac, tz = rest, ""
    for i, c in enumerate(rest):
        if not c.isdigit():
            frac, tz = rest[:i], rest[i:]
            break
    base = dt.datetime.fromisoformat(main + tz)
    return int(base.timestamp()) * 1_000_000_000 + int((frac + "000000000")[:9])


# Envoy runs with --log-format ENVOY_LOG_FORMAT and --component-log-level rds:debug; this line is
# logged on Envoy's main thread when it takes a new route configuration (from ADS or a file alike),
# just before handing it to the worker threads.
ENVOY_LOG_FORMAT = "%E.%f [%l][%n] %v"
ENVOY_RDS_APPLIED = "rds: loading new configuration: config_name=public"


def envoy_rds_times(log_path: Path) -> list[int]:
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        if ENVOY_RDS_APPLIED in line:
            secs, _, frac = line.split(" ", 1)[0].partition(".")
            if secs.isdigit() and frac.isdigit():
                out.append(int(secs) * 1_000_000_000 + int(frac.ljust(9, "0")[:9]))
    return out


def windows(samples: list[dict]):
    """(sample, t0, end) per sample: the wall-clock span in which its events are looked for."""
    starts = [r["wall_t0_ns"] for r in samples] + [None]
    return [(r, r["wall_t0_ns"], end) for r, end in zip(samples, starts[1:])]


def ms_after(t: int | None, t0: int) -> float | None:
    return None if t is None else (t - t0) / 1e6


def annotate_envoy(log_path: Path, samples: list[dict]) -> None:
    times = envoy_rds_times(log_path)
    for r, t0, end in windows(samples):
        t = next((t for t in times if t >= t0 and (end is None or t < end)), None)
        r["envoy_applied_ms"] = ms_after(t, t0)


def annotate_cutover(log_path: Path, samples: list[dict], versions: dict[str, str]) -> None:
    """For each A switch, from cutover's JSON log (RUST_LOG=cutover=debug): ms from t0 to
    'config published', to the RDS response being handed to gRPC, to Envoy's RDS ACK, and which
    types were pushed."""
    events = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        events.append((parse_ts(e["timestamp"]), e.get("fields", {}).get("message"), e.get("fields", {})))
    for r, t0, end in windows(samples):
        window = [ev for ev in events if ev[0] >= t0 and (end is None or ev[0] < end)]
        loaded = next((t for t, m, f in window
                       if m in ("config published", "config loaded") and f.get("version") == versions[r["to"]]), None)
        pushes = [(t, f) for t, m, f in window if m == "push"]
        rds_push = next((t for t, f in pushes if f.get("type") == "rds"), None)
        rds_ack = next((t for t, m, f in window
                        if m == "ACK" and f.get("type") == "rds" and rds_push and t >= rds_push), None)
        r["cutover"] = {
            "loaded_ms": ms_after(loaded, t0),
            "rds_push_ms": ms_after(rds_push, t0),
            "rds_ack_ms": ms_after(rds_ack, t0),
            "pushed_types": sorted({f.get("type") for _, f in pushes}),
        }


# ---------------------------------------------------------------------------------------------
# Main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cutover", default=str(REPO / "target/release/cutover"),
                    help="cutover binary (default: target/release/cutover; build it with cargo build --release)")
    ap.add_argument("--envoy", default=str(REPO / ".venv/bin/envoy"), help="Envoy binary (default: .venv/bin/envoy)")
    ap.add_argument("--switches", type=int, default=100, help="measured switches per setup (default 100)")
    ap.add_argument("--services", type=int, default=1,
                    help="services in the deployment (default 1); a switch changes one route among them")
    ap.add_argument("--warmup", type=int, default=2,
                    help="switches per setup before the measured ones; printed, not in the statistics (default 2)")
    ap.add_argument("--pause", type=float, default=0.05, help="seconds between switches (default 0.05)")
    ap.add_argument("--idle-pause", action="store_true",
                    help="sleep during pauses instead of keeping a trickle of requests on both Envoys")
    ap.add_argument("--poll-interval", type=float, default=0.0002,
                    help="seconds between probe requests during a switch (default 0.0002)")
    ap.add_argument("--timeout", type=float, default=5.0,
                    help="seconds a switch may take before it counts as timed out (default 5)")
    ap.add_argument("--b-dirs", choices=("per-file", "shared"), default="per-file",
                    help="setup B: each resource file in a watched directory of its own (default), or all "
                         "in one watched directory, so that every save reloads every file")
    ap.add_argument("--concurrency", type=int, default=1, help="Envoy worker threads, both Envoys (default 1)")
    ap.add_argument("--quiet-logs", action="store_true",
                    help="run cutover with RUST_LOG=info and Envoy without rds:debug (no breakdown)")
    ap.add_argument("--workdir", type=Path,
                    help="where to create the work directory (default: the system temporary directory); "
                         "its file system decides how long the rename of a save takes")
    ap.add_argument("--json", type=Path, help="also write the summary and every sample to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs and logs)")
    args = ap.parse_args()
    if not 1 <= args.switches <= 100_000 or not 0 <= args.warmup <= 1000:
        ap.error("--switches must be 1..100000 and --warmup 0..1000")
    if not 0 <= args.pause <= 10 or not 0 <= args.poll_interval <= 0.1 or not 0 < args.timeout <= 60:
        ap.error("--pause must be 0..10 s, --poll-interval 0..0.1 s, --timeout 0..60 s")
    for b in (args.cutover, args.envoy):
        if not os.access(b, os.X_OK):
            ap.error(f"{b} is not an executable (build cutover with `cargo build --release`)")

    # The upstreams and the prober share the GIL; hand it over quickly.
    sys.setswitchinterval(0.0002)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    work = Path(tempfile.mkdtemp(prefix="cutover-switch-bench-", dir=args.workdir))
    procs = Processes(work)
    upstreams: list[Upstream] = []
    setups: list[Setup] = []
    try:
        return run(args, work, procs, upstreams, setups)
    finally:
        for s in setups:
            s.prober.close()
        procs.stop_all()
        for u in upstreams:
            u.close()
        if args.keep:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def fs_type(path: Path) -> str:
    """The file system type of `path`, from /proc/self/mounts (Linux), or '?'."""
    best, kind = "", "?"
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            mnt = parts[1].replace("\\040", " ")
            if str(path.resolve()).startswith(mnt.rstrip("/") + "/") and len(mnt) > len(best):
                best, kind = mnt, parts[2]
    except OSError:
        pass
    return kind


def run(args, work: Path, procs: Processes, upstreams: list, setups: list) -> int:
    tool_versions = {
        "cutover": subprocess.run([args.cutover, "--version"], capture_output=True, text=True,
                                  timeout=10).stdout.strip(),
        "envoy": subprocess.run([args.envoy, "--version"], capture_output=True, text=True,
                                timeout=30).stdout.strip().split("version:")[-1].strip(),
    }
    blue, green = Upstream("blue"), Upstream("green")
    upstreams += [blue, green]
    (a_listener, b_listener, ads, cutover_admin, a_admin, b_admin) = free_ports(6)

    # --- Setup A: cutover + an Envoy from `cutover bootstrap`
    a_dir = work / "a"
    (a_dir / "conf").mkdir(parents=True)
    deploy = a_dir / "conf" / "deploy.yaml"
    a_texts = {c: deployment_yaml(a_listener, blue.port, green.port, c, args.services) for c in COLOURS}
    a_versions = {}
    for c in COLOURS:
        p = a_dir / f"spec-{c}.yaml"
        p.write_text(a_texts[c])
        a_versions[c] = cutover_render(args.cutover, p)["version"]
    deploy.write_text(a_texts["blue"])
    env = dict(os.environ, RUST_LOG="info" if args.quiet_logs else "info,cutover=debug")
    procs.start("cutover", [args.cutover, "serve", str(deploy), "--ads", f"127.0.0.1:{ads}",
                            "--admin", f"127.0.0.1:{cutover_admin}", "--log-format", "json"], env=env)
    wait_until("cutover /readyz", lambda: http_get(f"http://127.0.0.1:{cutover_admin}/readyz")[0] == 200, 10)
    bootstrap = subprocess.run(
        [args.cutover, "bootstrap", "--node-id", "bench-cutover", "--ads", f"127.0.0.1:{ads}",
         "--admin", f"127.0.0.1:{a_admin}", "--format", "json"],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout
    (a_dir / "envoy.json").write_text(bootstrap)

    # --- Setup B: an Envoy reading the same resources from watched files
    b_dir = work / "b"
    b_dir.mkdir()
    layout = FileLayout(b_dir / "xds", shared=args.b_dirs == "shared")
    b_files = {}
    for c in COLOURS:
        p = b_dir / f"spec-{c}.yaml"
        p.write_text(deployment_yaml(b_listener, blue.port, green.port, c, args.services))
        b_files[c] = file_based_resources(cutover_render(args.cutover, p), layout)
    for path, content in b_files["blue"].items():
        if path != layout.rds:
            # Only the route configuration may differ between blue and green (and version labels).
            x, y = dict(content), dict(b_files["green"][path])
            x.pop("version_info"), y.pop("version_info")
            if x != y:
                raise RuntimeError(f"{path}: differs between blue and green besides RDS")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=1) + "\n")
    b_texts = {c: json.dumps(b_files[c][layout.rds], indent=1) + "\n" for c in COLOURS}
    (b_dir / "envoy.json").write_text(json.dumps(file_based_bootstrap(layout, b_admin), indent=1) + "\n")

    envoy_args = ["--disable-hot-restart", "--concurrency", str(args.concurrency), "--log-level", "warn"]
    if not args.quiet_logs:
        envoy_args += ["--component-log-level", "rds:debug", "--log-format", ENVOY_LOG_FORMAT]
    procs.start("envoy-a", [args.envoy, "-c", str(a_dir / "envoy.json"), *envoy_args])
    procs.start("envoy-b", [args.envoy, "-c", str(b_dir / "envoy.json"), *envoy_args])
    a = Setup("A", a_listener, deploy, a_texts)
    b = Setup("B", b_listener, layout.rds, b_texts)
    setups += [a, b]
    for s, admin in ((a, a_admin), (b, b_admin)):
        try:
            wait_until(f"Envoy {s.name} LIVE",
                       lambda: http_get(f"http://127.0.0.1:{admin}/ready")[1].strip() == "LIVE", 20)
            wait_colour(s, "blue", 20)
        except TimeoutError:
            procs.check_alive()
            raise
    wait_until("cutover /status in sync", lambda: cutover_in_sync(cutover_admin, a_versions["blue"]), 10)
    log(f"both setups answer 'blue'; work directory {work}")

    # --- The probe's own round trip at rest: the resolution of the end-to-end figures
    probe_rtt = {}
    for s in setups:
        rtts = []
        for _ in range(200):
            t = time.perf_counter_ns()
            status, body = s.prober.get()
            rtts.append((time.perf_counter_ns() - t) / 1e6)
            if (status, body) != (200, "blue"):
                raise RuntimeError(f"setup {s.name} answered {status} {body!r} at rest")
            time.sleep(args.poll_interval)
        probe_rtt[s.name] = summary(rtts)

    # --- Switches, interleaved A, B, A, B, ...
    samples: list[dict] = []
    total = args.warmup + args.switches
    status_checks = {"in_sync": 0, "not_in_sync": 0}
    for i in range(total):
        new = COLOURS[(i + 1) % 2]
        for s in (a, b):
            r = switch(s, new, args.poll_interval, args.timeout)
            r["round"] = i
            r["warmup"] = i < args.warmup
            samples.append(r)
            if r["timed_out"]:
                procs.check_alive()
                log(f"round {i}: setup {s.name} did not answer {new!r} within {args.timeout} s; "
                    f"{r['error_responses']} error responses {r['error_samples']}")
                wait_colour(s, new, 10)  # raises if the setup never gets there
            if s is a:
                # A check, not a timing: cutover reports the Envoy in sync at the new version.
                try:
                    wait_until("cutover in sync", lambda: cutover_in_sync(cutover_admin, a_versions[new]), 2, 0.002)
                    status_checks["in_sync"] += 1
                except TimeoutError:
                    status_checks["not_in_sync"] += 1
            warm_pause(setups, args.pause, probe=not args.idle_pause)
        if (i + 1) % 25 == 0 or i + 1 == total:
            log(f"{i + 1}/{total} rounds")
    procs.check_alive()

    # --- Results
    per_setup = {s.name: [r for r in samples if r["setup"] == s.name] for s in setups}
    if not args.quiet_logs:
        annotate_cutover(work / "cutover.log", per_setup["A"], a_versions)
        annotate_envoy(work / "envoy-a.log", per_setup["A"])
        annotate_envoy(work / "envoy-b.log", per_setup["B"])

    def stat(name: str, get) -> dict | None:
        mine = [r for r in per_setup[name] if not r["warmup"]]
        xs = [v for v in (get(r) for r in mine) if v is not None]
        if not xs:
            return None
        return {**summary(xs), "missing": len(mine) - len(xs)}

    result = {"latency": {}, "envoy_applied": {}, "cutover": {}, "checks": {}}
    for s in setups:
        mine = [r for r in per_setup[s.name] if not r["warmup"]]
        result["latency"][s.name] = stat(s.name, lambda r: r["latency_ms"])
        result["checks"][s.name] = {
            "timed_out": sum(r["timed_out"] for r in mine),
            "error_responses_during_switches": sum(r["error_responses"] for r in mine),
            "old_responses_per_switch_mean": statistics.fmean(r["old_responses"] for r in mine),
            "probe_period_ms_mean": statistics.fmean(r["poll_period_ms"] for r in mine),
            "rename_ms": summary([r["rename_ms"] for r in mine]),
            "pause_requests": s.pause_requests,
            "pause_error_responses": s.pause_errors,
            "pause_error_samples": s.pause_error_samples,
            "warmup_latency_ms": [r["latency_ms"] for r in per_setup[s.name] if r["warmup"]],
        }
        if not args.quiet_logs:
            result["envoy_applied"][s.name] = stat(s.name, lambda r: r.get("envoy_applied_ms"))
    if not args.quiet_logs:
        for key in ("loaded_ms", "rds_push_ms", "rds_ack_ms"):
            result["cutover"][key] = stat("A", lambda r: r["cutover"][key])
        result["cutover"]["pushed_types"] = sorted(
            {",".join(r["cutover"]["pushed_types"]) for r in per_setup["A"] if not r["warmup"]})
    result["checks"]["A"]["status_in_sync"] = status_checks
    result["probe_rtt_at_rest"] = probe_rtt

    env_info = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        **tool_versions,
        "switches": args.switches,
        "warmup": args.warmup,
        "pause_s": args.pause,
        "pause_traffic": not args.idle_pause,
        "poll_interval_s": args.poll_interval,
        "envoy_concurrency": args.concurrency,
        "services": args.services,
        "b_dirs": args.b_dirs,
        "workdir": f"{work} ({fs_type(work)})",
        "logs": "info" if args.quiet_logs else "cutover=debug, envoy rds:debug",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    print_report(env_info, result)
    if args.json:
        args.json.write_text(json.dumps({"environment": env_info, "result": result, "samples": samples},
                                        indent=1) + "\n")
        log(f"summary and samples written to {args.json}")
    failed = sum(result["checks"][n]["timed_out"] for n in ("A", "B"))
    return 1 if failed else 0


def print_report(env: dict, result: dict) -> None:
    p = print
    labels = {"A": "A  cutover: deploy.yaml -> ADS -> Envoy", "B": "B  Envoy: RDS file (path_config_source)"}
    cols = f"{'n':>5}{'median':>9}{'p90':>9}{'p99':>9}{'min':>9}{'max':>9}{'mean':>9}"

    def row(label: str, s: dict | None) -> None:
        if s is None:
            p(f"  {label:<44}{'-':>5}")
            return
        miss = f"   ({s['missing']} without this event)" if s.get("missing") else ""
        p(f"  {label:<44}{s['n']:>5}{s['median']:>9.2f}{s['p90']:>9.2f}{s['p99']:>9.2f}"
          f"{s['min']:>9.2f}{s['max']:>9.2f}{s['mean']:>9.2f}{miss}")

    def ratio(table: dict) -> str:
        a, b = table.get("A"), table.get("B")
        return f"{a['median'] / b['median']:.2f}" if a and b and b["median"] else "-"

    p()
    p(f"Switch latency: {env['switches']} switches per setup, interleaved A,B,A,B (+{env['warmup']} warmup each, "
      f"not counted); {env['pause_s'] * 1000:.0f} ms between switches"
      f"{' with a trickle of requests' if env['pause_traffic'] else ''}")
    p(f"{env['machine']}; Envoy {env['envoy']} (--concurrency {env['envoy_concurrency']}); {env['cutover']}; "
      f"B watched directories: {env['b_dirs']}")
    p(f"work directory on {env['workdir'].rsplit(' ', 1)[-1].strip('()')}; command: {env['command']}")
    p()
    p("  save (rename) -> first response from the new version, ms")
    p(f"  {'':<44}{cols}")
    for n in ("A", "B"):
        row(labels[n], result["latency"][n])
    p(f"  ratio of medians A/B: {ratio(result['latency'])}")
    if result["envoy_applied"]:
        p()
        p("  save (rename) -> Envoy's main thread takes the new routes (Envoy log, rds:debug), ms")
        p(f"  {'':<44}{cols}")
        for n in ("A", "B"):
            row(labels[n], result["envoy_applied"][n])
        p(f"  ratio of medians A/B: {ratio(result['envoy_applied'])}")
    if result["cutover"]:
        p()
        p("  setup A step by step (cutover's log), ms after the save")
        p(f"  {'':<44}{cols}")
        row("cutover: config published (watch+compile)", result["cutover"]["loaded_ms"])
        row("cutover: RDS response handed to gRPC", result["cutover"]["rds_push_ms"])
        row("Envoy: new routes taken (Envoy log)", result["envoy_applied"]["A"])
        row("cutover: Envoy's RDS ACK received", result["cutover"]["rds_ack_ms"])
        row("probe: first response from the new version", result["latency"]["A"])
        p(f"  types pushed per switch: {result['cutover']['pushed_types']}")
    p()
    for n in ("A", "B"):
        c = result["checks"][n]
        warm = ", ".join(f"{x:.2f}" for x in c["warmup_latency_ms"] if x is not None) or "-"
        p(f"  {n}: timed out {c['timed_out']}; error responses: {c['error_responses_during_switches']} during "
          f"switches, {c['pause_error_responses']} of {c['pause_requests']} between them; probe period "
          f"{c['probe_period_ms_mean']:.2f} ms; warmup switches [{warm}] ms")
        p(f"     the rename itself (included above): median {c['rename_ms']['median']:.2f} ms, "
          f"p90 {c['rename_ms']['p90']:.2f} ms, max {c['rename_ms']['max']:.2f} ms")
    for n in ("A", "B"):
        r = result["probe_rtt_at_rest"][n]
        p(f"  {n}: probe round trip at rest (200 requests): median {r['median']:.2f} ms, p90 {r['p90']:.2f} ms, "
          f"max {r['max']:.2f} ms")
    st = result["checks"]["A"]["status_in_sync"]
    p(f"  A: cutover /status showed the Envoy in sync at the new version after {st['in_sync']} switches "
      f"(not within 2 s: {st['not_in_sync']})")
    p()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; all processes stopped")
        sys.exit(130)
