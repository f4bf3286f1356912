//! The refusal horizon: where a failed flush left the audit log.
//!
//! When a flush fails, the writes it covered were refused ("nothing was
//! changed"), yet sled may already have put some of their bytes on disk and
//! would recover them on the next start. So the flusher records the last
//! sequence that *was* acknowledged in this small file, and the next start
//! rolls the log and its derived records back to it (`Store::open`).
//!
//! The file is written at its full size when the store opens, so recording a
//! horizon overwrites blocks that already exist: it still works when the
//! failure was a full disk.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

pub const FILE_NAME: &str = "refusal-horizon";
const SIZE: u64 = 4096;
const MAGIC: &[u8; 8] = b"PGHRZN01";

pub struct Horizon {
    file: File,
}

/// The recorded horizon of the store in `dir`, read without creating or
/// writing anything (for offline tools); `None` if there is none, also when
/// the file is missing or shorter than a horizon.
pub fn peek(dir: &Path) -> std::io::Result<Option<u64>> {
    let mut buf = [0u8; 16];
    match File::open(dir.join(FILE_NAME)).and_then(|mut f| f.read_exact(&mut buf)) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    }
    let (magic, seq) = buf.split_at(8);
    Ok((magic == MAGIC).then(|| u64::from_be_bytes(seq.try_into().unwrap_or([0; 8]))))
}

impl Horizon {
    /// Opens (creating and sizing it if needed) the horizon file in `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Horizon> {
        let path = dir.join(FILE_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if file.metadata()?.len() < SIZE {
            // Written, not `set_len`: a sparse file would need new blocks
            // exactly when the disk has none left.
            let mut f = &file;
            f.write_all(&[0u8; SIZE as usize])?;
            file.sync_all()?;
            File::open(dir)?.sync_all()?;
        }
        Ok(Horizon { file })
    }

    /// The recorded horizon, if a flush failed since it was last cleared.
    pub fn read(&mut self) -> std::io::Result<Option<u64>> {
        let mut buf = [0u8; 16];
        self.file.seek(SeekFrom::Start(0))?;
        self.file.read_exact(&mut buf)?;
        let (magic, seq) = buf.split_at(8);
        Ok((magic == MAGIC).then(|| u64::from_be_bytes(seq.try_into().unwrap_or([0; 8]))))
    }

    /// Records that nothing after `sequence` was acknowledged.
    pub fn record(&mut self, sequence: u64) -> std::io::Result<()> {
        let mut buf = [0u8; 16];
        buf[..8].copy_from_slice(MAGIC);
        buf[8..].copy_from_slice(&sequence.to_be_bytes());
        self.write(&buf)
    }

    /// Forgets the horizon once the log has been rolled back to it.
    pub fn clear(&mut self) -> std::io::Result<()> {
        self.write(&[0u8; 16])
    }

    fn write(&mut self, buf: &[u8; 16]) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(buf)?;
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_horizon_survives_reopening_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = Horizon::open(dir.path()).unwrap();
        assert_eq!(h.read().unwrap(), None);
        h.record(41).unwrap();
        drop(h);
        let mut h = Horizon::open(dir.path()).unwrap();
        assert_eq!(h.read().unwrap(), Some(41));
        assert_eq!(peek(dir.path()).unwrap(), Some(41));
        h.clear().unwrap();
        assert_eq!(peek(dir.path()).unwrap(), None);
        assert_eq!(Horizon::open(dir.path()).unwrap().read().unwrap(), None);
        assert_eq!(
            std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len(),
            SIZE
        );
    }
}
