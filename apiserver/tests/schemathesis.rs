//! Fuzzes the served OpenAPI document against the running API with schemathesis (all checks):
//! any 5xx, schema violation, undocumented status code or wrong content type fails the test.
//!
//! Needs the `st` CLI: `scripts/install-schemathesis.sh` installs it into a venv under target/
//! (scripts/test.sh runs it first), or set SCHEMATHESIS=/path/to/st. A missing CLI fails the test. SCHEMATHESIS_MAX_EXAMPLES (default 30) per operation.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use dhcpmanager_apiserver::backend::fake::{FakeBackend, FakeBehaviour};

fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/schemathesis-venv/bin/st")
}

async fn fuzz(token: Option<&str>) {
    let st = schemathesis();
    assert!(
        st.exists(),
        "{} missing: run scripts/install-schemathesis.sh",
        st.display()
    );
    let config = dhcpmanager_apiserver::Config {
        auth_token: token.map(str::to_string),
        ..test_config()
    };
    // Binds at once and never runs out of MACs, so only the API's own behaviour is judged.
    let backend = FakeBackend::new(FakeBehaviour::BindAfter(Duration::ZERO)).synthesizing_macs();
    let running = start(config, backend).await;

    let max_examples = std::env::var("SCHEMATHESIS_MAX_EXAMPLES").unwrap_or_else(|_| "30".into());
    let mut command = tokio::process::Command::new(&st);
    command
        .arg("run")
        .arg(format!("http://{}/v1/openapi.json", running.address))
        .args([
            "--checks",
            "all",
            "--no-color",
            "--max-examples",
            &max_examples,
        ])
        // Its .schemathesis cache goes under target/, not into the source tree.
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .kill_on_drop(true);
    if let Some(token) = token {
        command.args(["--header", &format!("X-Auth-Token: {token}")]);
    }
    // Safety net against a hung fuzzer, not a performance assertion.
    let output = tokio::time::timeout(Duration::from_secs(900), command.output())
        .await
        .expect("schemathesis finished")
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&output.stdout);
    println!("{report}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_holds_under_schemathesis() {
    fuzz(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_holds_under_schemathesis_with_a_token() {
    fuzz(Some("fuzz-token")).await;
}
