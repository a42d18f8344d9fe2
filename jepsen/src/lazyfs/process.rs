//! The harness's handle on one lazyfs daemon: started before its node's broker, told to
//! drop unsynced data while the broker is down, stopped (and unmounted) at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{DropReport, Status};

/// Set to 1, lazyfs mounts ignore fsync (a disk that lies): the harness's self-test that
/// lost acknowledged writes are caught. Never set in real runs.
pub const IGNORE_FSYNC_ENV: &str = "ROCKETRAFT_JEPSEN_LAZYFS_IGNORE_FSYNC";

/// How long a mount or a drop may take before we call the daemon broken.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

pub struct LazyFsProcess {
    child: Option<Child>,
    mount: PathBuf,
    status: PathBuf,
}

impl LazyFsProcess {
    /// Starts `jepsen_bin lazyfs <backing> <mount>` and waits until it serves. Its stderr
    /// goes to `log`.
    pub fn start(jepsen_bin: &Path, backing: &Path, mount: &Path, log: &Path) -> Result<Self> {
        let status = mount.with_file_name(format!(
            "{}.lazyfs.json",
            mount
                .file_name()
                .map_or("mount".into(), |n| n.to_string_lossy())
        ));
        let _ = std::fs::remove_file(&status);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut cmd = Command::new(jepsen_bin);
        cmd.arg("lazyfs")
            .arg(backing)
            .arg(mount)
            .arg("--status")
            .arg(&status);
        if std::env::var(IGNORE_FSYNC_ENV).is_ok_and(|v| v == "1") {
            cmd.arg("--ignore-fsync");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting lazyfs at {}", mount.display()))?;
        let mut p = Self {
            child: Some(child),
            mount: mount.to_path_buf(),
            status,
        };
        p.wait_for(|s| s.mounted, "mounted")?;
        Ok(p)
    }

    pub fn status(&self) -> Result<Status> {
        let text = std::fs::read(&self.status)
            .with_context(|| format!("reading {}", self.status.display()))?;
        Ok(serde_json::from_slice(&text)?)
    }

    fn wait_for(&mut self, done: impl Fn(&Status) -> bool, what: &str) -> Result<Status> {
        let deadline = Instant::now() + CONTROL_TIMEOUT;
        loop {
            if let Ok(s) = self.status()
                && done(&s)
            {
                return Ok(s);
            }
            if let Some(c) = self.child.as_mut()
                && let Some(exit) = c.try_wait()?
            {
                bail!(
                    "lazyfs at {} exited ({exit}) before it {what}",
                    self.mount.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "lazyfs at {} not {what} within {CONTROL_TIMEOUT:?}",
                    self.mount.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Forgets every write not yet fsynced; returns what was lost. Only while nothing
    /// uses the mount (the node is killed): that is the power loss.
    pub fn drop_unsynced(&mut self) -> Result<DropReport> {
        let before = self.status()?.drops;
        let pid = self.child.as_ref().context("lazyfs is not running")?.id();
        kill(Pid::from_raw(pid as i32), Signal::SIGUSR1).context("signalling lazyfs")?;
        let s = self.wait_for(|s| s.drops > before, "dropped")?;
        Ok(s.last_drop.unwrap_or_default())
    }

    /// Unmounts and stops the daemon; if it does not go, kills it and detaches the mount.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = nix::mount::umount2(&self.mount, nix::mount::MntFlags::MNT_DETACH);
    }
}

impl Drop for LazyFsProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
