//! A lease record in a file, written crash-safely (temp file, fsync, rename, fsync the directory)
//! so that a crash at any instant leaves either the old record or the new one, never a torn one.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::dhcp::LeaseRecord;
use crate::error::Error;

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::StateFile {
        path: path.display().to_string(),
        source,
    }
}

/// The record in `path`; `None` when the file does not exist.
pub fn read(path: &Path) -> Result<Option<LeaseRecord>, Error> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| Error::StateFormat {
                    path: path.display().to_string(),
                    source,
                })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(io_error(path, error)),
    }
}

pub fn write(path: &Path, record: &LeaseRecord) -> Result<(), Error> {
    let json = serde_json::to_vec_pretty(record).expect("a lease record always serializes");
    write_atomically(path, &json).map_err(|e| io_error(path, e))
}

pub fn remove(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error(path, error)),
    }
}

/// Writes `bytes` to `path` so that readers (and a crash) see the old or the new content only.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut file = fs::File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temp, path)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_remove() {
        let dir = std::env::temp_dir().join(format!("dm-state-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lease.json");
        assert_eq!(read(&path).unwrap(), None);
        let record = crate::fixtures::lease_record(chrono::Utc::now());
        write(&path, &record).unwrap();
        assert_eq!(read(&path).unwrap(), Some(record));
        remove(&path).unwrap();
        assert_eq!(read(&path).unwrap(), None);
        fs::write(&path, b"{not json").unwrap();
        let error = read(&path).unwrap_err().to_string();
        assert!(error.contains("not a lease record"), "{error}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
