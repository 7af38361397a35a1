
pub mod net;
