//! dhcpmanager-apiserver: serves the original's /v1 API over the Kubernetes or standalone backend.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use dhcpmanager_apiserver::backend::kubernetes::{KubernetesBackend, KubernetesOptions};
use dhcpmanager_apiserver::backend::standalone::{StandaloneBackend, StandaloneOptions};
use dhcpmanager_apiserver::config::{Config, Source};
use dhcpmanager_apiserver::{Backend, Error, etcd_mirror, http};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "The original dhcpmanager /v1 REST API, served by dhcpmanager"
)]
struct Cli {
    /// Configuration file (default /etc/dhcpmanager/dhcpmanager.toml; a missing default file means defaults)
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run the lease manager in-process with an embedded store instead of Kubernetes
    #[arg(long)]
    standalone: bool,
    #[arg(long)]
    port: Option<u16>,
    /// Address to listen on
    #[arg(long)]
    bind: Option<String>,
    /// etcd endpoints, comma-separated (empty string: no etcd mirror)
    #[arg(long)]
    etcd: Option<String>,
    /// How long POST /v1/ip waits for a bound lease, e.g. "10s"
    #[arg(long)]
    request_timeout: Option<String>,
    /// Require this X-Auth-Token on every /v1 route (prefer DHCP_AUTH_TOKEN: flags show up in ps)
    #[arg(long)]
    auth_token: Option<String>,
    #[arg(long)]
    state_dir: Option<PathBuf>,
    #[arg(long)]
    max_body_bytes: Option<usize>,
    /// Standalone: macvlans kept ready on free MACs so a POST skips link creation (0: none)
    #[arg(long)]
    spare_links: Option<usize>,
    /// Standalone: DHCP transmissions per second toward the server, all addresses together
    #[arg(long)]
    dhcp_rate: Option<u32>,
    /// Standalone: transmissions that may go out at once before --dhcp-rate applies
    #[arg(long)]
    dhcp_burst: Option<u32>,
    /// POST /v1/ip per second, all clients together (0: no limit)
    #[arg(long)]
    allocate_rate: Option<u32>,
    /// POSTs that may come at once before --allocate-rate applies
    #[arg(long)]
    allocate_burst: Option<u32>,
    /// Log as JSON lines
    #[arg(long)]
    log_json: bool,
    /// Kubernetes backend: namespace for addresses of services given without "namespace/"
    #[arg(long, env = "POD_NAMESPACE", default_value = "dhcpmanager")]
    namespace: String,
    /// Kubernetes backend: the MacPool that /v1/mac edits and /v1/status reports
    #[arg(long, env = "DHCP_MAC_POOL", default_value = "default")]
    mac_pool: String,
}

impl Cli {
    /// Flags as raw per-key overrides, applied after the file and the environment.
    fn overrides(&self) -> Vec<(&'static str, String)> {
        let mut overrides = Vec::new();
        let mut put = |key, value: Option<String>| {
            if let Some(value) = value {
                overrides.push((key, value));
            }
        };
        put("standalone", self.standalone.then(|| "true".to_string()));
        put("port", self.port.map(|p| p.to_string()));
        put("bind", self.bind.clone());
        put("etcd", self.etcd.clone());
        put("request-timeout", self.request_timeout.clone());
        put("auth-token", self.auth_token.clone());
        put(
            "state-dir",
            self.state_dir.as_ref().map(|p| p.display().to_string()),
        );
        put("max-body-bytes", self.max_body_bytes.map(|n| n.to_string()));
        put("spare-links", self.spare_links.map(|n| n.to_string()));
        put("dhcp-rate", self.dhcp_rate.map(|n| n.to_string()));
        put("dhcp-burst", self.dhcp_burst.map(|n| n.to_string()));
        put("allocate-rate", self.allocate_rate.map(|n| n.to_string()));
        put("allocate-burst", self.allocate_burst.map(|n| n.to_string()));
        overrides
    }
}

/// The backend the configuration asks for, and what must run at shutdown. The in-memory test
/// backend is deliberately not an option.
async fn open_backend(config: &Config, cli: &Cli) -> Result<(Arc<dyn Backend>, Shutdown), Error> {
    if config.standalone {
        let backend = StandaloneBackend::open(StandaloneOptions::from_config(config)).await?;
        return Ok((backend.clone(), Shutdown::Standalone(backend)));
    }
    let options = KubernetesOptions {
        namespace: cli.namespace.clone(),
        mac_pool: cli.mac_pool.clone(),
        release_wait: config.request_timeout,
    };
    let backend = KubernetesBackend::connect(options).await.map_err(|error| {
        // The inner error names what was tried (in-cluster variables, the kubeconfig path).
        let reason = match error {
            kube::Error::InferConfig(inner) => inner.to_string(),
            other => other.to_string(),
        };
        Error::NoBackend(format!(
            "no Kubernetes cluster found ({reason}); use --standalone to run without Kubernetes"
        ))
    })?;
    Ok((backend, Shutdown::Nothing))
}

enum Shutdown {
    /// Stop the DHCP clients without releasing (leases stay valid for the next start) and flush.
    Standalone(Arc<StandaloneBackend>),
    /// The agents hold the leases; the cluster holds the state.
    Nothing,
}

impl Shutdown {
    async fn run(self) {
        match self {
            Shutdown::Standalone(backend) => backend.shutdown().await,
            Shutdown::Nothing => {}
        }
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    let source = match &cli.config {
        Some(path) => Source::Explicit(path),
        None => Source::Default,
    };
    let config = Config::load(source, std::env::vars(), &cli.overrides())?;
    let (backend, shutdown) = open_backend(&config, &cli).await?;
    let mirror = etcd_mirror::spawn(&config, backend.clone());
    if let Some(warning) = http::auth::exposure_warning(&config) {
        // Also on stderr as plain text: the first thing seen in `docker logs` or a terminal.
        eprintln!("WARNING: {warning}");
        tracing::warn!("{warning}");
    }
    let (server, address) = http::bind(config, backend)?;
    tracing::info!(%address, "serving /v1");
    let handle = server.handle();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing requests in flight");
        handle.stop(true).await;
    });
    let served = server.await.map_err(Error::Serve);
    if let Some(mirror) = mirror {
        mirror.abort();
    }
    shutdown.run().await;
    served
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if cli.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        // Colours only on a terminal: in a pod, kubectl logs would show the escape codes.
        tracing_subscriber::fmt()
            .with_ansi(std::io::stdout().is_terminal())
            .with_env_filter(filter)
            .init();
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime starts");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dhcpmanager-apiserver: {error}");
            ExitCode::FAILURE
        }
    }
}
