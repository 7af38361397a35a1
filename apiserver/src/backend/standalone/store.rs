//! The standalone mode's embedded, crash-safe store: one record file per allocation plus one
//! file holding the MAC pool, under the state directory.
//!
//! Why one file per allocation: every renewal rewrites the allocation it belongs to. A single
//! file would serialise and write all allocations (~0.5 MB for 500) on every renewal of any of
//! them, and one corrupt file would lose every allocation instead of one.
//!
//! An allocation's file holds two versions of its record ([`slots`]): a write overwrites the
//! older one and costs one `fdatasync`, and a write torn by a crash leaves the other intact. The
//! file is created before the allocation's lease exists ([`Store::reserve_allocation`]), so the
//! write that confirms an address, which a POST waits for, is such an overwrite. A file that was
//! reserved but never written is removed at open.
//!
//! The pool file lists every MAC of the pool, free or not: which MACs are free follows from the
//! allocation files, so there is no moment at which a crash can leave a MAC both free and in use.
//! It is JSON written through [`dhcpmanager_engine::state_file::write_atomically`] (temp file,
//! fsync, rename, fsync of the directory). Unreadable files are reported with their path and
//! skipped, never fatal.

mod slots;

use std::collections::BTreeSet;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use dhcpmanager_engine::dhcp::LeaseRecord;
use dhcpmanager_engine::state_file::write_atomically;
use serde::{Deserialize, Serialize};

use crate::MacAddr;
use slots::Contents;

const ALLOCATIONS_DIR: &str = "allocations";
/// Extension of an allocation's record file.
const RECORD_EXTENSION: &str = "rec";
const POOL_FILE: &str = "macs.json";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("allocation id {0:?} cannot name a file")]
    BadId(String),
}

/// Where an allocation stands; decides what a restart does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// A POST is waiting for it; its client has not been given the address.
    Pending,
    /// Handed out: keep renewing it until it is released, across restarts.
    Confirmed,
    /// A DELETE is releasing it.
    Releasing,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredAllocation {
    pub id: String,
    pub service: String,
    pub hostname: String,
    pub mac: MacAddr,
    pub phase: Phase,
    /// The address the client was given (set when Confirmed). Kept apart from `record.ip` so a
    /// server that moves the lease elsewhere after a NAK is noticed, and DELETE of the address
    /// the client knows still finds the allocation.
    pub handed_out_ip: Option<Ipv4Addr>,
    /// The lease as the client last held it; `None` while it holds none.
    pub record: Option<LeaseRecord>,
    pub created_at: DateTime<Utc>,
    /// False from the confirming write until the HTTP handler took the answer: a record found
    /// Confirmed but not answered after a crash was handed out durably, yet its requester may
    /// never have heard of it. Records written before this field existed read as answered.
    #[serde(default = "answered_by_default")]
    pub answered: bool,
}

fn answered_by_default() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PoolFile {
    macs: BTreeSet<MacAddr>,
}

/// A file that could not be used; everything else was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedFile {
    pub path: PathBuf,
    pub problem: String,
}

/// What was on disk at open.
#[derive(Debug, Default)]
pub struct Loaded {
    pub allocations: Vec<StoredAllocation>,
    pub pool: BTreeSet<MacAddr>,
    pub skipped: Vec<SkippedFile>,
    /// Reserved files no record was written to (a crash before a lease), now removed.
    pub unused_reservations: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cleanup {
    Yes,
    No,
}

/// The files of one state directory. Not synchronised: callers serialise writes to one file
/// (the standalone backend funnels all writes through one thread).
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Creates the directory layout if needed and reads everything readable.
    pub fn open(dir: &Path) -> Result<(Store, Loaded), StoreError> {
        let store = Store {
            dir: dir.to_path_buf(),
        };
        let allocations_dir = store.allocations_dir();
        fs::create_dir_all(&allocations_dir).map_err(|source| StoreError::Io {
            path: allocations_dir.clone(),
            source,
        })?;
        let mut loaded = Loaded::default();
        store.load_pool(&mut loaded)?;
        store.load_allocations(&mut loaded, Cleanup::Yes)?;
        Ok((store, loaded))
    }

    /// Reads what `open` would load without changing anything on disk (no leftovers removed):
    /// for inspecting the directory of a running backend.
    pub fn peek(dir: &Path) -> Result<Loaded, StoreError> {
        let store = Store {
            dir: dir.to_path_buf(),
        };
        let mut loaded = Loaded::default();
        store.load_pool(&mut loaded)?;
        store.load_allocations(&mut loaded, Cleanup::No)?;
        Ok(loaded)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn allocation_path(&self, id: &str) -> Result<PathBuf, StoreError> {
        let usable = !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !usable {
            return Err(StoreError::BadId(id.to_string()));
        }
        Ok(self
            .allocations_dir()
            .join(format!("{id}.{RECORD_EXTENSION}")))
    }

    /// Creates the (empty) record file of an allocation ahead of its first record, so that
    /// record costs one `fdatasync` instead of a file creation.
    pub fn reserve_allocation(&self, id: &str) -> Result<(), StoreError> {
        let path = self.allocation_path(id)?;
        slots::create_empty(&path).map_err(|source| StoreError::Io { path, source })
    }

    pub fn save_allocation(&self, allocation: &StoredAllocation) -> Result<(), StoreError> {
        let path = self.allocation_path(&allocation.id)?;
        // Pretty: the record stays readable in the file with `strings`.
        let json = serde_json::to_vec_pretty(allocation).expect("an allocation always serializes");
        slots::write(&path, &json).map_err(|source| StoreError::Io { path, source })
    }

    pub fn remove_allocation(&self, id: &str) -> Result<(), StoreError> {
        let path = self.allocation_path(id)?;
        match fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(StoreError::Io {
                path,
                source: error,
            }),
            _ => Ok(()),
        }
    }

    pub fn save_pool(&self, macs: &BTreeSet<MacAddr>) -> Result<(), StoreError> {
        let path = self.dir.join(POOL_FILE);
        let json = serde_json::to_vec_pretty(&PoolFile { macs: macs.clone() })
            .expect("a MAC set always serializes");
        write_atomically(&path, &json).map_err(|source| StoreError::Io { path, source })
    }

    fn allocations_dir(&self) -> PathBuf {
        self.dir.join(ALLOCATIONS_DIR)
    }

    fn load_pool(&self, loaded: &mut Loaded) -> Result<(), StoreError> {
        let path = self.dir.join(POOL_FILE);
        match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<PoolFile>(&bytes) {
                Ok(pool) => loaded.pool = pool.macs,
                Err(error) => loaded.skipped.push(SkippedFile {
                    path,
                    problem: format!("not a MAC pool: {error}"),
                }),
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => loaded.skipped.push(SkippedFile {
                path,
                problem: error.to_string(),
            }),
        }
        Ok(())
    }

    fn load_allocations(&self, loaded: &mut Loaded, cleanup: Cleanup) -> Result<(), StoreError> {
        let dir = self.allocations_dir();
        let entries = fs::read_dir(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') && name.ends_with(".tmp") {
                // A write interrupted before its rename: the previous content is still in place.
                if cleanup == Cleanup::Yes {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            let Some(stem) = name.strip_suffix(&format!(".{RECORD_EXTENSION}")) else {
                continue;
            };
            match read_allocation(&path) {
                Ok(Some(allocation)) if allocation.id == stem => {
                    loaded.allocations.push(allocation)
                }
                Ok(Some(allocation)) => loaded.skipped.push(SkippedFile {
                    problem: format!("holds allocation {:?}, not {stem:?}", allocation.id),
                    path,
                }),
                Ok(None) if cleanup == Cleanup::No => {}
                Ok(None) => match fs::remove_file(&path) {
                    Ok(()) => loaded.unused_reservations += 1,
                    Err(error) => loaded.skipped.push(SkippedFile {
                        problem: format!("an unused reservation that cannot be removed: {error}"),
                        path,
                    }),
                },
                Err(problem) => loaded.skipped.push(SkippedFile { path, problem }),
            }
        }
        Ok(())
    }
}

/// The allocation in a record file; `None` for a reservation never written.
fn read_allocation(path: &Path) -> Result<Option<StoredAllocation>, String> {
    match slots::read(path).map_err(|e| e.to_string())? {
        Contents::Empty => Ok(None),
        Contents::Corrupt(problem) => Err(problem),
        Contents::Record { payload, .. } => serde_json::from_slice(&payload)
            .map(Some)
            .map_err(|e| format!("not an allocation: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "dm-store-{label}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn allocation(id: &str, last: u8) -> StoredAllocation {
        StoredAllocation {
            id: id.to_string(),
            service: "default/web".into(),
            hostname: "web.default".into(),
            mac: MacAddr([2, 0x77, 0, 0, 0, last]),
            phase: Phase::Confirmed,
            handed_out_ip: Some(Ipv4Addr::new(10, 77, 0, 20)),
            record: None,
            created_at: Utc::now(),
            answered: true,
        }
    }

    #[test]
    fn saved_allocations_and_pool_come_back() {
        let dir = temp_dir("roundtrip");
        let (store, loaded) = Store::open(&dir).unwrap();
        assert!(loaded.allocations.is_empty() && loaded.pool.is_empty());
        let a = allocation("a1", 1);
        let b = allocation("b2", 2);
        store.save_allocation(&a).unwrap();
        store.save_allocation(&b).unwrap();
        let pool: BTreeSet<MacAddr> = [a.mac, b.mac, MacAddr([2, 0x77, 0, 0, 0, 3])].into();
        store.save_pool(&pool).unwrap();
        store.remove_allocation("b2").unwrap();
        store.remove_allocation("never-there").unwrap();

        let (_, loaded) = Store::open(&dir).unwrap();
        assert_eq!(loaded.allocations, vec![a]);
        assert_eq!(loaded.pool, pool);
        assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_files_are_reported_with_their_path_and_skipped() {
        let dir = temp_dir("corrupt");
        let (store, _) = Store::open(&dir).unwrap();
        let good = allocation("good", 1);
        store.save_allocation(&good).unwrap();
        let garbage = dir.join("allocations/garbage.rec");
        fs::write(&garbage, b"{\"id\": \"torn\", \"serv").unwrap();
        // a record file holding another allocation than its name says
        let misnamed = dir.join("allocations/other.rec");
        store.save_allocation(&allocation("good2", 2)).unwrap();
        fs::rename(dir.join("allocations/good2.rec"), &misnamed).unwrap();
        // a valid record that is no allocation
        let foreign = dir.join("allocations/foreign.rec");
        slots::write(&foreign, b"[1, 2]").unwrap();
        fs::write(dir.join("macs.json"), b"[not a pool").unwrap();
        let leftover = dir.join("allocations/.good.rec.123.tmp");
        fs::write(&leftover, b"half").unwrap();
        // reserved, never written: removed quietly
        store.reserve_allocation("unused").unwrap();

        let (_, loaded) = Store::open(&dir).unwrap();
        assert_eq!(loaded.allocations, vec![good]);
        assert!(loaded.pool.is_empty());
        let mut skipped: Vec<&Path> = loaded.skipped.iter().map(|s| s.path.as_path()).collect();
        skipped.sort();
        let pool_path = dir.join("macs.json");
        let mut expected = vec![
            misnamed.as_path(),
            garbage.as_path(),
            foreign.as_path(),
            pool_path.as_path(),
        ];
        expected.sort();
        assert_eq!(skipped, expected);
        assert!(!leftover.exists(), "interrupted temp files are cleared");
        assert_eq!(loaded.unused_reservations, 1);
        assert!(!dir.join("allocations/unused.rec").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_reserved_file_takes_the_record_in_place_and_keeps_every_version_readable() {
        let dir = temp_dir("reserved");
        let (store, _) = Store::open(&dir).unwrap();
        store.reserve_allocation("a1").unwrap();
        let path = store.allocation_path("a1").unwrap();
        let size = fs::metadata(&path).unwrap().len();
        let mut a = allocation("a1", 1);
        store.save_allocation(&a).unwrap();
        a.phase = Phase::Releasing;
        store.save_allocation(&a).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            size,
            "overwritten in place"
        );
        // reserving again must not wipe a record
        store.reserve_allocation("a1").unwrap();
        let (_, loaded) = Store::open(&dir).unwrap();
        assert_eq!(loaded.allocations, vec![a]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ids_that_could_escape_the_directory_are_refused() {
        let dir = temp_dir("ids");
        let (store, _) = Store::open(&dir).unwrap();
        for bad in ["", "../x", "a/b", "a.rec"] {
            assert!(
                matches!(store.allocation_path(bad), Err(StoreError::BadId(_))),
                "{bad}"
            );
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
