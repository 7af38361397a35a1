//! The benchmarks' command line: `--flag value` pairs, and what every binary does at its end.

use std::path::Path;

use serde::Serialize;

use super::error::BenchError;
use super::figures::write_json;

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
