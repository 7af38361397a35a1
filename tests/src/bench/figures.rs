//! Figures the benchmarks share: latency percentiles of a series and where/when it was measured.

use std::process::Command;
use std::time::Duration;

use serde::Serialize;

/// Latency figures of one series, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub failed: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(mut times: Vec<Duration>, failed: usize) -> Latency {
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        // nearest rank: the smallest sample with at least p% of the samples at or below it
        let rank = |p: f64| {
            if times.is_empty() {
                f64::NAN
            } else {
                let k = ((p * times.len() as f64).ceil() as usize).clamp(1, times.len());
                ms(times[k - 1])
            }
        };
        let mean = if times.is_empty() {
            f64::NAN
        } else {
            times.iter().map(|d| ms(*d)).sum::<f64>() / times.len() as f64
        };
        Latency {
            samples: times.len(),
            failed,
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
            min_ms: times.first().map_or(f64::NAN, |d| ms(*d)),
            mean_ms: mean,
            max_ms: times.last().map_or(f64::NAN, |d| ms(*d)),
        }
    }

    /// One line of a benchmark's report: `what`, the sample count, the percentiles.
    pub fn line(&self, what: &str) -> String {
        format!(
            "{what:<48} n={:<3} failed={} p50 {:>8.1} ms  p99 {:>8.1} ms  min {:>8.1}  max {:>8.1}",
            self.samples, self.failed, self.p50_ms, self.p99_ms, self.min_ms, self.max_ms
        )
    }
}

pub fn date_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Cores, CPU model and kernel: the figures mean little without them.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    format!("{cpus} cores ({model}), Linux {}", kernel.trim())
}

/// Writes `report` as pretty JSON to `path`, creating its directory.
pub fn write_json(path: &std::path::Path, report: &impl Serialize) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let json = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(path, json + "\n")
}
