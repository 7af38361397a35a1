//! A real etcd 3.4 (/usr/bin/etcd) on 127.0.0.1 with free ports and a temporary data
//! directory, killed by PID; and how to read what the mirror wrote.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use dhcpmanager_apiserver::backend::Backend;
use dhcpmanager_apiserver::config::ORIGINAL_ETCD_PREFIX;
use dhcpmanager_apiserver::etcd_mirror::desired_keys;
use etcd_client::{Client, GetOptions};

pub const PREFIX: &str = ORIGINAL_ETCD_PREFIX;

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Etcd {
    child: Option<Child>,
    data_dir: PathBuf,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    pub fn new() -> Etcd {
        let data_dir = std::env::temp_dir().join(format!(
            "dhcpmanager-etcd-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&data_dir);
        Etcd {
            child: None,
            data_dir,
            client_port: free_port(),
            peer_port: free_port(),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Starts etcd in the calling thread's network namespace.
    pub async fn start(&mut self) {
        let client_url = format!("http://127.0.0.1:{}", self.client_port);
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("/usr/bin/etcd")
            .args(["--name", "mirror-test", "--data-dir"])
            .arg(&self.data_dir)
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("mirror-test={peer_url}")])
            .args(["--log-level", "error", "--logger", "zap"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("/usr/bin/etcd starts");
        self.child = Some(child);
        // Safety net only: etcd is normally up in well under a second.
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut client) = Client::connect([self.endpoint()], None).await
                && client.status().await.is_ok()
            {
                return;
            }
            assert!(Instant::now() < give_up, "etcd did not become healthy");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

pub async fn keys_under_prefix(
    client: &mut Client,
) -> Result<BTreeMap<String, (String, i64)>, etcd_client::Error> {
    let answer = client
        .get(PREFIX, Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(answer
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                (kv.value_str().unwrap().to_string(), kv.lease()),
            )
        })
        .collect())
}

/// Polls until etcd holds exactly what the backend's state demands; the timeout is a safety net.
pub async fn wait_until_mirrored<B: Backend>(
    etcd: &Etcd,
    backend: &B,
) -> BTreeMap<String, (String, i64)> {
    let give_up = Instant::now() + Duration::from_secs(60);
    let mut last = BTreeMap::new();
    while Instant::now() < give_up {
        let want = desired_keys(PREFIX, &backend.status().await.unwrap(), Utc::now());
        if let Ok(mut client) = Client::connect([etcd.endpoint()], None).await
            && let Ok(seen) = keys_under_prefix(&mut client).await
        {
            last = seen;
            let same = last.len() == want.len()
                && want.iter().all(|(key, desired)| {
                    last.get(key)
                        .is_some_and(|(value, _)| *value == desired.value)
                });
            if same {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("etcd never converged; last seen: {last:#?}");
}
