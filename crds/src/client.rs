//! The Kubernetes client of every dhcpmanager process: kube's own layers, on connections with
//! TCP_NODELAY.
//!
//! kube leaves Nagle's algorithm on (kube-rs/kube#2056). A new connection's first request then
//! waits behind the unacknowledged TLS Finished record until the API server's delayed ACK,
//! ~40 ms on Linux. HTTP/1.1 watches end by closing their connection, so every per-request watch
//! (the apiserver's POST and DELETE wait through one) made the next request pay it: measured in
//! `bench_api`, the create after a watch took 27–30 ms and a LIST 45 ms, against 2–4 ms on a
//! reused connection.

use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::retry::RetryPolicy;
use kube::client::{Body, ConfigExt};
use kube::{Client, Config};
use tower::ServiceBuilder;
use tower::retry::RetryLayer;
use tower_http::trace::TraceLayer;

/// In-cluster configuration or KUBECONFIG, in kube's usual order (as `Client::try_default`).
pub async fn connect() -> Result<Client, kube::Error> {
    let config = Config::infer().await.map_err(kube::Error::InferConfig)?;
    client_for(config)
}

/// The client for `config`, layered as kube's `Client::try_from(config)` builds it.
pub fn client_for(config: Config) -> Result<Client, kube::Error> {
    // Proxies and exec-plugin client certificates (whose expiry kube keeps to itself) are left
    // to kube's own builder, Nagle and all: correctness before 40 ms.
    if config.proxy_url.is_some() || config.auth_info.exec.is_some() {
        return Client::try_from(config);
    }
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    let tls = config.rustls_https_connector_with_connector(tcp)?;
    let mut connector = TimeoutConnector::new(tls);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let http: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Builder::new(TokioExecutor::new()).build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .layer(TraceLayer::new_for_http())
        .map_err(tower::BoxError::from)
        .service(http);
    Ok(Client::new(service, config.default_namespace))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// TCP_NODELAY of this process's TCP socket bound to `local` (a client's end), if found.
    #[allow(unsafe_code)]
    fn nodelay_of_socket_at(local: SocketAddr) -> Option<bool> {
        for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
            let Ok(fd) = entry.file_name().to_string_lossy().parse::<libc::c_int>() else {
                continue;
            };
            // SAFETY: getsockname/getsockopt only read into the buffers given, with their
            // sizes; on a descriptor that is not a socket (or already closed) they fail.
            unsafe {
                let mut addr: libc::sockaddr_in = std::mem::zeroed();
                let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                if libc::getsockname(fd, (&raw mut addr).cast(), &mut len) != 0
                    || addr.sin_family != libc::AF_INET as libc::sa_family_t
                    || u16::from_be(addr.sin_port) != local.port()
                {
                    continue;
                }
                let mut value: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                if libc::getsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&raw mut value).cast(),
                    &mut len,
                ) == 0
                {
                    return Some(value != 0);
                }
            }
        }
        None
    }

    /// Whether the connection `client` opens for its first request has TCP_NODELAY. The
    /// "API server" on loopback accepts and reads the request, and never answers.
    async fn first_connection_nodelay(client: impl FnOnce(Config) -> Client) -> Option<bool> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let client = client(Config::new(url.parse().unwrap()));
        let request = tokio::spawn(async move { client.apiserver_version().await });
        let (mut conn, peer) = listener.accept().await.unwrap();
        let mut head = [0u8; 512];
        let read = conn.read(&mut head).await.unwrap();
        assert!(
            head[..read].starts_with(b"GET /version"),
            "a request arrived"
        );
        let nodelay = nodelay_of_socket_at(peer);
        request.abort();
        nodelay
    }

    #[tokio::test]
    async fn connections_have_tcp_nodelay() {
        let nodelay = first_connection_nodelay(|c| client_for(c).unwrap()).await;
        assert_eq!(nodelay, Some(true));
    }

    /// Why this module exists. When kube sets TCP_NODELAY itself, this fails: then
    /// `client_for` can go back to `Client::try_from`.
    #[tokio::test]
    async fn kube_own_client_leaves_nagle_on() {
        let nodelay = first_connection_nodelay(|c| Client::try_from(c).unwrap()).await;
        assert_eq!(nodelay, Some(false));
    }
}
