//! Whole end-to-end scenarios: upstreams, a deployment file, cutover serving it and one Envoy
//! taking its config from cutover, all up before the test starts and torn down on drop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use super::{
    Cutover, DeploymentFile, Envoy, Protocol, Upstream, WAIT, free_port, version_of, wait_for,
};

// ---------------------------------------------------------------------------------------------
// The whole scenario

/// Node id of the Envoy a [`Stack`] starts.
pub const NODE: &str = "edge-1";

/// Upstreams `blue-1`, `blue-2` and `green-1`, a [`checkout_deployment`] of them, cutover serving
/// it and one Envoy (node [`NODE`]) taking its config from cutover.
pub struct Stack {
    pub blue: Vec<Upstream>,
    pub green: Vec<Upstream>,
    /// Where Envoy's `public` listener is.
    pub listener: SocketAddr,
    pub file: DeploymentFile,
    pub envoy: Envoy,
    pub cutover: Cutover,
    // Last: removed after the processes that use it are gone.
    pub dir: tempfile::TempDir,
}

impl Stack {
    /// Everything up and serving, `active` getting the traffic.
    pub async fn start(envoy_bin: &Path, active: &str) -> Stack {
        Stack::start_in(envoy_bin, active, Protocol::Sotw).await
    }

    /// [`Stack::start`] with Envoy speaking `xds` to cutover.
    pub async fn start_in(envoy_bin: &Path, active: &str, xds: Protocol) -> Stack {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let blue = vec![
            Upstream::start("blue-1").await,
            Upstream::start("blue-2").await,
        ];
        let green = vec![Upstream::start("green-1").await];
        let listener = free_port();
        let text = checkout_deployment(listener, &addrs(&blue), &addrs(&green), active);
        let (file, cutover, envoy) =
            serve_envoy(envoy_bin, dir.path(), &text, &[], listener, xds).await;
        Stack {
            blue,
            green,
            listener,
            file,
            envoy,
            cutover,
            dir,
        }
    }

    /// The deployment file for this stack with `active` getting the traffic.
    pub fn deployment(&self, active: &str) -> String {
        checkout_deployment(
            self.listener,
            &addrs(&self.blue),
            &addrs(&self.green),
            active,
        )
    }

    /// Waits until a request through Envoy is answered by `version`.
    pub async fn wait_for_traffic_on(&self, version: &str) {
        wait_for(
            WAIT,
            &format!("a request through Envoy to reach {version}"),
            async || {
                let body = self.envoy.get("/").await?;
                if version_of(&body) == version {
                    Ok(())
                } else {
                    Err(format!("answered by {body}"))
                }
            },
        )
        .await;
    }
}

/// `text` saved as `deploy.yaml` in `dir`, cutover serving it (with `cutover_args`) and an Envoy
/// (node [`NODE`]) speaking `xds` to it, up and answering on `listener`.
async fn serve_envoy(
    envoy_bin: &Path,
    dir: &Path,
    text: &str,
    cutover_args: &[&str],
    listener: SocketAddr,
    xds: Protocol,
) -> (DeploymentFile, Cutover, Envoy) {
    let served = serve_live_with(envoy_bin, dir, text, cutover_args, listener, xds).await;
    served.2.wait_answering().await;
    served
}

/// [`serve_envoy`] for a listener a plain GET cannot probe (HTTPS, gRPC, WebSocket, a
/// redirect): Envoy LIVE and in sync with cutover, no request sent.
pub async fn serve_live(
    envoy_bin: &Path,
    dir: &Path,
    text: &str,
    listener: SocketAddr,
    xds: Protocol,
) -> (DeploymentFile, Cutover, Envoy) {
    serve_live_with(envoy_bin, dir, text, &[], listener, xds).await
}

async fn serve_live_with(
    envoy_bin: &Path,
    dir: &Path,
    text: &str,
    cutover_args: &[&str],
    listener: SocketAddr,
    xds: Protocol,
) -> (DeploymentFile, Cutover, Envoy) {
    let (file, cutover) = serve_file(dir, text, cutover_args).await;
    let envoy = Envoy::start_live(
        envoy_bin,
        dir,
        NODE,
        cutover.ads,
        listener,
        xds.bootstrap_args(),
    )
    .await;
    cutover.wait_in_sync(NODE).await;
    (file, cutover, envoy)
}

/// `text` saved as `deploy.yaml` in `dir`, and cutover serving it.
async fn serve_file(dir: &Path, text: &str, cutover_args: &[&str]) -> (DeploymentFile, Cutover) {
    let file = DeploymentFile::new(dir.join("deploy.yaml"));
    file.write_renamed(text);
    let cutover = Cutover::start_with_args(dir, &file.path, cutover_args).await;
    (file, cutover)
}

fn addrs(upstreams: &[Upstream]) -> Vec<SocketAddr> {
    upstreams.iter().map(|u| u.addr).collect()
}

/// Upstreams with names chosen by the test, a deployment file made from a template that refers
/// to them, cutover serving it and one Envoy (node [`NODE`]) taking its config from cutover.
///
/// In a template, `${listener}` stands for the address of Envoy's listener and `${NAME}` for the
/// address of upstream `NAME`; the listener must answer 200 on `/` once everything is up.
pub struct Scenario {
    /// In the order the test named them.
    pub upstreams: Vec<Upstream>,
    /// Where Envoy's listener is.
    pub listener: SocketAddr,
    pub file: DeploymentFile,
    pub envoy: Envoy,
    pub cutover: Cutover,
    // Last: removed after the processes that use it are gone.
    pub dir: tempfile::TempDir,
}

impl Scenario {
    /// Starts upstreams named `upstreams`, then cutover on `template`, then Envoy.
    pub async fn start(envoy_bin: &Path, upstreams: &[&str], template: &str) -> Scenario {
        Scenario::start_with_args(envoy_bin, upstreams, template, &[]).await
    }

    /// [`Scenario::start`] with extra arguments for `cutover serve`.
    pub async fn start_with_args(
        envoy_bin: &Path,
        upstreams: &[&str],
        template: &str,
        cutover_args: &[&str],
    ) -> Scenario {
        Scenario::start_in(envoy_bin, upstreams, template, cutover_args, Protocol::Sotw).await
    }

    /// [`Scenario::start_with_args`] with Envoy speaking `xds` to cutover.
    pub async fn start_in(
        envoy_bin: &Path,
        upstreams: &[&str],
        template: &str,
        cutover_args: &[&str],
        xds: Protocol,
    ) -> Scenario {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut started = Vec::with_capacity(upstreams.len());
        for name in upstreams {
            assert!(
                !started.iter().any(|u: &Upstream| u.name == *name),
                "upstream {name} named twice"
            );
            started.push(Upstream::start(name).await);
        }
        let listener = free_port();
        let text = render_template(template, listener, &started);
        let (file, cutover, envoy) =
            serve_envoy(envoy_bin, dir.path(), &text, cutover_args, listener, xds).await;
        cutover.wait_in_sync(NODE).await;
        Scenario {
            upstreams: started,
            listener,
            file,
            envoy,
            cutover,
            dir,
        }
    }

    /// `template` with the placeholders replaced by this scenario's addresses.
    pub fn render(&self, template: &str) -> String {
        render_template(template, self.listener, &self.upstreams)
    }

    /// Saves `template` as the deployment file (an editor's rename) without waiting.
    pub fn write(&self, template: &str) {
        self.file.write_renamed(&self.render(template));
    }

    /// Saves `template` as the deployment file and waits until Envoy has ACKed all of it. The
    /// rendered file must differ from the current one.
    ///
    /// An ACK means Envoy's main thread took the config; a change of endpoint health only
    /// (draining) may still be held back for up to 1 s after an earlier one (Envoy's
    /// `update_merge_window`) before the load balancer sees it.
    pub async fn apply(&self, template: &str) {
        let previous = self.cutover.last_reload().await;
        self.write(template);
        self.cutover.wait_applied(NODE, &previous).await;
    }

    /// The upstream called `name`.
    pub fn upstream(&self, name: &str) -> &Upstream {
        self.upstreams
            .iter()
            .find(|u| u.name == name)
            .unwrap_or_else(|| panic!("no upstream {name}"))
    }

    /// Requests (health checks not included) each upstream has received so far, by name.
    pub fn hits(&self) -> BTreeMap<String, usize> {
        self.upstreams
            .iter()
            .map(|u| (u.name.clone(), u.hits()))
            .collect()
    }

    /// Requests each upstream received since `before` (a [`Scenario::hits`]), zeros included.
    pub fn hits_since(&self, before: &BTreeMap<String, usize>) -> BTreeMap<String, usize> {
        self.upstreams
            .iter()
            .map(|u| {
                (
                    u.name.clone(),
                    u.hits() - before.get(&u.name).copied().unwrap_or(0),
                )
            })
            .collect()
    }
}

/// See [`Scenario`]. Panics on a placeholder that names no upstream.
fn render_template(template: &str, listener: SocketAddr, upstreams: &[Upstream]) -> String {
    let mut text = template.replace("${listener}", &listener.to_string());
    for u in upstreams {
        text = text.replace(&format!("${{{}}}", u.name), &u.addr.to_string());
    }
    if let Some(at) = text.find("${") {
        let rest: String = text[at..].chars().take(40).collect();
        panic!("unknown placeholder in the deployment template at {rest:?}");
    }
    text
}

/// One listener `public` on `listener` routing everything to service `checkout`, whose versions
/// `blue` and `green` have the given endpoints (addresses, or names Envoy resolves); `active`
/// gets the traffic.
pub fn checkout_deployment(
    listener: SocketAddr,
    blue: &[impl std::fmt::Display],
    green: &[impl std::fmt::Display],
    active: &str,
) -> String {
    fn list(endpoints: &[impl std::fmt::Display]) -> String {
        endpoints
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
    format!(
        "\
# Written by the end-to-end tests.
listeners:
  - name: public
    address: {listener}
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
        blue = list(blue),
        green = list(green),
    )
}
