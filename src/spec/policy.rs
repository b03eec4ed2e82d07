//! Validation of a service's traffic policy: load balancing, outlier detection, active health
//! checks, timeouts, retries and the panic threshold, with the defaults the README documents.

use std::time::Duration;

use serde_saphyr::Spanned;

use super::raw::{
    RawHashOn, RawHealthCheck, RawLoadBalancing, RawOutlierDetection, RawProtocol, RawRetries,
    RawService,
};
use super::validate::Validator;
use super::{
    FailurePercentage, HashOn, HealthCheck, LoadBalancing, OutlierDetection, Percent, Policy,
    Protocol, Retries, SuccessRate, UpstreamTls,
};

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Retry only where the upstream cannot have seen the request, so any method is safe to retry.
pub const DEFAULT_RETRY_ON: [&str; 3] =
    ["connect-failure", "refused-stream", "reset-before-request"];
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;

/// Envoy's `retry_on` conditions for HTTP and gRPC.
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

impl Validator {
    pub(super) fn policy(&mut self, service: &str, raw: &RawService) -> Option<Policy> {
        let mut ok = true;
        let load_balancing = match raw.load_balancing.as_ref().map(|l| &l.value) {
            None | Some(RawLoadBalancing::RoundRobin) => LoadBalancing::RoundRobin,
            Some(RawLoadBalancing::LeastRequest) => LoadBalancing::LeastRequest,
            Some(RawLoadBalancing::Random) => LoadBalancing::Random,
            Some(RawLoadBalancing::RingHash(h)) => LoadBalancing::RingHash(hash_on(h)),
            Some(RawLoadBalancing::Maglev(h)) => LoadBalancing::Maglev(hash_on(h)),
        };
        let outlier_detection = match &raw.outlier_detection {
            Some(o) if o.value.enabled == Some(false) => None,
            o => Some(self.outlier_detection(o.as_ref().map(|o| &o.value), &mut ok)?),
        };
        let health_check = match &raw.health_check {
            None => None,
            Some(h) => Some(self.health_check(service, h, &mut ok)?),
        };

        let slow_start = match &raw.slow_start {
            Some(d) => Some(self.duration(d, "slow_start")?),
            None => None,
        };
        if slow_start.is_some()
            && !matches!(
                load_balancing,
                LoadBalancing::RoundRobin | LoadBalancing::LeastRequest
            )
            && let Some(s) = &raw.slow_start
        {
            self.at(
                &s.referenced,
                "`slow_start` works with `round_robin` and `least_request` load balancing only",
            );
            ok = false;
        }
        let timeout = match &raw.timeout {
            Some(d) => Some(self.duration(d, "timeout")?),
            None => None,
        };
        let connect_timeout = self.duration_or(
            raw.connect_timeout.as_ref(),
            "connect_timeout",
            DEFAULT_CONNECT_TIMEOUT,
        )?;
        let retries = match &raw.retries {
            None => Retries {
                attempts: DEFAULT_RETRY_ATTEMPTS,
                on: DEFAULT_RETRY_ON.iter().map(|s| (*s).to_owned()).collect(),
                per_try_timeout: None,
            },
            Some(r) => self.retries(&r.value, &mut ok)?,
        };
        let panic_threshold = self.percent_or(
            raw.panic_threshold.as_ref(),
            "panic_threshold",
            Percent::from_ppm(0),
        )?;

        let (protocol, websocket, tls) = self.upstream(raw, health_check.as_ref(), &mut ok);
        ok.then_some(Policy {
            protocol,
            websocket,
            tls,
            load_balancing,
            outlier_detection,
            health_check,
            slow_start,
            timeout,
            connect_timeout,
            retries,
            panic_threshold,
        })
    }

    /// How Envoy speaks to the endpoints: protocol, WebSocket upgrades, TLS; and whether the
    /// health check fits the protocol.
    fn upstream(
        &mut self,
        raw: &RawService,
        health_check: Option<&HealthCheck>,
        ok: &mut bool,
    ) -> (Protocol, bool, Option<UpstreamTls>) {
        let protocol = match raw.protocol.as_ref().map(|p| p.value) {
            None | Some(RawProtocol::Http1) => Protocol::Http1,
            Some(RawProtocol::Http2) => Protocol::Http2,
            Some(RawProtocol::Grpc) => Protocol::Grpc,
        };
        if let Some(h) = health_check
            && h.grpc
            && protocol != Protocol::Grpc
            && let Some(raw_check) = &raw.health_check
        {
            self.at(
                &raw_check.referenced,
                "`grpc: true` checks a gRPC service: give the service `protocol: grpc`, or check \
                 it with an HTTP `path`",
            );
            *ok = false;
        }
        let websocket = raw.websocket.as_ref().is_some_and(|w| w.value);
        if websocket
            && protocol != Protocol::Http1
            && let Some(w) = &raw.websocket
        {
            self.at(
                &w.referenced,
                "`websocket: true` is for `protocol: http1` services (the WebSocket upgrade is \
                 an HTTP/1.1 request); remove `websocket` or the `protocol`",
            );
            *ok = false;
        }
        let tls = raw.tls.as_ref().map(|t| {
            let sni = t.value.sni.as_ref().and_then(|s| self.server_name(s));
            let ca = t.value.ca.as_ref().and_then(|ca| self.file_ref(ca, "ca"));
            if t.value.sni.is_some() != sni.is_some() || t.value.ca.is_some() != ca.is_some() {
                *ok = false;
            }
            UpstreamTls { sni, ca }
        });
        (protocol, websocket, tls)
    }

    /// Outlier detection with its defaults (`o` is `None` when the file says nothing: it is on
    /// by default). `None` when a problem leaves nothing to build; other problems are reported
    /// and clear `ok`.
    fn outlier_detection(
        &mut self,
        o: Option<&RawOutlierDetection>,
        ok: &mut bool,
    ) -> Option<OutlierDetection> {
        let interval = self.duration_or(
            o.and_then(|o| o.interval.as_ref()),
            "outlier_detection.interval",
            Duration::from_secs(10),
        );
        let base_ejection_time = self.duration_or(
            o.and_then(|o| o.base_ejection_time.as_ref()),
            "outlier_detection.base_ejection_time",
            Duration::from_secs(30),
        );
        let max_ejection_percent = match o.and_then(|o| o.max_ejection_percent.as_ref()) {
            Some(p) if p.value > 100 => {
                self.at(
                    &p.referenced,
                    "`max_ejection_percent` is a percentage from 0 to 100",
                );
                *ok = false;
                0
            }
            Some(p) => p.value,
            None => 50,
        };
        let success_rate = o
            .and_then(|o| o.success_rate.as_ref())
            .map(|s| SuccessRate {
                minimum_hosts: s.value.minimum_hosts.unwrap_or(5),
                request_volume: s.value.request_volume.unwrap_or(100),
                stdev_factor_milli: match &s.value.stdev_factor {
                    None => 1900,
                    Some(f) => match f.value.0.parse::<f64>() {
                        // Below 100,000 once in range, so it fits.
                        #[allow(
                            clippy::cast_possible_truncation,
                            clippy::cast_sign_loss,
                            reason = "0 < v < 100, so v * 1000 fits a u32"
                        )]
                        Ok(v) if v > 0.0 && v < 100.0 => (v * 1000.0).round() as u32,
                        _ => {
                            self.at(&f.referenced, "`stdev_factor` is a number such as 1.9");
                            *ok = false;
                            0
                        }
                    },
                },
            });
        let failure_percentage =
            o.and_then(|o| o.failure_percentage.as_ref())
                .map(|f| FailurePercentage {
                    threshold: match &f.value.threshold {
                        Some(t) if t.value > 100 => {
                            self.at(&t.referenced, "`threshold` is a percentage from 0 to 100");
                            *ok = false;
                            0
                        }
                        Some(t) => t.value,
                        None => 85,
                    },
                    minimum_hosts: f.value.minimum_hosts.unwrap_or(5),
                    request_volume: f.value.request_volume.unwrap_or(50),
                });
        Some(OutlierDetection {
            consecutive_5xx: o
                .and_then(|o| o.consecutive_5xx.as_ref())
                .map_or(5, |v| v.value),
            consecutive_gateway_errors: o
                .and_then(|o| o.consecutive_gateway_errors.as_ref())
                .map(|v| v.value),
            interval: interval?,
            base_ejection_time: base_ejection_time?,
            max_ejection_percent,
            success_rate,
            failure_percentage,
        })
    }

    /// An active health check with its defaults; `None` when a problem leaves nothing to build.
    fn health_check(
        &mut self,
        service: &str,
        h: &Spanned<RawHealthCheck>,
        ok: &mut bool,
    ) -> Option<HealthCheck> {
        let v = &h.value;
        let grpc = v.grpc.as_ref().is_some_and(|g| g.value);
        if grpc && (v.path.is_some() || v.tcp == Some(true)) {
            self.at(
                &h.referenced,
                "a health check is one of HTTP (`path`), `tcp: true` or `grpc: true`",
            );
            *ok = false;
        }
        let path = match (&v.path, v.tcp) {
            (None, None | Some(false)) if grpc => None,
            (Some(p), None | Some(false)) => {
                if !p.value.starts_with('/') {
                    self.at(
                        &p.referenced,
                        format!(
                            "`health_check.path` must start with '/', got \"{}\"",
                            p.value
                        ),
                    );
                    *ok = false;
                }
                Some(p.value.clone())
            }
            (None, Some(true)) => None,
            (Some(_), Some(true)) => {
                self.at(
                    &h.referenced,
                    "a health check is either HTTP (`path`) or `tcp: true`, not both",
                );
                *ok = false;
                None
            }
            (None, _) => {
                let msg = format!(
                    "the health check of service \"{service}\" needs an HTTP `path` (e.g. /health), `tcp: true` or (gRPC) `grpc: true`"
                );
                self.at(&h.referenced, msg);
                *ok = false;
                None
            }
        };
        let threshold =
            |this: &mut Validator, t: &Option<Spanned<u32>>, default: u32, key: &str| match t {
                Some(t) if t.value == 0 => {
                    this.at(
                        &t.referenced,
                        format!("`health_check.{key}` must be at least 1"),
                    );
                    None
                }
                Some(t) => Some(t.value),
                None => Some(default),
            };
        let unhealthy = threshold(self, &v.unhealthy_threshold, 3, "unhealthy_threshold");
        let healthy = threshold(self, &v.healthy_threshold, 2, "healthy_threshold");
        let interval = self.duration_or(
            v.interval.as_ref(),
            "health_check.interval",
            Duration::from_secs(5),
        );
        let timeout = self.duration_or(
            v.timeout.as_ref(),
            "health_check.timeout",
            Duration::from_secs(2),
        );
        Some(HealthCheck {
            path,
            grpc,
            interval: interval?,
            timeout: timeout?,
            unhealthy_threshold: unhealthy?,
            healthy_threshold: healthy?,
            wait_for_first_check: v.wait_for_first_check.unwrap_or(true),
        })
    }

    /// The retry policy the file gives; `None` when a problem leaves nothing to build.
    fn retries(&mut self, r: &RawRetries, ok: &mut bool) -> Option<Retries> {
        let mut on = Vec::new();
        for cond in r.on.iter().flatten() {
            if RETRY_ON.contains(&cond.value.as_str()) {
                on.push(cond.value.clone());
            } else {
                let mut msg = format!("unknown retry condition \"{}\"", cond.value);
                if let Some(best) = super::validate::closest(&cond.value, RETRY_ON.iter().copied())
                {
                    msg.push_str(&format!(" (did you mean \"{best}\"?)"));
                }
                msg.push_str(&format!(
                    "; Envoy's conditions are: {}",
                    RETRY_ON.join(", ")
                ));
                self.at(&cond.referenced, msg);
                *ok = false;
            }
        }
        if r.on.is_none() {
            on = DEFAULT_RETRY_ON.iter().map(|s| (*s).to_owned()).collect();
        }
        Some(Retries {
            attempts: r
                .attempts
                .as_ref()
                .map_or(DEFAULT_RETRY_ATTEMPTS, |a| a.value),
            on,
            per_try_timeout: match &r.per_try_timeout {
                Some(d) => Some(self.duration(d, "retries.per_try_timeout")?),
                None => None,
            },
        })
    }
}

fn hash_on(raw: &RawHashOn) -> HashOn {
    match raw {
        RawHashOn::Header(h) => HashOn::Header(h.to_ascii_lowercase()),
        RawHashOn::Cookie(c) => HashOn::Cookie(c.clone()),
        RawHashOn::SourceIp => HashOn::SourceIp,
    }
}

#[cfg(test)]
mod upstream_tests {
    use crate::spec::tests::problems;
    use crate::spec::{Protocol, parse};

    fn file(service: &str) -> String {
        format!(
            "listeners:
  - name: public
    address: 127.0.0.1:10000
    routes:
      - match: {{ prefix: / }}
        service: api
services:
  api:
{service}    versions:
      v1: {{ endpoints: [127.0.0.1:8081] }}
    active: v1
"
        )
    }

    #[test]
    fn protocol_websocket_tls_and_a_grpc_health_check_parse() {
        let spec = parse(
            "deploy.yaml",
            &file(
                "    protocol: grpc
    health_check: { grpc: true }
    tls: { sni: API.internal, ca: certs/ca.pem }
",
            ),
        )
        .unwrap();
        let policy = &spec.services["api"].policy;
        assert_eq!(policy.protocol, Protocol::Grpc);
        assert!(policy.health_check.as_ref().unwrap().grpc);
        let tls = policy.tls.as_ref().unwrap();
        assert_eq!(tls.sni.as_deref(), Some("api.internal"));
        assert_eq!(tls.ca.as_ref().unwrap().path, "certs/ca.pem");
        assert_eq!(
            crate::spec::pem_paths(&spec)
                .into_iter()
                .collect::<Vec<_>>(),
            ["certs/ca.pem"]
        );
        let plain = parse("deploy.yaml", &file("    websocket: true\n")).unwrap();
        assert!(plain.services["api"].policy.websocket);
        assert_eq!(plain.services["api"].policy.protocol, Protocol::Http1);
    }

    #[test]
    fn mismatched_upstream_keys_are_reported_where_they_are() {
        assert_eq!(
            problems(&file(
                "    protocol: http2
    websocket: true
    health_check: { grpc: true }
    tls: { ca: \"\" }
"
            )),
            [
                "deploy.yaml:10:16: `websocket: true` is for `protocol: http1` services (the WebSocket upgrade is an HTTP/1.1 request); remove `websocket` or the `protocol`",
                "deploy.yaml:11:19: `grpc: true` checks a gRPC service: give the service `protocol: grpc`, or check it with an HTTP `path`",
                "deploy.yaml:12:16: `ca` is empty: name a PEM file",
            ]
        );
        assert_eq!(
            problems(&file(
                "    protocol: grpc\n    health_check: { grpc: true, path: /health }\n"
            )),
            [
                "deploy.yaml:10:19: a health check is one of HTTP (`path`), `tcp: true` or `grpc: true`"
            ]
        );
        let p = problems(&file("    protocol: http3\n"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("deploy.yaml:9:15: "), "{p:?}");
    }

    #[test]
    fn proxyless_clients_refuse_what_they_cannot_do() {
        let text = "listeners:
  - name: api.svc
    proxyless: true
    routes:
      - match: { prefix: / }
        service: api
services:
  api:
    protocol: http2
    websocket: true
    tls: { sni: api.internal }
    versions:
      v1: { endpoints: [127.0.0.1:8081] }
    active: v1
";
        let p = problems(text);
        let at: Vec<&str> = p
            .iter()
            .filter_map(|m| Some(&m[..m.find(": service \"api\" is used by gRPC clients")?]))
            .collect();
        assert_eq!(
            at,
            ["deploy.yaml:9:15", "deploy.yaml:10:16", "deploy.yaml:11:10"],
            "{p:#?}"
        );
    }
}
