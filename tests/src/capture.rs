//! A running tcpdump in the lab, as a guard: stop it to read what it saw; dropping it stops it.

use std::path::{Path, PathBuf};

use crate::lab::Lab;
use crate::lab_error::LabError;
use crate::pcap::{self, DhcpFrame};

#[derive(Debug)]
pub struct Capture<'lab> {
    lab: &'lab Lab,
    file: PathBuf,
    running: bool,
}

impl<'lab> Capture<'lab> {
    pub(crate) fn new(lab: &'lab Lab, file: PathBuf) -> Self {
        Self {
            lab,
            file,
            running: true,
        }
    }

    /// The pcap file (inside the lab directory: gone after the lab is down).
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Stops tcpdump once everything sent so far is in the file, and returns the DHCP frames.
    pub fn stop(mut self) -> Result<Vec<DhcpFrame>, LabError> {
        self.running = false;
        self.lab.stop_capture()?;
        pcap::read(&self.file)
    }
}

impl Drop for Capture<'_> {
    fn drop(&mut self) {
        if self.running
            && let Err(e) = self.lab.stop_capture()
        {
            eprintln!("lab {}: stopping the capture failed: {e}", self.lab.name());
        }
    }
}
