pub mod controlplane;
// DHCP lab harness: real DHCP servers in network namespaces (tests/lab/lab.sh)
pub mod arp_capture;
pub mod bench;
pub mod binaries;
pub mod bootp;
pub mod capture;
pub mod chart;
pub mod cluster;
pub mod forger;
pub mod garbage_collector;
pub mod lab;
pub mod lab_error;
pub mod netns;
pub mod node;
pub mod node_web;
pub mod pcap;
pub mod podman;
pub mod probe;
pub mod process;
pub mod prometheus;
pub mod udhcpc;

/// The workspace root (the tests crate lives directly inside it): charts, scripts, examples.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_path_buf()
}
