
pub mod controlplane;
// DHCP lab harness: real DHCP servers in network namespaces (tests/lab/lab.sh)
pub mod bootp;
pub mod capture;
pub mod lab;
pub mod lab_error;
pub mod netns;
pub mod pcap;
pub mod probe;
pub mod udhcpc;
