//! End to end with a real Envoy, real WebSocket servers and a real WebSocket client (Python's
//! `websockets`): a `websocket: true` service switched blue → green and its old colour drained
//! while a WebSocket stays open. The open one keeps talking to the version it opened on; new
//! ones reach the new version. In both xDS protocols.

use cutover::testing::websocket::{WsClient, WsParts, WsUpstreams};
use cutover::testing::{WAIT, envoy_binary, eventually, free_port, in_both_xds_modes, serve_live};

fn ws_file(
    listener: std::net::SocketAddr,
    upstreams: &WsUpstreams,
    active: &str,
    blue_drains: bool,
) -> String {
    format!(
        "\
listeners:
  - name: public
    address: {listener}
    routes:
      - match: {{ prefix: / }}
        service: chat
services:
  chat:
    websocket: true
    versions:
      blue:  {{ endpoints: [{{ address: {blue}, drain: {blue_drains} }}] }}
      green: {{ endpoints: [{green}] }}
    active: {active}
",
        blue = upstreams.addr("blue"),
        green = upstreams.addr("green"),
    )
}

in_both_xds_modes! {
    async fn an_open_websocket_stays_on_its_version_across_a_switch_and_a_drain(xds: Protocol) {
        let (Some(envoy_bin), Some(parts)) = (envoy_binary(), WsParts::find()) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let upstreams = WsUpstreams::start(&parts, &["blue", "green"]).await;
        let listener = free_port();
        let text = ws_file(listener, &upstreams, "blue", false);
        // The Envoy is killed when dropped: kept until the end.
        let (file, cutover, _envoy) =
            serve_live(&envoy_bin, dir.path(), &text, listener, xds).await;
        let mut client = WsClient::start(&parts, listener);
        client.open("long").await.unwrap();
        assert_eq!(client.send("long", "hello").await.unwrap(), "blue:hello");

        // The switch: new WebSockets reach green; the open one stays on blue.
        file.write_renamed(&ws_file(listener, &upstreams, "green", false));
        eventually(WAIT, "new WebSockets to reach green", async || {
            client.once("new").await.is_ok_and(|r| r == "green:new")
        })
        .await;
        assert_eq!(client.send("long", "still").await.unwrap(), "blue:still");

        // Blue's endpoint drains: no new requests, but the open WebSocket goes on.
        file.write_renamed(&ws_file(listener, &upstreams, "green", true));
        cutover.wait_in_sync("edge-1").await;
        for i in 0..5 {
            assert_eq!(client.send("long", &format!("m{i}")).await.unwrap(), format!("blue:m{i}"));
            assert_eq!(client.once("n").await.unwrap(), "green:n");
        }

        // Without `websocket: true`, Envoy refuses the upgrade: the switch to it is real.
        let refused = ws_file(listener, &upstreams, "green", true).replace("    websocket: true\n", "");
        file.write_renamed(&refused);
        eventually(WAIT, "the upgrade to be refused", async || client.once("x").await.is_err()).await;
    }
}
