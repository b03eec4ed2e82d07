//! A TCP service for the TCP listener tests: a line echo server that tags every answer with its
//! version (`blue:hello`) and counts its open connections, and a client that speaks to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// How long an answer may take: Envoy connects upstream first.
const ANSWER: Duration = Duration::from_secs(10);

/// A line echo server on loopback, answering every line with `<tag>:<line>`.
pub struct TcpEcho {
    pub addr: SocketAddr,
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpEcho {
    pub async fn start(tag: &str) -> TcpEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let open = Arc::new(AtomicUsize::new(0));
        let (tag, count) = (tag.to_owned(), open.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tag, count) = (tag.clone(), count.clone());
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let answer = format!("{tag}:{line}\n");
                        if write.write_all(answer.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                    count.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        TcpEcho { addr, open, task }
    }

    /// Connections open to it now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One client connection, a line at a time.
pub struct TcpLine {
    lines: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    write: tokio::net::tcp::OwnedWriteHalf,
}

impl TcpLine {
    pub async fn connect(addr: SocketAddr) -> Result<TcpLine, String> {
        let stream = tokio::time::timeout(ANSWER, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect to {addr}: timed out"))?
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let (read, write) = stream.into_split();
        Ok(TcpLine {
            lines: BufReader::new(read).lines(),
            write,
        })
    }

    /// Sends `line` and returns the answer, or what went wrong (the connection closed, say).
    pub async fn send(&mut self, line: &str) -> Result<String, String> {
        self.write
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        match tokio::time::timeout(ANSWER, self.lines.next_line()).await {
            Err(_) => Err("no answer in time".to_owned()),
            Ok(Err(e)) => Err(format!("read: {e}")),
            Ok(Ok(None)) => Err("the connection was closed".to_owned()),
            Ok(Ok(Some(answer))) => Ok(answer),
        }
    }

    /// A connection for one line: its answer.
    pub async fn once(addr: SocketAddr, line: &str) -> Result<String, String> {
        TcpLine::connect(addr).await?.send(line).await
    }
}
