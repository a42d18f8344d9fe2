//! CI's jepsen smoke suite: `rocketraft-jepsen suite smoke` (the log workload under kill,
//! pause, partition, all three mixed, NATS's pause-kill with lost unfsynced writes, and
//! broker<->nameserver partitions with two nameservers; the register workload under
//! partitions; the group and dedup workloads; one run each on a 3-node group in network
//! namespaces) must pass.
//!
//! Needs root for the namespaces and /dev/fuse for lazyfs; elsewhere it says why and skips.
//! `ROCKETRAFT_JEPSEN_TIME` sets the seconds of faults per run (default 45).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn smoke_suite_passes() -> anyhow::Result<()> {
    if let Some(why) = rocketraft_jepsen::netns::unavailable() {
        eprintln!("SKIPPED: {why}");
        return Ok(());
    }
    if !std::path::Path::new("/dev/fuse").exists() {
        eprintln!("SKIPPED: /dev/fuse is missing (the pause-kill run needs lazyfs)");
        return Ok(());
    }
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_rocketraft-jepsen"));
    // Cargo puts every workspace binary in one directory; the broker is built with the
    // workspace's tests.
    let broker = exe.with_file_name("rocketraft-broker");
    for bin in [&broker, &exe.with_file_name("rocketraft-nameserver")] {
        anyhow::ensure!(
            bin.is_file(),
            "{} is missing: build with `cargo build --workspace`",
            bin.display()
        );
    }
    let out = tempfile::tempdir()?;
    let time = std::env::var("ROCKETRAFT_JEPSEN_TIME").unwrap_or_else(|_| "45".into());
    let status = Command::new(&exe)
        .args(["suite", "smoke", "--time-limit", &time, "--seed", "1"])
        .arg("--out")
        .arg(out.path())
        .arg("--broker-bin")
        .arg(&broker)
        .status()?;
    if !status.success() {
        // Keep the run directories for the post-mortem.
        let kept = out.keep();
        anyhow::bail!(
            "smoke suite exited with {status}; runs kept in {}",
            kept.display()
        );
    }
    Ok(())
}
