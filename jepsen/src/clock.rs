//! Per-node clock skew through libfaketime.
//!
//! Each broker runs with libfaketime preloaded and reads its wall-clock offset from a file
//! of its own (`FAKETIME_TIMESTAMP_FILE`, re-read on every call with `FAKETIME_NO_CACHE`).
//! Only the wall clock moves: `CLOCK_MONOTONIC` stays real (`FAKETIME_DONT_FAKE_MONOTONIC`),
//! so tokio's timers, openraft's elections and leases are untouched, and what the skew
//! reaches is exactly where the product reads wall time: the store timestamps the leader
//! stamps, delay and transaction-check deadlines, retention cut-offs. File times (`stat`)
//! are not faked (`NO_FAKE_STAT`), so RocksDB's file bookkeeping sees real times.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

/// Where Debian's `libfaketime` package puts the thread-safe build of the library.
const LIBFAKETIME: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
];

/// The libfaketime library, or why there is none.
pub fn library() -> Result<PathBuf> {
    LIBFAKETIME
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("libfaketime is not installed (scripts/setup.sh installs the faketime package)")
}

/// The harness's own wall clock in ms since the epoch (never skewed: only brokers run
/// with libfaketime).
pub fn real_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One node's clock: the offset file its broker's libfaketime reads.
#[derive(Debug, Clone)]
pub struct NodeClock {
    file: PathBuf,
}

impl NodeClock {
    /// Creates the offset file at `file`, with no offset.
    pub fn create(file: PathBuf) -> Result<Self> {
        let c = Self { file };
        c.set_offset_ms(0)?;
        Ok(c)
    }

    /// Moves the node's wall clock `offset_ms` away from real time (negative: behind).
    /// The file is replaced whole, so the broker never reads half an offset.
    pub fn set_offset_ms(&self, offset_ms: i64) -> Result<()> {
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, spec(offset_ms))?;
        std::fs::rename(&tmp, &self.file)
            .with_context(|| format!("writing {}", self.file.display()))
    }

    /// Environment that makes a broker follow this clock.
    pub fn apply(&self, cmd: &mut Command, library: &Path, program: &Path) {
        cmd.env("LD_PRELOAD", library)
            .env("FAKETIME_TIMESTAMP_FILE", &self.file)
            .env("FAKETIME_NO_CACHE", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env("NO_FAKE_STAT", "1");
        // Only the broker: `ip netns exec`, which starts it, needs no fake time.
        if let Some(name) = program.file_name() {
            cmd.env("FAKETIME_ONLY_CMDS", name);
        }
    }
}

/// libfaketime's relative offset syntax: seconds with a sign, fractions allowed.
fn spec(offset_ms: i64) -> String {
    let sign = if offset_ms < 0 { '-' } else { '+' };
    let abs = offset_ms.unsigned_abs();
    format!("{sign}{}.{:03}\n", abs / 1000, abs % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_use_faketime_syntax() {
        assert_eq!(spec(0), "+0.000\n");
        assert_eq!(spec(90_500), "+90.500\n");
        assert_eq!(spec(-1_005), "-1.005\n");
    }
}
