//! The benchmarks' command line: `--flag value` pairs, and what every binary does at its end.

use std::path::Path;

use serde::Serialize;

use super::error::BenchError;
use super::figures::write_json;
use crate::lab::Server;

/// The command line as `(flag, value)` pairs; a flag without a value is a usage error.
pub fn flag_values() -> Result<Vec<(String, String)>, BenchError> {
    let mut it = std::env::args().skip(1);
    let mut pairs = Vec::new();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(BenchError::Usage)?;
        pairs.push((flag, value));
    }
    Ok(pairs)
}

/// A `--servers` value: the lab's servers by name, comma-separated (`kea,dnsmasq,dhcpd`).
pub fn servers(list: &str) -> Result<Vec<Server>, BenchError> {
    list.split(',')
        .map(|name| {
            Server::ALL
                .into_iter()
                .find(|s| s.name() == name)
                .ok_or(BenchError::Usage)
        })
        .collect()
}

/// The parsed arguments, or the usage message and exit status 2.
pub fn args_or_exit<T>(parsed: Result<T, BenchError>) -> T {
    parsed.unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2);
    })
}

/// Prints `table` and writes `report` as JSON to `out`; exits 1 when the JSON cannot be written.
pub fn publish(table: &str, out: &Path, report: &impl Serialize) {
    print!("{table}");
    match write_json(out, report) {
        Ok(()) => println!("\nJSON: {}", out.display()),
        Err(e) => {
            eprintln!("writing {}: {e}", out.display());
            std::process::exit(1);
        }
    }
}

/// Copies a log that goes with the lab directory next to `out` as `name`, for the why of any slow
/// figure. A failure to copy is reported, not fatal: the figures stand without it.
pub fn keep_log(log: &Path, out: &Path, name: &str) {
    let kept = out.with_file_name(name);
    if let Some(dir) = kept.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::copy(log, &kept) {
        Ok(_) => eprintln!("kept {} as {}", log.display(), kept.display()),
        Err(e) => eprintln!("keeping {}: {e}", log.display()),
    }
}
