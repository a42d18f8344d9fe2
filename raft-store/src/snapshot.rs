//! The snapshot file: a consistent dump of the state machine's column families.
//!
//! ```text
//! "RRSNAP01"                      magic and format version
//! u32 len, bincode SnapshotMeta   which log id and membership the dump reflects
//! { u8 cf (>= 1), u32 len, key, u32 len, value }*
//! u8 0, u64 record count, u32 crc32 of every byte before the crc
//! ```
//!
//! The whole file is what openraft streams to a lagging follower in chunks; the follower
//! verifies the checksum before it touches its state.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};

use crate::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"RRSNAP01";
/// A key or value longer than this means a corrupt file (our largest value is one message).
const FIELD_BYTES_MAX: u32 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("snapshot io: {0}")]
    Io(#[from] std::io::Error),
    #[error("snapshot is corrupt: {0}")]
    Corrupt(String),
}

fn corrupt(msg: impl Into<String>) -> SnapshotFileError {
    SnapshotFileError::Corrupt(msg.into())
}

/// Writes records and keeps the running checksum.
pub struct SnapshotWriter {
    out: BufWriter<File>,
    crc: crc32fast::Hasher,
    records: u64,
}

impl SnapshotWriter {
    pub fn new(file: File, meta: &SnapshotMeta) -> Result<Self, SnapshotFileError> {
        let mut w = Self {
            out: BufWriter::with_capacity(1 << 20, file),
            crc: crc32fast::Hasher::new(),
            records: 0,
        };
        let meta_bytes = bincode::serialize(meta).map_err(|e| corrupt(e.to_string()))?;
        w.write(MAGIC)?;
        w.write(&(meta_bytes.len() as u32).to_le_bytes())?;
        w.write(&meta_bytes)?;
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), SnapshotFileError> {
        self.crc.update(bytes);
        self.out.write_all(bytes)?;
        Ok(())
    }

    pub fn record(&mut self, cf: u8, key: &[u8], value: &[u8]) -> Result<(), SnapshotFileError> {
        assert!(cf >= 1, "cf 0 marks the end of the records");
        self.write(&[cf])?;
        self.write(&(key.len() as u32).to_le_bytes())?;
        self.write(key)?;
        self.write(&(value.len() as u32).to_le_bytes())?;
        self.write(value)?;
        self.records += 1;
        Ok(())
    }

    /// Writes the trailer and fsyncs the file.
    pub fn finish(mut self) -> Result<(), SnapshotFileError> {
        self.write(&[0])?;
        let count = self.records.to_le_bytes();
        self.write(&count)?;
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(())
    }
}

/// One record: column family number, key, value.
pub type Record = (u8, Vec<u8>, Vec<u8>);

/// Reads a snapshot file record by record, checking the trailer at the end.
pub struct SnapshotReader {
    input: BufReader<File>,
    crc: crc32fast::Hasher,
    records: u64,
    pub meta: SnapshotMeta,
}

impl SnapshotReader {
    pub fn open(file: File) -> Result<Self, SnapshotFileError> {
        let mut r = Self {
            input: BufReader::with_capacity(1 << 20, file),
            crc: crc32fast::Hasher::new(),
            records: 0,
            meta: SnapshotMeta::default(),
        };
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(corrupt(
                "bad magic: not a rocketraft snapshot of this format",
            ));
        }
        let meta_bytes = r.read_field()?;
        r.meta = bincode::deserialize(&meta_bytes).map_err(|e| corrupt(format!("meta: {e}")))?;
        Ok(r)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), SnapshotFileError> {
        self.input.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                corrupt("truncated")
            } else {
                e.into()
            }
        })?;
        self.crc.update(buf);
        Ok(())
    }

    fn read_field(&mut self) -> Result<Vec<u8>, SnapshotFileError> {
        let mut len = [0u8; 4];
        self.read_exact(&mut len)?;
        let len = u32::from_le_bytes(len);
        if len > FIELD_BYTES_MAX {
            return Err(corrupt(format!(
                "field of {len} bytes exceeds {FIELD_BYTES_MAX}"
            )));
        }
        let mut buf = vec![0u8; len as usize];
        self.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// The next record, or `None` after a verified trailer.
    pub fn next_record(&mut self) -> Result<Option<Record>, SnapshotFileError> {
        let mut cf = [0u8; 1];
        self.read_exact(&mut cf)?;
        if cf[0] == 0 {
            let mut count = [0u8; 8];
            self.read_exact(&mut count)?;
            let expected_crc = self.crc.clone().finalize();
            let mut crc = [0u8; 4];
            self.input
                .read_exact(&mut crc)
                .map_err(|_| corrupt("truncated trailer"))?;
            if u32::from_le_bytes(crc) != expected_crc {
                return Err(corrupt("checksum mismatch"));
            }
            if u64::from_le_bytes(count) != self.records {
                return Err(corrupt("record count mismatch"));
            }
            return Ok(None);
        }
        let key = self.read_field()?;
        let value = self.read_field()?;
        self.records += 1;
        Ok(Some((cf[0], key, value)))
    }

    /// Reads to the end and checks the trailer without keeping anything.
    pub fn verify(mut self) -> Result<SnapshotMeta, SnapshotFileError> {
        while self.next_record()?.is_some() {}
        Ok(self.meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom};

    #[test]
    fn roundtrip_and_detects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let meta = SnapshotMeta {
            snapshot_id: "x".into(),
            ..Default::default()
        };
        let mut w = SnapshotWriter::new(File::create(&path).unwrap(), &meta).unwrap();
        w.record(1, b"k1", b"v1").unwrap();
        w.record(2, b"k2", &[7u8; 1000]).unwrap();
        w.finish().unwrap();

        let mut r = SnapshotReader::open(File::open(&path).unwrap()).unwrap();
        assert_eq!(r.meta.snapshot_id, "x");
        assert_eq!(
            r.next_record().unwrap(),
            Some((1, b"k1".to_vec(), b"v1".to_vec()))
        );
        assert_eq!(r.next_record().unwrap().unwrap().2.len(), 1000);
        assert_eq!(r.next_record().unwrap(), None);

        // Flip one byte of a value: the checksum must catch it.
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        f.seek(SeekFrom::Start(60)).unwrap();
        f.write_all(&[0xAB]).unwrap();
        drop(f);
        let err = SnapshotReader::open(File::open(&path).unwrap()).and_then(|r| r.verify());
        assert!(err.is_err());

        // Truncation too.
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(40).unwrap();
        let err = SnapshotReader::open(File::open(&path).unwrap()).and_then(|r| r.verify());
        assert!(matches!(err, Err(SnapshotFileError::Corrupt(_))), "{err:?}");
    }
}
