//! Running code inside a network namespace from within the test process.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::lab_error::LabError;

/// Runs `f` on a fresh thread that first joins the named network namespace (`/run/netns/NS`, as
/// `ip netns add` makes it). `setns()` changes only the calling thread, so a fresh thread keeps
/// the caller (and the test harness's other threads) in their own namespace. A panic in `f`
/// is passed on to the caller, so test assertions inside `f` fail the test.
///
/// Sockets made inside `f` stay in the namespace after `f` returns. Note that `/sys/class/net`
/// still shows the host's links after a bare `setns()`: use netlink or `ip`, not sysfs.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T, LabError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let netns_error = |source| LabError::Netns {
        ns: ns.to_string(),
        source,
    };
    let handle = File::open(Path::new("/run/netns").join(ns)).map_err(netns_error)?;
    std::thread::scope(|scope| {
        let thread = scope.spawn(move || {
            // SAFETY: setns() on a valid, open namespace fd affects only this thread.
            if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(f())
        });
        match thread.join() {
            Ok(result) => result.map_err(netns_error),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
