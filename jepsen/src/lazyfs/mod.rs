//! lazyfs: a FUSE passthrough filesystem that loses unfsynced writes on command, the
//! storage half of a simulated power loss.
//!
//! Each broker node's data directory is a lazyfs mount over a backing directory. Written
//! data stays in the daemon's memory until the file is fsynced; `SIGUSR1` forgets all of
//! it at once (the harness sends it while the node is killed), as a power loss would. See
//! [`fs`] for what is lazy (file data and sizes) and what is not (names and directories).
//!
//! - [`overlay`]: one file's unsynced data over its backing file;
//! - `fs`: the FUSE operations;
//! - [`process`]: the harness's handle on a lazyfs process;
//! - [`serve`]: the `rocketraft-jepsen lazyfs <backing> <mount>` subcommand.
//!
//! Control: `SIGUSR1` drops unsynced data; `SIGTERM`/`SIGINT` unmount and exit. After every
//! drop the daemon rewrites its status file ([`Status`], JSON) with what it dropped, so the
//! harness can tell that the drop happened and whether it lost anything.

mod fs;
pub mod overlay;
pub mod process;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result};
use fuser::{Config, INodeNo, MountOption};
use nix::sys::signal::{SigSet, Signal};
use serde::{Deserialize, Serialize};

pub use fs::DropReport;
use fs::{LazyFs, State};

/// What the daemon reports in its status file.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub pid: u32,
    /// The filesystem is mounted and serving.
    pub mounted: bool,
    /// Drops done so far.
    pub drops: u64,
    /// What the latest drop lost.
    pub last_drop: Option<DropReport>,
    /// Bytes written into backing files by fsync since the mount.
    pub synced_bytes: u64,
}

/// Mounts `backing` at `mount` and serves until `SIGTERM` or `SIGINT`. With
/// `ignore_fsync`, fsync syncs nothing (a disk that lies), to check that the harness notices.
pub fn serve(
    backing: &Path,
    mount: &Path,
    status_path: Option<&Path>,
    ignore_fsync: bool,
) -> Result<()> {
    // Blocked before any thread starts, so every thread inherits the mask and only the
    // control loop below ever sees these signals.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGUSR1, Signal::SIGTERM, Signal::SIGINT] {
        signals.add(s);
    }
    signals.thread_block().context("blocking signals")?;

    std::fs::create_dir_all(backing)
        .with_context(|| format!("creating the backing directory {}", backing.display()))?;
    std::fs::create_dir_all(mount)
        .with_context(|| format!("creating the mount point {}", mount.display()))?;
    let root = backing.canonicalize()?;
    let state = Arc::new(Mutex::new(State::new(root, ignore_fsync)));
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("rocketraft-lazyfs".into()),
        MountOption::Subtype("lazyfs".into()),
    ];
    let session = fuser::spawn_mount(LazyFs::new(state.clone()), mount, &config)
        .with_context(|| format!("mounting lazyfs at {}", mount.display()))?;
    let notifier = session.notifier();

    let mut status = Status {
        pid: std::process::id(),
        mounted: true,
        ..Status::default()
    };
    write_status(status_path, &status)?;
    while signals.wait().context("waiting for a signal")? == Signal::SIGUSR1 {
        let (report, inodes) = state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drop_unsynced();
        // The kernel may still cache pages or sizes from before the drop; they
        // must not survive it. (Outside the state lock: the kernel may need a FUSE
        // request answered to invalidate.)
        for ino in inodes {
            let _ = notifier.inval_inode(INodeNo(ino), 0, 0);
        }
        eprintln!(
            "lazyfs: dropped {} unsynced bytes in {} files",
            report.bytes,
            report.files.len()
        );
        status.drops += 1;
        status.last_drop = Some(report);
        status.synced_bytes = state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .synced_bytes;
        write_status(status_path, &status)?;
    }
    // Detach: a process that still has a file open must not keep us from exiting. The
    // kernel ends the connection when the last user goes or when our fd closes at exit.
    let _ = nix::mount::umount2(mount, nix::mount::MntFlags::MNT_DETACH);
    status.mounted = false;
    write_status(status_path, &status)?;
    drop(session);
    Ok(())
}

/// Written whole and renamed into place, so a reader never sees half a status.
fn write_status(path: Option<&Path>, status: &Status) -> Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(status)?)?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}
