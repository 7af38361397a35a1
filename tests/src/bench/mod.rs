//! What the benchmarks (`src/bin/bench_*.rs`) share: the raw DHCP exchange floor they compare
//! against and the figures they print.

pub mod big_kea;
pub mod cli;
pub mod cni_peer;
pub mod error;
pub mod figures;
pub mod proc;
pub mod raw_dora;
pub mod services;
