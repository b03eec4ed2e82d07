//! The one HTTP client for everything cutover itself sends: `cutover status`, `wait` and the
//! rollout commands to the admin API, the rollout webhooks, and the demo's requests.
//!
//! A small layer over reqwest that fixes, once, how cutover speaks HTTP: plain `http://` over
//! HTTP/1.1 (no TLS is compiled in), no proxy taken from the environment, no redirect followed
//! (a webhook that redirects has not answered 2xx), a new connection for every request (nothing
//! is pooled, so no connection outlives the runtime that opened it), a deadline for the whole
//! exchange, and errors in words a user can act on (`cannot connect: Connection refused (os
//! error 111)`, as the system says it).

use std::time::Duration;

pub use reqwest::header::HeaderMap;
pub use reqwest::{Method, StatusCode};

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid URL: {0}")]
    Url(String),
    /// The connection could not be made (the system's error: refused, no route, unknown host).
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The request could not be made of what was given (a header value that is not one).
    #[error("{}", root_cause(.0))]
    Request(#[source] reqwest::Error),
    /// The whole exchange took longer than it may.
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// Anything else that went wrong on the way (the connection closed early, a malformed
    /// answer), in the words of what failed.
    #[error("{}", root_cause(.0))]
    Http(#[source] reqwest::Error),
}

/// An answer: its status, headers and whole body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

impl Answer {
    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client; cheap to clone (clones share it).
#[derive(Debug, Clone)]
pub struct Client {
    inner: reqwest::Client,
}

impl Default for Client {
    fn default() -> Client {
        Client::new()
    }
}

impl Client {
    pub fn new() -> Client {
        let inner = reqwest::Client::builder()
            .http1_only()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .build()
            // It fails only setting up TLS or a DNS resolver of its own, and this build has
            // neither (default features off).
            .expect("a plain HTTP client builds");
        Client { inner }
    }

    /// One request with no body and the given headers: the answer, whatever its status.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Answer, Error> {
        let request = self.request(method, url, headers)?;
        within(timeout, async {
            let response = request.send().await.map_err(failed)?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(failed)?;
            Ok(Answer {
                status,
                headers,
                body,
            })
        })
        .await
    }

    /// `POST url` with `body` as JSON: the answer's status, once its head arrived (the body
    /// of the answer is not waited for).
    pub async fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<StatusCode, Error> {
        let request = self.request(Method::POST, url, &[])?.json(body);
        within(timeout, async {
            Ok(request.send().await.map_err(failed)?.status())
        })
        .await
    }

    fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<reqwest::RequestBuilder, Error> {
        let url = reqwest::Url::parse(url).map_err(|e| Error::Url(e.to_string()))?;
        if url.scheme() != "http" {
            return Err(Error::Url(format!(
                "{url}: only http:// URLs are supported"
            )));
        }
        let mut request = self.inner.request(method, url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Ok(request)
    }
}

async fn within<T>(
    timeout: Duration,
    exchange: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| Error::Timeout(timeout))?
}

/// A connection that could not be made is told by the system's own error; anything else by
/// what failed.
fn failed(e: reqwest::Error) -> Error {
    if e.is_builder() {
        return Error::Request(e);
    }
    if e.is_connect()
        && let Some(io) = io_error(&e)
    {
        return Error::Connect(std::io::Error::new(io.kind(), io.to_string()));
    }
    Error::Http(e)
}

fn io_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        next = e.source();
    }
    None
}

/// The innermost error: reqwest's own text only says that sending failed, and for which URL
/// (which every caller already names).
fn root_cause(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_says_the_system_error_and_a_silent_server_times_out() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let refused = std::net::TcpStream::connect(closed).unwrap_err();
        let client = Client::new();
        let err = client
            .send(
                Method::GET,
                &format!("http://{closed}/"),
                &[],
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Connect(_)), "{err:?}");
        assert_eq!(err.to_string(), format!("cannot connect: {refused}"));

        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let err = client
            .send(
                Method::POST,
                &format!("http://{addr}/"),
                &[],
                Duration::from_millis(200),
            )
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "no answer within 200ms");
    }

    #[tokio::test]
    async fn only_plain_http_urls_are_sent() {
        let client = Client::new();
        for (url, expected) in [
            (
                "https://127.0.0.1:1/",
                "invalid URL: https://127.0.0.1:1/: only http:// URLs are supported",
            ),
            ("/relative", "invalid URL: relative URL without a base"),
        ] {
            let err = client
                .post_json(url, &serde_json::json!({}), Duration::from_secs(1))
                .await
                .unwrap_err();
            assert_eq!(err.to_string(), expected);
        }
    }

    #[tokio::test]
    async fn answers_come_back_whatever_their_status_and_redirects_are_not_followed() {
        use axum::routing::get;
        let app = axum::Router::new()
            .route(
                "/moved",
                get(|| async { axum::response::Redirect::temporary("/elsewhere") }),
            )
            .route(
                "/echo",
                axum::routing::post(|headers: axum::http::HeaderMap, body: String| async move {
                    let auth = headers
                        .get("authorization")
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    (
                        axum::http::StatusCode::IM_A_TEAPOT,
                        format!("{auth} {body}"),
                    )
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = Client::new();
        let moved = client
            .send(
                Method::GET,
                &format!("http://{addr}/moved"),
                &[],
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(moved.status, StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(moved.headers["location"], "/elsewhere");
        let echo = client
            .send(
                Method::POST,
                &format!("http://{addr}/echo"),
                &[("authorization", "Bearer t")],
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(
            (echo.status.as_u16(), echo.text()),
            (418, "Bearer t ".to_owned())
        );
        let status = client
            .post_json(
                &format!("http://{addr}/echo"),
                &serde_json::json!({"a": 1}),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(status, StatusCode::IM_A_TEAPOT);
    }
}
