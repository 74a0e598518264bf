//! The snapshot of the embedded mode: the state that the sealed journal
//! segments up to and including `covers` rebuild, written so that a crash
//! at any moment leaves either the old snapshot or the new one, whole.
//!
//! File format (`<data-dir>/orders.snapshot`):
//!
//! ```text
//! "SKSNAP01"                        8-byte magic
//! u64 LE covers                     last sealed segment folded in
//! u32 LE len | u32 LE crc | state   the state (opaque bytes to this module)
//! ```
//!
//! Writing: [`write_temp`] writes `orders.snapshot.tmp` and fsyncs it;
//! [`install`] renames it over `orders.snapshot` and fsyncs the directory.
//! A temp file found on open is the leftover of a crash and is removed.
//! The journal (`crate::journal`) reads the snapshot on recovery and skips
//! (and removes) the segments it covers.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Name of the snapshot file inside the data directory.
pub const FILE_NAME: &str = "orders.snapshot";
/// The temp file a new snapshot is written to before it is installed.
pub const TEMP_NAME: &str = "orders.snapshot.tmp";
/// The 8 bytes a snapshot file starts with.
pub const MAGIC: &[u8; 8] = b"SKSNAP01";
const HEADER: usize = 8 + 8 + 4 + 4;

/// A snapshot as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The last sealed journal segment whose events the state includes.
    pub covers: u64,
    /// The state, as the writer encoded it.
    pub state: Vec<u8>,
}

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O failed: {0}")]
    Io(#[from] io::Error),
    /// Installed snapshots are whole (temp + fsync + rename): a bad one is
    /// damage, and the node must not start without it.
    #[error("{} is damaged: {reason}", path.display())]
    Damaged { path: PathBuf, reason: &'static str },
}

/// Reads `dir/orders.snapshot`, if there is one; removes a leftover temp
/// file.
pub fn read(dir: &Path) -> Result<Option<Snapshot>, SnapshotError> {
    match fs::remove_file(dir.join(TEMP_NAME)) {
        Ok(()) => sync_dir(dir)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let path = dir.join(FILE_NAME);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let damaged = |reason| SnapshotError::Damaged {
        path: path.clone(),
        reason,
    };
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(damaged("bad header"));
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let covers = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let (len, crc) = (word(16) as usize, word(20));
    let state = &bytes[HEADER..];
    if state.len() != len {
        return Err(damaged("bad length"));
    }
    if crc32fast::hash(state) != crc {
        return Err(damaged("bad checksum"));
    }
    Ok(Some(Snapshot {
        covers,
        state: state.to_vec(),
    }))
}

/// Writes `state` (covering segments up to `covers`) to the temp file and
/// fsyncs it. Nothing is installed yet.
pub fn write_temp(dir: &Path, covers: u64, state: &[u8]) -> io::Result<()> {
    let len = u32::try_from(state.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "snapshot over 4 GiB"))?;
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join(TEMP_NAME))?;
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&covers.to_le_bytes());
    header.extend_from_slice(&len.to_le_bytes());
    header.extend_from_slice(&crc32fast::hash(state).to_le_bytes());
    file.write_all(&header)?;
    file.write_all(state)?;
    file.sync_all()
}

/// Installs the temp file as the snapshot: rename, then fsync the
/// directory so the rename survives a crash.
pub fn install(dir: &Path) -> io::Result<()> {
    fs::rename(dir.join(TEMP_NAME), dir.join(FILE_NAME))?;
    sync_dir(dir)
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_installed_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(read(tmp.path()).unwrap(), None);
        write_temp(tmp.path(), 7, b"state one").unwrap();
        // Not installed: a crash here leaves no snapshot, and the temp
        // file is removed on the next read.
        assert_eq!(read(tmp.path()).unwrap(), None);
        assert!(!tmp.path().join(TEMP_NAME).exists());
        write_temp(tmp.path(), 7, b"state one").unwrap();
        install(tmp.path()).unwrap();
        write_temp(tmp.path(), 9, b"state two").unwrap();
        // The old snapshot stands until the new one is installed.
        let got = read(tmp.path()).unwrap().unwrap();
        assert_eq!((got.covers, got.state.as_slice()), (7, &b"state one"[..]));
        write_temp(tmp.path(), 9, b"state two").unwrap();
        install(tmp.path()).unwrap();
        let got = read(tmp.path()).unwrap().unwrap();
        assert_eq!((got.covers, got.state.as_slice()), (9, &b"state two"[..]));
    }

    #[test]
    fn a_damaged_snapshot_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        write_temp(tmp.path(), 1, b"state").unwrap();
        install(tmp.path()).unwrap();
        let path = tmp.path().join(FILE_NAME);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read(tmp.path()),
            Err(SnapshotError::Damaged { .. })
        ));
    }
}
