//! Health probes from the node into a task: a TCP connection, or an HTTP
//! `GET` whose status must be 2xx or 3xx (as Kubernetes' httpGet). They
//! run from the host's network namespace to the task's address on the
//! node's bridge (the host's loopback for a task on the host's network),
//! so the task needs no tools of its own. Exec probes run inside the
//! container instead (`runtime::exec`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most of a response read: enough for its status line.
const HEAD_BYTES: usize = 1024;

/// Connects to `address` within `timeout`.
pub async fn tcp(address: SocketAddr, timeout: Duration) -> Result<(), String> {
    within(timeout, async {
        TcpStream::connect(address).await.map(drop).map_err(|e| format!("connecting to {address}: {e}"))
    })
    .await
}

/// `GET path` from `address` within `timeout`: Ok on 2xx or 3xx.
pub async fn http(address: SocketAddr, path: &str, timeout: Duration) -> Result<(), String> {
    within(timeout, async {
        let mut stream = TcpStream::connect(address).await.map_err(|e| format!("connecting to {address}: {e}"))?;
        let host = match address.ip() {
            IpAddr::V4(ip) => format!("{ip}:{}", address.port()),
            IpAddr::V6(ip) => format!("[{ip}]:{}", address.port()),
        };
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: berth-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("sending to {address}: {e}"))?;
        let mut head = Vec::new();
        let mut buf = [0u8; 512];
        while !head.contains(&b'\n') && head.len() < HEAD_BYTES {
            let n = stream.read(&mut buf).await.map_err(|e| format!("reading from {address}: {e}"))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head);
        let line = line.lines().next().unwrap_or_default().trim();
        match status(line) {
            Some(200..=399) => Ok(()),
            Some(_) => Err(format!("GET {path}: {line}")),
            None => Err(format!("GET {path}: not an HTTP response: {line:?}")),
        }
    })
    .await
}

/// The status code of an HTTP/1 status line (`HTTP/1.1 200 OK`).
fn status(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok().filter(|c| (100..=599).contains(c))
}

async fn within(timeout: Duration, probe: impl std::future::Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::time::timeout(timeout, probe).await.unwrap_or_else(|_| Err(format!("timed out after {timeout:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers every connection with `reply` once it has read the request.
    async fn serve(reply: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:"));
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        address
    }

    #[tokio::test]
    async fn http_passes_on_2xx_and_3xx_only() {
        let second = Duration::from_secs(5);
        for (reply, ok) in [
            ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true),
            ("HTTP/1.0 302 Found\r\n\r\n", true),
            ("HTTP/1.1 503 Service Unavailable\r\n\r\n", false),
            ("SSH-2.0-OpenSSH\r\n", false),
        ] {
            let address = serve(reply).await;
            let outcome = http(address, "/healthz", second).await;
            assert_eq!(outcome.is_ok(), ok, "{reply:?}: {outcome:?}");
        }
        let address = serve("HTTP/1.1 500 Internal Server Error\r\n\r\n").await;
        assert_eq!(
            http(address, "/healthz", second).await.unwrap_err(),
            "GET /healthz: HTTP/1.1 500 Internal Server Error"
        );
    }

    #[tokio::test]
    async fn tcp_and_http_fail_on_a_closed_port_and_time_out_on_silence() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(tcp(closed, Duration::from_secs(5)).await.unwrap_err().contains("connecting to"));
        // Accepts, never answers.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = silent.local_addr().unwrap();
        assert_eq!(tcp(address, Duration::from_secs(5)).await, Ok(()));
        let slow = http(address, "/healthz", Duration::from_millis(200)).await;
        assert_eq!(slow.unwrap_err(), "timed out after 200ms");
        drop(silent);
    }
}
