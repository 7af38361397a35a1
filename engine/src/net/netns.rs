//! Creating sockets in another network namespace.
//!
//! A socket belongs to the namespace of the thread that created it, for life. So the agent can
//! talk to the Kubernetes API from its own namespace while its macvlans, rtnetlink connection
//! and packet sockets live in another one (the host's, `/proc/1/ns/net`, when the agent runs in
//! the pod network; a lab namespace in tests): only the *creation* runs on a short-lived thread
//! that joined the target namespace. `setns()` changes only the calling thread.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

/// Where to create sockets: the process's own namespace, or the one behind a namespace file.
#[derive(Debug, Clone, Default)]
pub struct NetNs {
    target: Option<Arc<File>>,
}

impl NetNs {
    /// The calling thread's own namespace (nothing to switch).
    pub fn current() -> Self {
        NetNs::default()
    }

    /// The namespace behind `path` (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("network namespace {}: {e}", path.display()),
            )
        })?;
        Ok(NetNs {
            target: Some(Arc::new(file)),
        })
    }

    /// Runs `create` in the namespace, with the caller's tokio runtime entered so that sockets
    /// can register with its reactor.
    pub fn run<T: Send>(&self, create: impl FnOnce() -> T + Send) -> io::Result<T> {
        let Some(target) = &self.target else {
            return Ok(create());
        };
        let runtime = tokio::runtime::Handle::try_current().ok();
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns() with a valid namespace fd; it affects only this thread,
                    // which ends when the closure returns.
                    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let _entered = runtime.as_ref().map(|r| r.enter());
                    Ok(create())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}
