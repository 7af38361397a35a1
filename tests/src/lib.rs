
pub mod controlplane;
