//! What a cell is, and the named plans: the cells run against one system in one round.
//!
//! The matrix is pruned around a base cell (1 KiB, 4 producers, window 1024, batch 1):
//! each other closed-loop cell varies one axis (size, producers, window, batch). Open-loop
//! and end-to-end cells run at fractions of the base cell's measured maximum, so every
//! system is loaded to the same fraction of its own capacity.

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::systems::SystemKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Closed loop: the maximum throughput at a concurrency.
    Closed,
    /// Open loop at a rate: latency from the intended send time.
    Open,
    /// Consume a backlog: fill it first, then measure receiving it.
    Drain,
    /// Produce (open loop) and consume at once: produce-to-deliver latency.
    E2e,
}

/// One cell's shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cell {
    /// Which axis this cell varies from the base ("base", "size", "producers", "window",
    /// "batch", "open", "e2e", "drain"); the report groups by it.
    pub axis: String,
    pub mode: Mode,
    /// Body bytes.
    pub size: usize,
    pub producers: usize,
    /// Requests under way per producer.
    pub window: usize,
    /// Messages per request (rocketraft only; 1 elsewhere).
    pub batch: usize,
    /// Messages to send (drain: the backlog).
    pub count: u64,
    /// Time bound of the measured phase.
    pub max_secs: f64,
    /// Open and e2e: the offered rate as a fraction of the base cell's msgs/s.
    pub rate_fraction: Option<f64>,
    /// Drain and e2e: subscribers.
    pub consumers: usize,
}

impl Cell {
    /// The key cells are compared by across systems and rounds.
    pub fn key(&self) -> String {
        let mode = format!("{:?}", self.mode).to_lowercase();
        let mut k = format!(
            "{mode} {} B, {}p x {}w x {}b",
            self.size, self.producers, self.window, self.batch
        );
        if let Some(f) = self.rate_fraction {
            k.push_str(&format!(" @{:.0}%", f * 100.0));
        }
        k
    }
}

/// Sizes of the named plans' cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanName {
    /// One cell: the base (1 KiB, 4 producers, window 1024), 20k messages.
    Ci,
    /// Every cell of the full plan with fewer messages each: proves the plan runs.
    Reduced,
    /// The matrix of docs/benchmarks.md: ~100k messages or 20 s per cell (16 KiB: 20k).
    Full,
}

/// Counts and bounds of a plan.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub count_small: u64,
    pub count_large: u64,
    pub max_secs: f64,
    pub drain: u64,
    pub drain_max_secs: f64,
}

impl PlanName {
    pub fn budget(self, drain_override: Option<u64>) -> Budget {
        let mut b = match self {
            PlanName::Ci => Budget {
                count_small: 20_000,
                count_large: 5_000,
                max_secs: 20.0,
                drain: 20_000,
                drain_max_secs: 60.0,
            },
            PlanName::Reduced => Budget {
                count_small: 20_000,
                count_large: 5_000,
                max_secs: 8.0,
                drain: 50_000,
                drain_max_secs: 60.0,
            },
            PlanName::Full => Budget {
                count_small: 100_000,
                count_large: 20_000,
                max_secs: 20.0,
                drain: 1_000_000,
                drain_max_secs: 300.0,
            },
        };
        if let Some(d) = drain_override {
            b.drain = d;
        }
        b
    }
}

pub const BASE_SIZE: usize = 1024;
pub const BASE_PRODUCERS: usize = 4;
pub const BASE_WINDOW: usize = 1024;
/// Subscribers in drain and e2e cells.
pub const CONSUMERS: usize = 4;

/// The cells of `plan` for `system`, in run order; the base cell comes first, because the
/// open-loop rates are fractions of its result.
pub fn cells(plan: PlanName, system: SystemKind, drain_override: Option<u64>) -> Vec<Cell> {
    let b = plan.budget(drain_override);
    let base = Cell {
        axis: "base".into(),
        mode: Mode::Closed,
        size: BASE_SIZE,
        producers: BASE_PRODUCERS,
        window: BASE_WINDOW,
        batch: 1,
        count: b.count_small,
        max_secs: b.max_secs,
        rate_fraction: None,
        consumers: 0,
    };
    let mut out = vec![base.clone()];
    if plan == PlanName::Ci {
        return out;
    }
    let vary = |axis: &str, f: &dyn Fn(&mut Cell)| {
        let mut c = base.clone();
        c.axis = axis.into();
        f(&mut c);
        c
    };
    out.push(vary("size", &|c| c.size = 128));
    out.push(vary("size", &|c| {
        c.size = 16 * 1024;
        c.count = b.count_large;
    }));
    out.push(vary("producers", &|c| c.producers = 1));
    out.push(vary("producers", &|c| c.producers = 16));
    // One message in flight in the whole system: the latency floor.
    out.push(vary("window", &|c| {
        c.producers = 1;
        c.window = 1;
    }));
    out.push(vary("window", &|c| c.window = 64));
    if system.batches() {
        // Requests carry `batch` messages; the window shrinks so that about the base's
        // 1024 messages per producer stay in flight.
        for batch in [16, 128] {
            out.push(vary("batch", &|c| {
                c.batch = batch;
                c.window = (BASE_WINDOW / batch).max(1);
            }));
        }
    }
    for f in [0.25, 0.5, 0.75] {
        out.push(vary("open", &|c| {
            c.mode = Mode::Open;
            c.rate_fraction = Some(f);
        }));
    }
    out.push(vary("e2e", &|c| {
        c.mode = Mode::E2e;
        c.rate_fraction = Some(0.5);
        c.consumers = CONSUMERS;
    }));
    out.push(vary("drain", &|c| {
        c.mode = Mode::Drain;
        c.count = b.drain;
        c.max_secs = b.drain_max_secs;
        c.consumers = CONSUMERS;
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_cell_comes_first_and_ci_runs_only_it() {
        let ci = cells(PlanName::Ci, SystemKind::Nats, None);
        assert_eq!(ci.len(), 1);
        assert_eq!(ci[0].key(), "closed 1024 B, 4p x 1024w x 1b");
        let full = cells(PlanName::Full, SystemKind::Rocketraft, None);
        assert_eq!(full[0].axis, "base");
        assert!(full.iter().any(|c| c.batch == 128 && c.window == 8));
    }

    #[test]
    fn only_rocketraft_gets_batch_cells() {
        for s in [SystemKind::Nats, SystemKind::Rabbitmq] {
            assert!(cells(PlanName::Full, s, None).iter().all(|c| c.batch == 1));
        }
    }

    #[test]
    fn cells_vary_one_axis_from_the_base() {
        for c in cells(PlanName::Full, SystemKind::Rocketraft, Some(10)) {
            let differs = [
                c.size != BASE_SIZE,
                c.producers != BASE_PRODUCERS,
                c.batch != 1,
                c.mode != Mode::Closed,
            ]
            .iter()
            .filter(|d| **d)
            .count();
            assert!(differs <= 1 || c.axis == "window", "{}", c.key());
        }
    }
}
