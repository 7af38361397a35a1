//! Shared by the integration tests: an apiserver on 127.0.0.1 with a FakeBackend, and a raw
//! HTTP/1.1 client that sends exactly the bytes it is given.

#![allow(dead_code)]

pub mod etcd;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dhcpmanager_apiserver::backend::fake::{FakeBackend, FakeBehaviour};
use dhcpmanager_apiserver::{Config, MacAddr, http};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Running {
    pub address: SocketAddr,
    pub backend: Arc<FakeBackend>,
    handle: actix_web::dev::ServerHandle,
}

impl Running {
    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

pub fn test_config() -> Config {
    Config {
        port: 0,
        bind: "127.0.0.1".parse().unwrap(),
        etcd: Vec::new(),
        request_timeout: Duration::from_secs(2),
        // The tests that fire hundreds of POSTs measure the backend, not the limit (which
        // `allocation_rate_limit_answers_429` covers).
        allocate_rate: 0,
        ..Config::default()
    }
}

pub fn mac(last: u8) -> MacAddr {
    MacAddr([0x02, 0x77, 0, 0, 0, last])
}

pub async fn start(config: Config, backend: FakeBackend) -> Running {
    let backend = Arc::new(backend);
    let (server, address) = http::bind(config, backend.clone()).expect("binds 127.0.0.1:0");
    let handle = server.handle();
    tokio::spawn(server);
    Running {
        address,
        backend,
        handle,
    }
}

pub async fn start_binding(config: Config, macs: u8) -> Running {
    let backend = FakeBackend::new(FakeBehaviour::BindAfter(Duration::from_millis(20)))
        .with_macs((1..=macs).map(mac));
    start(config, backend).await
}

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// What every answer must be: JSON, compact, one trailing newline, typed application/json.
    pub fn assert_compact_json(&self) -> serde_json::Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        assert!(
            self.body.ends_with('\n') && !self.body.ends_with("\n\n"),
            "{self:?}"
        );
        let value = self.json();
        assert!(
            is_compact(self.body.trim_end_matches('\n')),
            "not compact: {:?}",
            self.body
        );
        value
    }
}

/// No whitespace outside string literals.
fn is_compact(json: &str) -> bool {
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        match (in_string, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (_, false, '"') => in_string = !in_string,
            (false, _, c) if c.is_whitespace() => return false,
            _ => {}
        }
    }
    true
}

/// Sends `head` (request line + headers, without the blank line) and `body` with a correct
/// Content-Length, the way Go's net/http does, and reads one response.
pub async fn send(address: SocketAddr, head: &str, body: &[u8]) -> Answer {
    let mut request = format!(
        "{head}\r\nHost: {address}\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: {}\r\nAccept-Encoding: gzip\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    send_raw(address, &request).await
}

pub async fn send_raw(address: SocketAddr, request: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(address).await.expect("connects");
    stream.write_all(request).await.expect("writes");
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        let n = stream.read(&mut chunk).await.expect("reads");
        assert!(
            n > 0,
            "connection closed before a response: {:?}",
            String::from_utf8_lossy(&buffer)
        );
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
    };
    let head = String::from_utf8(buffer[..header_end].to_vec()).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .expect("sized response");
    let mut body = buffer[header_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.expect("reads");
        assert!(n > 0, "connection closed mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    Answer {
        status,
        headers,
        body: String::from_utf8(body).expect("UTF-8 body"),
    }
}

/// The MetalLB fork's POST /v1/ip, byte for byte.
pub async fn fork_post(
    address: SocketAddr,
    path: &str,
    service: &str,
    token: Option<&str>,
) -> Answer {
    let body = format!("{{\"service\":\"{service}\"}}\n");
    send(address, &fork_head("POST", path, token), body.as_bytes()).await
}

/// The MetalLB fork's DELETE /v1/ip with its JSON body.
pub async fn fork_delete(address: SocketAddr, path: &str, ip: &str, token: Option<&str>) -> Answer {
    let body = format!("{{\"ip\":\"{ip}\"}}\n");
    send(address, &fork_head("DELETE", path, token), body.as_bytes()).await
}

fn fork_head(method: &str, path: &str, token: Option<&str>) -> String {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nAccept: application/json\r\nContent-Type: application/json"
    );
    if let Some(token) = token {
        head.push_str(&format!("\r\nX-Auth-Token: {token}"));
    }
    head
}

pub async fn get(address: SocketAddr, path: &str) -> Answer {
    send(address, &format!("GET {path} HTTP/1.1"), b"").await
}

pub async fn json_request(address: SocketAddr, method: &str, path: &str, body: &str) -> Answer {
    let head = format!("{method} {path} HTTP/1.1\r\nContent-Type: application/json");
    send(address, &head, body.as_bytes()).await
}
