//! lazyfs really loses what was not fsynced, keeps what was, and RocksDB on it survives
//! kill -9 plus a drop with every synced write intact.
//!
//! Needs root and /dev/fuse; elsewhere each test says why and skips.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rocketraft_jepsen::lazyfs::process::LazyFsProcess;

fn unavailable() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("mounting FUSE needs root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    None
}

struct Mounted {
    _dir: tempfile::TempDir,
    fs: LazyFsProcess,
    backing: PathBuf,
    mount: PathBuf,
}

fn mount() -> Result<Mounted> {
    let dir = tempfile::tempdir()?;
    let backing = dir.path().join("backing");
    let mount = dir.path().join("data");
    let fs = LazyFsProcess::start(
        Path::new(env!("CARGO_BIN_EXE_rocketraft-jepsen")),
        &backing,
        &mount,
        &dir.path().join("lazyfs.log"),
    )?;
    Ok(Mounted {
        _dir: dir,
        fs,
        backing,
        mount,
    })
}

fn read(path: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    File::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .read_to_end(&mut out)?;
    Ok(out)
}

#[test]
fn unsynced_writes_are_lost_and_synced_writes_kept() -> Result<()> {
    if let Some(why) = unavailable() {
        eprintln!("SKIPPED: {why}");
        return Ok(());
    }
    let mut m = mount()?;
    let never = m.mount.join("never-synced");
    let synced = m.mount.join("synced");
    {
        File::create(&never)?.write_all(b"gone after the drop")?;
        let mut f = File::create(&synced)?;
        f.write_all(b"kept")?;
        f.sync_data()?;
        f.write_all(b" but not this tail")?;
        // A rename is a namespace change: it happens at once, and the unsynced data moves
        // with the file.
        fs::create_dir(m.mount.join("dir"))?;
        File::create(m.mount.join("dir/tmp"))?.write_all(b"renamed, unsynced")?;
        fs::rename(m.mount.join("dir/tmp"), m.mount.join("dir/final"))?;
    }
    // Before the drop, readers see everything written.
    assert_eq!(read(&synced)?, b"kept but not this tail");
    assert_eq!(read(&never)?, b"gone after the drop");
    assert_eq!(read(&m.mount.join("dir/final"))?, b"renamed, unsynced");
    // ... while the backing directory only has what was synced.
    assert_eq!(read(&m.backing.join("synced"))?, b"kept");
    assert_eq!(read(&m.backing.join("never-synced"))?, b"");

    let report = m.fs.drop_unsynced()?;
    assert!(report.bytes >= 19 + 18 + 17, "{report:?}");
    let names: Vec<&str> = report.files.iter().map(|(p, _)| p.as_str()).collect();
    for f in ["never-synced", "synced", "dir/final"] {
        assert!(names.contains(&f), "{f} missing from {report:?}");
    }

    assert_eq!(read(&synced)?, b"kept");
    assert_eq!(
        read(&never)?,
        b"",
        "a never-synced file keeps its name, not its data"
    );
    assert_eq!(read(&m.mount.join("dir/final"))?, b"");
    assert_eq!(fs::metadata(&synced)?.len(), 4);

    // A truncate is unsynced too, and the file syncs whole once fsynced.
    {
        let f = OpenOptions::new().write(true).open(&synced)?;
        f.set_len(2)?;
    }
    assert_eq!(read(&synced)?, b"ke");
    m.fs.drop_unsynced()?;
    assert_eq!(read(&synced)?, b"kept");
    {
        let mut f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&synced)?;
        f.write_all(b"new")?;
        f.sync_all()?;
    }
    let report = m.fs.drop_unsynced()?;
    assert_eq!(report.bytes, 0, "{report:?}");
    assert_eq!(read(&synced)?, b"new");
    Ok(())
}

/// Not a test on its own: the RocksDB writer that `rocksdb_survives_kill_and_drop` runs
/// as a child process and kills. It writes keys `k<i>` with `sync = true`, printing `synced
/// <i>` once each write returned, then `u<j>` keys without sync, prints `unsynced done` and
/// waits to be killed.
#[test]
#[ignore]
fn rocksdb_writer_child() -> Result<()> {
    let Ok(dir) = std::env::var("LAZYFS_TEST_DB") else {
        return Ok(());
    };
    let synced: u64 = std::env::var("LAZYFS_TEST_SYNCED")?.parse()?;
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    let db = rocksdb::DB::open(&opts, &dir)?;
    let mut sync = rocksdb::WriteOptions::default();
    sync.set_sync(true);
    let mut lazy = rocksdb::WriteOptions::default();
    lazy.set_sync(false);
    let out = std::io::stdout();
    for i in 0..synced {
        db.put_opt(format!("k{i}"), format!("value {i}"), &sync)?;
        writeln!(out.lock(), "synced {i}")?;
    }
    for j in 0..200 {
        db.put_opt(format!("u{j}"), format!("unsynced {j}"), &lazy)?;
    }
    writeln!(out.lock(), "unsynced done")?;
    out.lock().flush()?;
    std::thread::sleep(Duration::from_secs(120));
    bail!("the parent should have killed this writer");
}

#[test]
fn rocksdb_survives_kill_and_drop_with_synced_writes_intact() -> Result<()> {
    if let Some(why) = unavailable() {
        eprintln!("SKIPPED: {why}");
        return Ok(());
    }
    let mut m = mount()?;
    let db_dir = m.mount.join("db");
    let synced = 300u64;
    for round in 0..2 {
        // Round 2 reopens the database that round 1's drop left behind.
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "--ignored",
                "--exact",
                "rocksdb_writer_child",
                "--nocapture",
            ])
            .env("LAZYFS_TEST_DB", &db_dir)
            .env("LAZYFS_TEST_SYNCED", synced.to_string())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut acked = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .context("the writer did not finish its writes in time")?;
            if let Some(i) = line.strip_prefix("synced ") {
                acked = Some(i.parse::<u64>()?);
            }
            if line == "unsynced done" {
                break;
            }
        }
        child.kill()?;
        child.wait()?;
        let report = m.fs.drop_unsynced()?;
        // The unsynced writes sat in the WAL's tail: that is what the drop must take.
        ensure!(
            report
                .files
                .iter()
                .any(|(p, b)| p.ends_with(".log") && *b > 0),
            "round {round}: the drop lost no WAL bytes: {report:?}"
        );

        let db = rocksdb::DB::open_default(&db_dir)
            .with_context(|| format!("round {round}: reopening RocksDB after the drop"))?;
        let acked = acked.context("no synced write acknowledged")?;
        assert_eq!(acked, synced - 1);
        for i in 0..=acked {
            let v = db.get(format!("k{i}"))?;
            assert_eq!(
                v.as_deref(),
                Some(format!("value {i}").as_bytes()),
                "round {round}: synced key k{i} lost"
            );
        }
        let survivors = (0..200)
            .filter(|j| matches!(db.get(format!("u{j}")), Ok(Some(_))))
            .count();
        assert_eq!(
            survivors, 0,
            "round {round}: unsynced writes survived the drop"
        );
    }
    Ok(())
}
