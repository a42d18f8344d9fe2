//! What the kernel says about a cell: CPU time of the server processes and of this client
//! (utime+stime from `/proc/PID/stat`), their peak RSS (`VmHWM`, reset before each cell
//! through `/proc/PID/clear_refs`), the bytes they wrote (`/proc/PID/io`), the disk's flush
//! requests (`/sys/block/DEV/stat` field 16) and the machine's busy cores (`/proc/stat`).
//!
//! Flushes are counted for the whole device: they prove the durability mode (each fsync
//! becomes at least one flush) only when nothing else writes, which is why benchmarks run
//! under the heavy lock and the machine's busy cores are recorded beside our own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// The processes and the device a cell watches.
#[derive(Debug, Clone)]
pub struct Watched {
    /// The system's server processes (the 3 nodes).
    pub servers: Vec<u32>,
    /// Helpers counted apart (rocketraft's nameserver).
    pub aux: Vec<u32>,
    /// `/sys/block/<dev>/stat` of the device holding the data dirs, if found.
    pub disk_stat: Option<PathBuf>,
}

impl Watched {
    pub fn new(servers: Vec<u32>, aux: Vec<u32>, data_dir: Option<&Path>) -> anyhow::Result<Self> {
        for pid in servers.iter().chain(&aux) {
            anyhow::ensure!(
                Path::new(&format!("/proc/{pid}/stat")).exists(),
                "--server-pids/--aux-pids: process {pid} does not exist"
            );
        }
        let disk_stat = match data_dir {
            Some(d) => Some(disk_stat_of(d)?),
            None => None,
        };
        Ok(Self {
            servers,
            aux,
            disk_stat,
        })
    }

    /// The device's name, e.g. `vda`.
    pub fn disk_name(&self) -> Option<String> {
        let stat = self.disk_stat.as_ref()?;
        stat.parent()?.file_name()?.to_str().map(str::to_string)
    }

    /// Resets each server's peak RSS to its current RSS, so the cell's `VmHWM` is its own.
    /// Best effort: a kernel without it leaves the peak since start.
    pub fn reset_peaks(&self) {
        for pid in &self.servers {
            let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
    }

    pub fn sample(&self) -> anyhow::Result<Sample> {
        Ok(Sample {
            at: Instant::now(),
            server_cpu_ticks: self
                .servers
                .iter()
                .map(|p| cpu_ticks(&format!("/proc/{p}/stat")))
                .sum::<anyhow::Result<u64>>()?,
            aux_cpu_ticks: self
                .aux
                .iter()
                .map(|p| cpu_ticks(&format!("/proc/{p}/stat")))
                .sum::<anyhow::Result<u64>>()?,
            client_cpu_ticks: cpu_ticks("/proc/self/stat")?,
            server_write_bytes: self
                .servers
                .iter()
                .map(|p| write_bytes(*p))
                .sum::<anyhow::Result<u64>>()?,
            disk_flushes: match &self.disk_stat {
                Some(p) => Some(disk_flushes(p)?),
                None => None,
            },
            machine: machine_ticks()?,
        })
    }

    /// Peak and current RSS of each server, in MiB.
    pub fn memory(&self) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
        let mut peak = Vec::new();
        let mut now = Vec::new();
        for pid in &self.servers {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .with_context(|| format!("reading /proc/{pid}/status"))?;
            peak.push(status_kib(&status, "VmHWM:").unwrap_or(0) as f64 / 1024.0);
            now.push(status_kib(&status, "VmRSS:").unwrap_or(0) as f64 / 1024.0);
        }
        Ok((peak, now))
    }
}

/// One reading of every counter.
#[derive(Debug, Clone)]
pub struct Sample {
    at: Instant,
    server_cpu_ticks: u64,
    aux_cpu_ticks: u64,
    client_cpu_ticks: u64,
    server_write_bytes: u64,
    disk_flushes: Option<u64>,
    /// (busy, total) jiffies over all CPUs.
    machine: (u64, u64),
}

/// What happened between two samples.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Usage {
    pub seconds: f64,
    pub server_cpu_s: f64,
    pub aux_cpu_s: f64,
    pub client_cpu_s: f64,
    pub server_write_bytes: u64,
    pub disk_flushes: Option<u64>,
    /// Cores busy on the whole machine, on average.
    pub busy_cores: f64,
    /// Cores used by the benchmark's own processes (servers, helpers, this client).
    pub bench_cores: f64,
}

impl Sample {
    pub fn until(&self, later: &Sample) -> Usage {
        let tick = ticks_per_s();
        let seconds = later
            .at
            .saturating_duration_since(self.at)
            .max(Duration::from_micros(1))
            .as_secs_f64();
        let server_cpu_s =
            later.server_cpu_ticks.saturating_sub(self.server_cpu_ticks) as f64 / tick;
        let aux_cpu_s = later.aux_cpu_ticks.saturating_sub(self.aux_cpu_ticks) as f64 / tick;
        let client_cpu_s =
            later.client_cpu_ticks.saturating_sub(self.client_cpu_ticks) as f64 / tick;
        let busy = later.machine.0.saturating_sub(self.machine.0) as f64 / tick;
        Usage {
            seconds,
            server_cpu_s,
            aux_cpu_s,
            client_cpu_s,
            server_write_bytes: later
                .server_write_bytes
                .saturating_sub(self.server_write_bytes),
            disk_flushes: match (self.disk_flushes, later.disk_flushes) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            },
            busy_cores: busy / seconds,
            bench_cores: (server_cpu_s + aux_cpu_s + client_cpu_s) / seconds,
        }
    }
}

fn ticks_per_s() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat`.
fn cpu_ticks(path: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    parse_cpu_ticks(&text).with_context(|| format!("parsing {path}"))
}

fn parse_cpu_ticks(stat: &str) -> anyhow::Result<u64> {
    // The command name (field 2) is in parentheses and may hold spaces: count from the
    // last ')'. After it come field 3 (state) onwards.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no ')' after the command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3, so utime (14) is fields[11] and stime (15) fields[12].
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

fn write_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/io");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .context("no write_bytes")?
        .trim()
        .parse()
        .with_context(|| format!("parsing write_bytes of {path}"))
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Field 16 of a block device's stat file: flush requests completed.
fn disk_flushes(stat: &Path) -> anyhow::Result<u64> {
    let text =
        std::fs::read_to_string(stat).with_context(|| format!("reading {}", stat.display()))?;
    parse_flushes(&text).with_context(|| format!("parsing {}", stat.display()))
}

fn parse_flushes(text: &str) -> anyhow::Result<u64> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    if fields.len() < 16 {
        bail!(
            "{} fields, the flush count is field 16 (kernel >= 5.5)",
            fields.len()
        );
    }
    Ok(fields[15].parse()?)
}

/// (busy, total) jiffies from the `cpu` line of `/proc/stat`; idle and iowait are not busy.
fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_machine(&text)
}

fn parse_machine(text: &str) -> anyhow::Result<(u64, u64)> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user already).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok((total.saturating_sub(idle), total))
}

/// The whole-disk stat file of the device holding `dir`: from the directory's device
/// number through `/sys/dev/block/MAJ:MIN`; a partition's counters are its disk's.
fn disk_stat_of(dir: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir)
        .with_context(|| format!("--data-dir {}", dir.display()))?
        .dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    let real = std::fs::canonicalize(&sys).with_context(|| {
        format!(
            "--data-dir {} is on device {major}:{minor}, which has no {} (not a block device: tmpfs, overlay?)",
            dir.display(),
            sys.display()
        )
    })?;
    let disk = if real.join("partition").exists() {
        real.parent()
            .context("a partition without a disk")?
            .to_path_buf()
    } else {
        real
    };
    let name = disk.file_name().context("device without a name")?;
    Ok(PathBuf::from("/sys/block").join(name).join("stat"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_even_with_spaces_in_the_name() {
        let stat = "4242 (beam.smp x) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 30 0 100 0 0";
        assert_eq!(parse_cpu_ticks(stat).expect("parses"), 300);
    }

    #[test]
    fn flushes_are_field_16() {
        let line = "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 777 17";
        assert_eq!(parse_flushes(line).expect("parses"), 777);
        assert!(parse_flushes("1 2 3").is_err());
    }

    #[test]
    fn busy_excludes_idle_and_iowait() {
        let text = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n";
        assert_eq!(parse_machine(text).expect("parses"), (150, 1000));
    }

    #[test]
    fn this_process_can_be_sampled() {
        let w = Watched::new(vec![std::process::id()], vec![], None).expect("watch self");
        let a = w.sample().expect("sample");
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        let u = a.until(&w.sample().expect("sample"));
        assert!(u.seconds > 0.0);
        let (peak, now) = w.memory().expect("memory");
        assert!(peak[0] > 0.0 && now[0] > 0.0);
    }
}
