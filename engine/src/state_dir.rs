//! One instance per state directory: an exclusive `flock` on `<dir>/lock`, taken before anything
//! in the directory or on the network is changed, and the instance id kept in `<dir>/instance-id`.
//!
//! Why a lock: two standalone apiservers on one state directory would each take the other's
//! allocations for leftovers of a crash, and each sweep the other's links. The lock is the
//! kernel's: it ends with the process however it ends (kill -9 included), so a stale lock file
//! never blocks a restart. The holder writes its pid into the file for the error message only.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::instance::InstanceId;
use crate::state_file::write_atomically;

const LOCK_FILE: &str = "lock";
const INSTANCE_ID_FILE: &str = "instance-id";
/// Kind prefix of the ids this module makes.
const KIND: &str = "standalone";

/// Held for as long as the instance runs: dropping it (or the process ending) frees the directory.
#[derive(Debug)]
pub struct StateDirLock {
    _file: File,
    dir: PathBuf,
    instance: InstanceId,
}

impl StateDirLock {
    /// Locks `dir` (created if missing) for this process, then reads its instance id, making and
    /// storing one on first use. Fails without changing anything when another process holds it.
    pub fn acquire(dir: &Path) -> Result<Self, Error> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| Error::StateFile { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(Error::StateDirInUse {
                    dir: dir.to_path_buf(),
                    holder: describe_holder(&holder),
                });
            }
            Err(TryLockError::Error(source)) => return Err(io(&lock_path)(source)),
        }
        // Diagnostics only: whoever fails to take the lock names the holder in its error.
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "pid {}", std::process::id()));
        written.map_err(io(&lock_path))?;
        let instance = read_or_make_id(&dir.join(INSTANCE_ID_FILE))?;
        Ok(StateDirLock {
            _file: file,
            dir: dir.to_path_buf(),
            instance,
        })
    }

    /// The id of the instance that owns this directory, stable across its restarts.
    pub fn instance(&self) -> &InstanceId {
        &self.instance
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn describe_holder(contents: &str) -> String {
    match contents.trim() {
        "" => "another process".to_string(),
        text => format!("another process ({text})"),
    }
}

fn read_or_make_id(path: &Path) -> Result<InstanceId, Error> {
    let io = |source| Error::StateFile {
        path: path.display().to_string(),
        source,
    };
    match fs::read_to_string(path) {
        Ok(text) => InstanceId::new(text.trim()).map_err(|error| {
            Error::InstanceId(format!(
                "{}: {error} (delete the file to make a new id; this instance then no longer \
                 recognises links it made before)",
                path.display()
            ))
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let id = InstanceId::random(KIND);
            write_atomically(path, format!("{id}\n").as_bytes()).map_err(io)?;
            Ok(id)
        }
        Err(error) => Err(io(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dm-state-dir-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_and_the_id_survives() {
        let dir = temp_dir("second");
        let first = StateDirLock::acquire(&dir).unwrap();
        let id = first.instance().clone();
        // Another open file description, as another process would have.
        match StateDirLock::acquire(&dir) {
            Err(Error::StateDirInUse {
                dir: locked,
                holder,
            }) => {
                assert_eq!(locked, dir);
                assert!(
                    holder.contains(&format!("pid {}", std::process::id())),
                    "{holder}"
                );
            }
            other => panic!("expected StateDirInUse, got {other:?}"),
        }
        drop(first);
        let again = StateDirLock::acquire(&dir).unwrap();
        assert_eq!(again.instance(), &id, "the same directory keeps its id");
        drop(again);
        let other_dir = temp_dir("other");
        assert_ne!(StateDirLock::acquire(&other_dir).unwrap().instance(), &id);
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_dir_all(&other_dir);
    }

    #[test]
    fn a_damaged_id_file_is_an_error_not_a_new_identity() {
        let dir = temp_dir("damaged");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(INSTANCE_ID_FILE), "not:valid\n").unwrap();
        let error = StateDirLock::acquire(&dir).unwrap_err();
        assert!(error.to_string().contains("instance-id"), "{error}");
        let _ = fs::remove_dir_all(&dir);
    }
}
