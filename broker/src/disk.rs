//! Refusing writes before a disk fills up.
//!
//! A node whose Raft log or state machine cannot write stops its Raft core (openraft treats
//! storage errors as fatal), so the group must stop taking messages before any member's
//! disk is full, not after. Every node samples the free space of its data directory; a
//! follower that is low tells the leader (`ReportDisk`); the leader refuses new messages
//! (sends, appends, scheduled and transactional messages) while its own disk or any
//! member's recent report is below `disk_min_free_bytes`. Consumption (receives, acks) keeps
//! working: its entries are small and it is how space is eventually given back. When space
//! returns, the next sample lifts the refusal.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use rocketraft_proto::admin as pb;
use tokio::time::Instant;

use crate::proposer::Proposer;

/// How often each node looks at its free space.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(500);
/// A follower's "low" report counts for this long unless renewed.
const REPORT_TTL: Duration = Duration::from_secs(3);

pub struct DiskGuard {
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// Below this many free bytes, writes are refused.
    pub min_free_bytes: u64,
    /// This node's last sample: free bytes (None before the first sample or if it failed).
    own_free: Mutex<Option<u64>>,
    /// Members that reported low space: node -> (free bytes, when).
    reported_low: Mutex<HashMap<u64, (u64, Instant)>>,
}

fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let s = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    // Blocks available to unprivileged users, as the broker need not run as root.
    Ok(s.blocks_available().saturating_mul(s.fragment_size()))
}

impl DiskGuard {
    pub fn new(node_id: u64, data_dir: PathBuf, min_free_bytes: u64) -> Self {
        Self {
            node_id,
            data_dir,
            min_free_bytes,
            own_free: Mutex::new(None),
            reported_low: Mutex::new(HashMap::new()),
        }
    }

    /// Samples this node's free space now; returns it.
    pub fn sample(&self) -> Option<u64> {
        let free = match free_bytes(&self.data_dir) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(dir = %self.data_dir.display(), "reading free disk space: {e}");
                None
            }
        };
        *self.own_free.lock().expect("lock poisoned") = free;
        free
    }

    fn is_low(&self, free: u64) -> bool {
        free < self.min_free_bytes
    }

    /// A member's report, received by the leader.
    pub fn record_report(&self, node_id: u64, free: u64, low: bool) {
        let mut reported = self.reported_low.lock().expect("lock poisoned");
        if low {
            reported.insert(node_id, (free, Instant::now()));
        } else {
            reported.remove(&node_id);
        }
    }

    /// `Err(why)` while new messages must be refused (asked on the leader).
    pub fn writable(&self) -> Result<(), String> {
        let limit = self.min_free_bytes;
        if let Some(free) = *self.own_free.lock().expect("lock poisoned")
            && self.is_low(free)
        {
            return Err(format!(
                "disk nearly full on node {} ({}): {} MiB free, below disk_min_free_bytes ({} MiB); \
                 new messages are refused until space returns",
                self.node_id,
                self.data_dir.display(),
                free >> 20,
                limit >> 20
            ));
        }
        let reported = self.reported_low.lock().expect("lock poisoned");
        if let Some((node, (free, _))) = reported
            .iter()
            .find(|(_, (_, at))| at.elapsed() < REPORT_TTL)
        {
            return Err(format!(
                "disk nearly full on node {node}: {} MiB free, below disk_min_free_bytes ({} MiB); \
                 new messages are refused until space returns",
                free >> 20,
                limit >> 20
            ));
        }
        Ok(())
    }

    /// Samples every [`SAMPLE_INTERVAL`]; on a follower, tells the leader while low (and
    /// once when no longer low), until `stop`.
    pub async fn run(
        self: std::sync::Arc<Self>,
        raft: rocketraft_raft_store::Raft,
        proposer: Proposer,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut was_low = false;
        loop {
            if let Some(free) = self.sample() {
                let low = self.is_low(free);
                if low != was_low {
                    if low {
                        tracing::warn!(
                            free_mib = free >> 20,
                            "disk nearly full: refusing new messages"
                        );
                    } else {
                        tracing::info!(
                            free_mib = free >> 20,
                            "disk space is back: taking messages again"
                        );
                    }
                }
                if let Some(addr) = crate::proposer::leader_addr_elsewhere(&raft)
                    && (low || was_low)
                    && let Ok(mut c) = proposer.client(&addr)
                {
                    let report = pb::ReportDiskRequest {
                        node_id: self.node_id,
                        free_bytes: free,
                        low,
                    };
                    if let Err(e) = c.report_disk(report).await {
                        tracing::debug!("reporting disk space to the leader: {}", e.message());
                    }
                }
                was_low = low;
            }
            tokio::select! {
                _ = tokio::time::sleep(SAMPLE_INTERVAL) => {}
                _ = stop.changed() => return,
            }
        }
    }
}
