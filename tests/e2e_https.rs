//! End to end at the edge with a real Envoy and curl: an HTTPS listener whose certificates are
//! chosen by SNI and reach Envoy over SDS, in both xDS protocols.
//!
//! Each certificate here is signed by a CA of its own, so that curl, trusting one CA only,
//! succeeds exactly when Envoy presented the certificate that CA signed.

use std::path::Path;
use std::time::Duration;

use cutover::testing::curl::Curl;
use cutover::testing::pki::{Ca, Pair};
use cutover::testing::{
    Cutover, DeploymentFile, Envoy, Upstream, WAIT, envoy_binary, eventually, free_port,
    in_both_xds_modes, serve_live,
};

/// An HTTPS listener with three certificates: one name, a wildcard, and the default.
fn https_file(
    listener: std::net::SocketAddr,
    blue: &Upstream,
    green: &Upstream,
    active: &str,
) -> String {
    format!(
        "\
listeners:
  - name: public
    address: {listener}
    tls:
      certificates:
        - cert: certs/shop.pem
          key: certs/shop-key.pem
          server_names: [shop.example.com]
        - cert: certs/wild.pem
          key: certs/wild-key.pem
          server_names: [\"*.example.com\"]
        - cert: certs/default.pem
          key: certs/default-key.pem
    routes:
      - match: {{ prefix: / }}
        service: checkout
services:
  checkout:
    versions:
      blue:  {{ endpoints: [{blue}] }}
      green: {{ endpoints: [{green}] }}
    active: {active}
",
        blue = blue.addr,
        green = green.addr,
    )
}

/// Writes each certificate with its key and its own CA under `dir/certs`: `<stem>.pem`,
/// `<stem>-key.pem`, `<stem>-ca.pem`.
fn write_certs(dir: &Path) {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    for (stem, names) in [
        ("shop", &["shop.example.com"][..]),
        ("wild", &["*.example.com"][..]),
        ("default", &["127.0.0.1"][..]),
    ] {
        let ca = Ca::new(&format!("{stem} CA"));
        ca.write(&certs, stem, &ca.server(names));
    }
}

fn ca_file(dir: &Path, stem: &str) -> std::path::PathBuf {
    dir.join("certs").join(format!("{stem}-ca.pem"))
}

in_both_xds_modes! {
    async fn https_answers_each_name_with_its_certificate_and_rotates_one_without_a_new_connection(xds: Protocol) {
        let (Some(envoy_bin), Some(curl)) = (envoy_binary(), Curl::find()) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        write_certs(dir.path());
        let blue = Upstream::start("blue-1").await;
        let green = Upstream::start("green-1").await;
        let listener = free_port();
        let port = listener.port();
        let text = https_file(listener, &blue, &green, "blue");
        let (file, cutover, envoy) = serve_live(&envoy_bin, dir.path(), &text, listener, xds).await;
        let (shop_ca, wild_ca, default_ca) =
            (ca_file(dir.path(), "shop"), ca_file(dir.path(), "wild"), ca_file(dir.path(), "default"));

        // Each name gets its certificate: the exact name before the wildcard, the wildcard for
        // another name under it, the default for a client that sends no name.
        let shop = curl.get(&shop_ca, "shop.example.com", port, &[]).await.unwrap();
        assert_eq!((shop.status, shop.body.as_str()), (200, "blue-1"));
        curl.get(&wild_ca, "api.example.com", port, &[]).await.unwrap();
        curl.get(&default_ca, "127.0.0.1", port, &[]).await.unwrap();
        let wrong = curl.get(&wild_ca, "shop.example.com", port, &[]).await;
        assert!(wrong.is_err(), "shop.example.com got the wildcard certificate: {wrong:?}");
        // ALPN offers h2 and http/1.1.
        let h2 = curl.get(&shop_ca, "shop.example.com", port, &["--http2"]).await.unwrap();
        assert_eq!(h2.http_version, "2");
        let h1 = curl.get(&shop_ca, "shop.example.com", port, &["--http1.1"]).await.unwrap();
        assert_eq!(h1.http_version, "1.1");

        // The shop certificate is rotated (a new pair from a new CA) under steady load on one
        // connection of each HTTP version: every request succeeds on the connection it started
        // on, Envoy's listener is not modified (SDS updates the certificate in place), and new
        // handshakes present the new certificate.
        let modified = envoy.stat("listener_manager.listener_modified").await;
        let h1_load = curl.steady(&shop_ca, "shop.example.com", port, 60, 20, &["--http1.1"]);
        let h2_load = curl.steady(&shop_ca, "shop.example.com", port, 60, 20, &["--http2"]);
        tokio::time::sleep(Duration::from_millis(800)).await;
        let rotated = Ca::new("shop CA, rotated");
        let pair: Pair = rotated.server(&["shop.example.com"]);
        std::fs::write(dir.path().join("certs/shop-ca.pem"), &rotated.pem).unwrap();
        pair.write(&dir.path().join("certs/shop.pem"), &dir.path().join("certs/shop-key.pem"));
        eventually(WAIT, "new handshakes to present the rotated certificate", async || {
            curl.get(&shop_ca, "shop.example.com", port, &[]).await.is_ok()
        })
        .await;
        for (name, load) in [("HTTP/1.1", h1_load), ("HTTP/2", h2_load)] {
            let replies = load.await.unwrap().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(replies.len(), 60, "{name}: {replies:?}");
            assert!(replies.iter().all(|&(status, _)| status == 200), "{name}: {replies:?}");
            let connects: u32 = replies.iter().map(|&(_, c)| c).sum();
            assert_eq!(connects, 1, "{name}: a new connection was needed: {replies:?}");
        }
        assert_eq!(envoy.stat("listener_manager.listener_modified").await, modified);
        cutover.wait_in_sync("edge-1").await;

        // A switch on the HTTPS listener goes through as on a plain one.
        file.write_renamed(&https_file(listener, &blue, &green, "green"));
        eventually(WAIT, "the switch to green over HTTPS", async || {
            curl.get(&shop_ca, "shop.example.com", port, &[])
                .await
                .is_ok_and(|r| r.body == "green-1")
        })
        .await;
    }
}

/// Two hosts on an HTTPS listener (no default: other hosts get 404), and a plain listener that
/// redirects to it.
fn hosts_file(
    https: std::net::SocketAddr,
    plain: std::net::SocketAddr,
    shop: (&Upstream, &Upstream),
    api: &Upstream,
    active: &str,
) -> String {
    format!(
        "\
listeners:
  - name: public
    address: {https}
    tls:
      certificates:
        - cert: certs/wild.pem
          key: certs/wild-key.pem
    hosts:
      - names: [shop.example.com]
        routes:
          - match: {{ prefix: / }}
            service: shop
      - names: [\"*.example.com\"]
        routes:
          - match: {{ prefix: / }}
            service: api
  - name: plain
    address: {plain}
    redirect: https
services:
  shop:
    versions:
      blue:  {{ endpoints: [{blue}] }}
      green: {{ endpoints: [{green}] }}
    active: {active}
  api:
    versions:
      v1: {{ endpoints: [{api}] }}
    active: v1
",
        blue = shop.0.addr,
        green = shop.1.addr,
        api = api.addr,
    )
}

in_both_xds_modes! {
    async fn hosts_route_by_name_unknown_hosts_get_404_plain_http_redirects_and_a_switch_fails_nothing(xds: Protocol) {
        let (Some(envoy_bin), Some(curl)) = (envoy_binary(), Curl::find()) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        write_certs(dir.path());
        let blue = Upstream::start("shop-blue").await;
        let green = Upstream::start("shop-green").await;
        let api = Upstream::start("api-1").await;
        let (https, plain) = (free_port(), free_port());
        let text = hosts_file(https, plain, (&blue, &green), &api, "blue");
        let (file, _cutover, envoy) = serve_live(&envoy_bin, dir.path(), &text, plain, xds).await;
        let ca = ca_file(dir.path(), "wild");
        let port = https.port();

        let shop = curl.get(&ca, "shop.example.com", port, &[]).await.unwrap();
        assert_eq!((shop.status, shop.body.as_str()), (200, "shop-blue"));
        let other = curl.get(&ca, "docs.example.com", port, &[]).await.unwrap();
        assert_eq!((other.status, other.body.as_str()), (200, "api-1"));
        // A name no host lists: Envoy's 404, from no upstream.
        let unknown = curl
            .get(&ca, "docs.example.com", port, &["--header", "Host: elsewhere.test"])
            .await
            .unwrap();
        assert_eq!(unknown.status, 404, "{unknown:?}");
        // Plain HTTP: a 301 to the same host and path over HTTPS.
        let redirect = envoy
            .send("/cart?item=7", &[("host", "shop.example.com")])
            .await
            .unwrap();
        assert_eq!(redirect.status, 301, "{redirect:?}");
        assert_eq!(
            redirect.headers.get("location").and_then(|v| v.to_str().ok()),
            Some("https://shop.example.com/cart?item=7")
        );

        // A blue-green switch of the HTTPS host under load: nothing fails, api is untouched.
        let load = curl.steady(&ca, "shop.example.com", port, 60, 20, &[]);
        tokio::time::sleep(Duration::from_millis(800)).await;
        file.write_renamed(&hosts_file(https, plain, (&blue, &green), &api, "green"));
        eventually(WAIT, "shop.example.com to answer from green", async || {
            curl.get(&ca, "shop.example.com", port, &[])
                .await
                .is_ok_and(|r| r.body == "shop-green")
        })
        .await;
        let replies = load.await.unwrap().unwrap();
        assert_eq!(replies.len(), 60);
        assert!(replies.iter().all(|&(status, _)| status == 200), "{replies:?}");
        let other = curl.get(&ca, "docs.example.com", port, &[]).await.unwrap();
        assert_eq!(other.body, "api-1");
    }
}

fn upstream_tls_file(
    listener: std::net::SocketAddr,
    blue: &Upstream,
    green: &Upstream,
    active: &str,
    sni: &str,
) -> String {
    format!(
        "\
listeners:
  - name: public
    address: {listener}
    routes:
      - match: {{ prefix: / }}
        service: checkout
services:
  checkout:
    tls: {{ sni: {sni}, ca: certs/upstream-ca.pem }}
    versions:
      blue:  {{ endpoints: [{blue}] }}
      green: {{ endpoints: [{green}] }}
    active: {active}
",
        blue = blue.addr,
        green = green.addr,
    )
}

in_both_xds_modes! {
    async fn tls_to_upstreams_is_verified_and_a_switch_under_load_fails_nothing(xds: Protocol) {
        let Some(envoy_bin) = envoy_binary() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("certs")).unwrap();
        let ca = Ca::new("upstream CA");
        let pair = ca.server(&["shop.internal"]);
        ca.write(&dir.path().join("certs"), "upstream", &pair);
        let blue = Upstream::start_tls("blue-tls", &pair.cert, &pair.key).await;
        let green = Upstream::start_tls("green-tls", &pair.cert, &pair.key).await;
        let listener = free_port();
        let file = DeploymentFile::new(dir.path().join("deploy.yaml"));
        file.write_renamed(&upstream_tls_file(listener, &blue, &green, "blue", "shop.internal"));
        let cutover = Cutover::start(dir.path(), &file.path).await;
        let envoy = Envoy::start_with(
            &envoy_bin,
            dir.path(),
            "edge-1",
            cutover.ads,
            listener,
            xds.bootstrap_args(),
        )
        .await;
        assert_eq!(envoy.get("/").await.unwrap(), "blue-tls");

        let load = cutover::testing::load::Load::start(listener);
        tokio::time::sleep(Duration::from_millis(300)).await;
        file.write_renamed(&upstream_tls_file(listener, &blue, &green, "green", "shop.internal"));
        eventually(WAIT, "the switch to green over TLS", async || {
            envoy.get("/").await.is_ok_and(|b| b == "green-tls")
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let outcome = load.stop().await;
        outcome.assert_no_failures("a blue-green switch of a TLS upstream");
        assert!(outcome.by_body.contains_key("blue-tls") && outcome.by_body.contains_key("green-tls"));

        // The endpoints' certificate is checked against the name: a name it lacks fails.
        file.write_renamed(&upstream_tls_file(listener, &blue, &green, "green", "other.internal"));
        eventually(WAIT, "a certificate without the name to be refused", async || {
            envoy.get("/").await.is_err()
        })
        .await;
    }
}
