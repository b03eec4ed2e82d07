//! End to end with a real Envoy: what a route does besides naming a service, in both xDS
//! protocols: a page Envoy answers itself (maintenance), a path prefix and host rewrite, and
//! headers added to and removed from requests and responses.

use cutover::testing::{
    Cutover, DeploymentFile, Envoy, Upstream, envoy_binary, free_port, in_both_xds_modes,
};

in_both_xds_modes! {
    async fn a_maintenance_page_a_rewrite_and_header_edits_reach_the_client_and_the_upstream(xds: Protocol) {
        let Some(envoy_bin) = envoy_binary() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let blue = Upstream::start("blue-1").await;
        let listener = free_port();
        let file = DeploymentFile::new(dir.path().join("deploy.yaml"));
        file.write_renamed(&format!(
            "\
listeners:
  - name: public
    address: {listener}
    routes:
      - match: {{ prefix: /maintenance }}
        respond: {{ status: 503, body: \"Back at 10:00, 100% sure\" }}
        response_headers: {{ add: {{ retry-after: \"600\" }} }}
      - match: {{ prefix: /api/ }}
        service: checkout
        rewrite: {{ prefix: /, host: backend.internal }}
        request_headers: {{ add: {{ x-edge: \"50%\" }}, remove: [x-secret] }}
        response_headers: {{ add: {{ x-served-by: cutover }}, remove: [x-envoy-upstream-service-time] }}
      - match: {{ prefix: / }}
        service: checkout
services:
  checkout:
    versions:
      blue: {{ endpoints: [{blue}] }}
    active: blue
",
            blue = blue.addr
        ));
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

        // Envoy answers itself; the upstream sees nothing of it.
        let hits = blue.hits();
        let page = envoy.send("/maintenance/index.html", &[]).await.unwrap();
        assert_eq!((page.status, page.body.as_str()), (503, "Back at 10:00, 100% sure"));
        assert_eq!(page.header_values("retry-after"), ["600"]);
        assert_eq!(blue.hits(), hits);

        let api = envoy
            .send("/api/items?n=1", &[("x-secret", "s3"), ("x-keep", "k")])
            .await
            .unwrap();
        assert_eq!((api.status, api.body.as_str()), (200, "blue-1"));
        assert_eq!(api.header_values("x-served-by"), ["cutover"]);
        assert!(api.header_values("x-envoy-upstream-service-time").is_empty());
        let seen = blue.headers().pop().expect("the upstream got the request");
        let header = |name: &str| seen.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        // The `%` is the file's text, not an Envoy command.
        assert_eq!(header("x-edge").as_deref(), Some("50%"));
        assert_eq!(header("x-secret"), None);
        assert_eq!(header("x-keep").as_deref(), Some("k"));
        assert_eq!(header("host").as_deref(), Some("backend.internal"));
        // Envoy says what the path was before the rewrite.
        assert_eq!(header("x-envoy-original-path").as_deref(), Some("/api/items?n=1"));

        // Other routes are untouched.
        let plain = envoy.send("/other", &[("x-secret", "s3")]).await.unwrap();
        assert!(plain.header_values("x-served-by").is_empty());
        let seen = blue.headers().pop().unwrap();
        assert_eq!(seen.get("x-secret").and_then(|v| v.to_str().ok()), Some("s3"));
    }
}
