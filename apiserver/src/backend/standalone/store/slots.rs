//! The record file of one allocation: two fixed-size slots, each able to hold one version of the
//! record with a sequence number and a CRC. A write goes to the slot that does not hold the
//! current version and is made durable with one `fdatasync`; a write torn by a crash fails its
//! CRC and the other slot's version stands.
//!
//! Why not a temp file and a rename: that costs an fsync of the file and one of the directory
//! (measured on this project's VM: p50 0.56 ms, p90 1.6 ms against 0.21 / 0.67 ms for an
//! overwrite of an allocated block plus fdatasync), and the confirmed record is written while a
//! POST waits. The file is created (zeroed, through the rename path) before the lease exists,
//! off the POST's path, so the blocks are allocated and initialised and an overwrite changes no
//! metadata that `fdatasync` would have to commit.
//!
//! Layout of a slot: magic `DMR1`, sequence (u64 LE), payload length (u32 LE), CRC-32 of
//! sequence ‖ length ‖ payload (u32 LE), payload. A slot of zeros is blank.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use dhcpmanager_engine::state_file::write_atomically;

/// Slot size of a new file; a record that does not fit gets a file with larger slots.
pub const SLOT_BYTES: usize = 4096;
const MAGIC: [u8; 4] = *b"DMR1";
const HEADER_BYTES: usize = 20;

/// What a record file holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Contents {
    /// Created but never written: a reservation no record followed.
    Empty,
    /// The newest intact version.
    Record { seq: u64, payload: Vec<u8> },
    /// Neither slot holds an intact version, though something was written.
    Corrupt(String),
}

#[derive(Debug, PartialEq, Eq)]
enum Slot {
    Blank,
    Valid { seq: u64, payload: Vec<u8> },
    Invalid(String),
}

/// The bytes of one slot holding `payload` as version `seq`.
pub fn encode(seq: u64, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).expect("records are far below 4 GiB");
    let mut bytes = Vec::with_capacity(HEADER_BYTES + payload.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&seq.to_le_bytes());
    bytes.extend_from_slice(&length.to_le_bytes());
    bytes.extend_from_slice(&checksum(seq, length, payload).to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

fn checksum(seq: u64, length: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(&length.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn decode_slot(slot: &[u8]) -> Slot {
    if slot.len() < HEADER_BYTES {
        return Slot::Invalid(format!("a slot of {} bytes", slot.len()));
    }
    if slot[..HEADER_BYTES].iter().all(|b| *b == 0) {
        return Slot::Blank;
    }
    if slot[..4] != MAGIC {
        return Slot::Invalid("no record header".into());
    }
    let seq = u64::from_le_bytes(slot[4..12].try_into().expect("8 bytes"));
    let length = u32::from_le_bytes(slot[12..16].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(slot[16..20].try_into().expect("4 bytes"));
    let Some(payload) = slot[HEADER_BYTES..].get(..length as usize) else {
        return Slot::Invalid(format!("a record of {length} bytes overruns its slot"));
    };
    if checksum(seq, length, payload) != crc {
        return Slot::Invalid(format!("version {seq} fails its checksum (torn write)"));
    }
    Slot::Valid {
        seq,
        payload: payload.to_vec(),
    }
}

/// Reads a whole file image: the newest intact version, if any.
pub fn decode(image: &[u8]) -> Contents {
    if image.is_empty() || !image.len().is_multiple_of(2) {
        return Contents::Corrupt(format!("{} bytes is no two-slot file", image.len()));
    }
    let (first, second) = image.split_at(image.len() / 2);
    let slots = [decode_slot(first), decode_slot(second)];
    let newest = slots
        .iter()
        .filter_map(|slot| match slot {
            Slot::Valid { seq, payload } => Some((*seq, payload)),
            _ => None,
        })
        .max_by_key(|(seq, _)| *seq);
    if let Some((seq, payload)) = newest {
        return Contents::Record {
            seq,
            payload: payload.clone(),
        };
    }
    match slots.into_iter().find_map(|slot| match slot {
        Slot::Invalid(problem) => Some(problem),
        _ => None,
    }) {
        Some(problem) => Contents::Corrupt(problem),
        None => Contents::Empty,
    }
}

/// A whole file with slots of `slot_bytes`, holding `record` (version, payload) if given.
fn image(slot_bytes: usize, record: Option<(u64, &[u8])>) -> Vec<u8> {
    let mut image = vec![0u8; 2 * slot_bytes];
    if let Some((seq, payload)) = record {
        let offset = slot_offset(seq, slot_bytes);
        let slot = encode(seq, payload);
        image[offset..offset + slot.len()].copy_from_slice(&slot);
    }
    image
}

/// Version `seq` lives in slot `seq % 2`, so consecutive versions alternate.
fn slot_offset(seq: u64, slot_bytes: usize) -> usize {
    if seq.is_multiple_of(2) { 0 } else { slot_bytes }
}

fn slot_bytes_for(payload_len: usize) -> usize {
    (HEADER_BYTES + payload_len).div_ceil(SLOT_BYTES).max(1) * SLOT_BYTES
}

/// Creates `path` as an empty record file, durably, unless it exists.
pub fn create_empty(path: &Path) -> io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    write_atomically(path, &image(SLOT_BYTES, None))
}

/// Makes `payload` the newest version in `path`: an overwrite of the slot not holding the current
/// version plus `fdatasync` when the file exists and the payload fits, otherwise a new file
/// through temp file and rename.
pub fn write(path: &Path, payload: &[u8]) -> io::Result<()> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return write_atomically(
                path,
                &image(slot_bytes_for(payload.len()), Some((1, payload))),
            );
        }
        Err(error) => return Err(error),
    };
    let current = read_file(&mut file)?;
    let slot_bytes = current.len() / 2;
    let seq = match decode(&current) {
        Contents::Record { seq, .. } => seq + 1,
        Contents::Empty | Contents::Corrupt(_) => 1,
    };
    if !current.len().is_multiple_of(2) || slot_bytes < HEADER_BYTES + payload.len() {
        let slot_bytes = slot_bytes_for(payload.len());
        return write_atomically(path, &image(slot_bytes, Some((seq, payload))));
    }
    let offset = slot_offset(seq, slot_bytes) as u64;
    file.write_all_at(&encode(seq, payload), offset)?;
    file.sync_data()
}

/// The newest intact version in `path`.
pub fn read(path: &Path) -> io::Result<Contents> {
    let mut file = File::open(path)?;
    Ok(decode(&read_file(&mut file)?))
}

fn read_file(file: &mut File) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(label: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "dm-slots-{label}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("a.rec")
    }

    #[test]
    fn versions_alternate_slots_and_the_newest_wins() {
        let path = temp_file("alternate");
        create_empty(&path).unwrap();
        assert_eq!(read(&path).unwrap(), Contents::Empty);
        for (n, text) in ["one", "two", "three"].iter().enumerate() {
            write(&path, text.as_bytes()).unwrap();
            assert_eq!(
                read(&path).unwrap(),
                Contents::Record {
                    seq: n as u64 + 1,
                    payload: text.as_bytes().to_vec()
                }
            );
        }
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            2 * SLOT_BYTES as u64,
            "overwritten in place"
        );
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_torn_write_leaves_the_previous_version() {
        let mut image = image(SLOT_BYTES, Some((1, b"first")));
        // version 2 goes to slot 0; tear it after its header
        let second = encode(2, b"second, longer");
        image[..HEADER_BYTES + 3].copy_from_slice(&second[..HEADER_BYTES + 3]);
        assert_eq!(
            decode(&image),
            Contents::Record {
                seq: 1,
                payload: b"first".to_vec()
            }
        );
        // and a flipped payload bit is caught too
        image[..second.len()].copy_from_slice(&second);
        image[HEADER_BYTES + 2] ^= 1;
        assert!(matches!(decode(&image), Contents::Record { seq: 1, .. }));
    }

    #[test]
    fn garbage_is_corrupt_and_zeros_are_empty() {
        assert_eq!(decode(&vec![0; 2 * SLOT_BYTES]), Contents::Empty);
        assert!(matches!(decode(b"{\"id\":"), Contents::Corrupt(_)));
        let mut garbage = vec![0u8; 2 * SLOT_BYTES];
        garbage[..5].copy_from_slice(b"hello");
        assert!(matches!(decode(&garbage), Contents::Corrupt(p) if p.contains("header")));
        let mut overrun = image(SLOT_BYTES, Some((1, b"x")));
        overrun[SLOT_BYTES + 12..SLOT_BYTES + 16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&overrun), Contents::Corrupt(p) if p.contains("overruns")));
    }

    #[test]
    fn a_record_larger_than_a_slot_gets_a_larger_file() {
        let path = temp_file("large");
        write(&path, b"small").unwrap();
        let big = vec![b'x'; SLOT_BYTES * 2];
        write(&path, &big).unwrap();
        assert_eq!(
            read(&path).unwrap(),
            Contents::Record {
                seq: 2,
                payload: big
            }
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len() % 2, 0);
        write(&path, b"small again").unwrap();
        assert!(matches!(
            read(&path).unwrap(),
            Contents::Record { seq: 3, .. }
        ));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
