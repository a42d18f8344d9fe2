//! The workloads, the same for every system:
//!
//! - [`closed`]: each producer keeps `window` sends under way and starts the next as one is
//!   acknowledged: the maximum throughput at that concurrency. Latency is send to ack.
//! - [`open`]: sends start at fixed intended times (a given rate), whether or not earlier
//!   ones were acknowledged; latency runs from the intended time, so a stall counts
//!   against every send it delayed (no coordinated omission). `window` still bounds what
//!   is under way, and waiting for it is part of the latency.
//! - [`consume`]: subscribers receive and ack until a count arrives; each body's stamp
//!   gives its end-to-end latency (intended send to delivery).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::payload::Payloads;
use crate::systems::{CALL_TIMEOUT, Publisher, Subscriber};

/// What a workload did.
pub struct Outcome {
    /// Messages acknowledged (produce) or received (consume).
    pub messages: u64,
    pub errors: u64,
    /// Open loop: intended sends never started because the run's deadline passed.
    pub unsent: u64,
    pub first_error: Option<String>,
    /// From the first send to the last acknowledgement (or delivery).
    pub elapsed: Duration,
    /// Microseconds.
    pub hist: Histogram<u64>,
}

impl Outcome {
    /// Counts `other`'s errors in this outcome (its messages and latencies are not this
    /// side's): a cell measured on one side still fails visibly when the other side did.
    pub fn add_errors_of(&mut self, other: Outcome) {
        self.errors += other.errors;
        self.unsent += other.unsent;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// 1 us to 10 min at 3 significant digits; every system's latencies go into one of these.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds are valid")
}

/// One lane's or subscriber's tally, merged at the end.
struct Tally {
    messages: u64,
    errors: u64,
    first_error: Option<String>,
    hist: Histogram<u64>,
    last_at: Option<Instant>,
}

impl Tally {
    fn new() -> Self {
        Self {
            messages: 0,
            errors: 0,
            first_error: None,
            hist: histogram(),
            last_at: None,
        }
    }

    fn ok(&mut self, n: u64, latency: Duration) {
        self.messages += n;
        // Values past the histogram's 10 min are clamped, not dropped.
        let us = (latency.as_micros() as u64).clamp(1, 600_000_000);
        let _ = self.hist.record_n(us, n);
        self.last_at = Some(Instant::now());
    }

    fn failed(&mut self, n: u64, e: &anyhow::Error) {
        self.errors += n;
        self.first_error.get_or_insert_with(|| format!("{e:#}"));
    }

    fn merge(&mut self, o: Tally) {
        self.messages += o.messages;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        let _ = self.hist.add(o.hist);
        self.last_at = self.last_at.max(o.last_at);
    }

    fn outcome(self, started: Instant, unsent: u64) -> Outcome {
        let end = self.last_at.unwrap_or(started);
        Outcome {
            messages: self.messages,
            errors: self.errors,
            unsent,
            first_error: self.first_error,
            elapsed: end.saturating_duration_since(started),
            hist: self.hist,
        }
    }
}

/// Closed loop: `window` lanes per publisher, each sending `batch` messages per request
/// and waiting for the ack, until `count` messages were started or `max` passed.
pub async fn closed(
    pubs: &[Publisher],
    payloads: &Payloads,
    window: usize,
    batch: usize,
    count: u64,
    max: Duration,
) -> anyhow::Result<Outcome> {
    let remaining = Arc::new(AtomicU64::new(count));
    let seq = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + max;
    let mut lanes = JoinSet::new();
    for p in pubs {
        for _ in 0..window {
            let (p, payloads, remaining, seq) =
                (p.clone(), payloads.clone(), remaining.clone(), seq.clone());
            lanes.spawn(async move {
                let mut t = Tally::new();
                loop {
                    let n = claim(&remaining, batch as u64);
                    if n == 0 || Instant::now() >= deadline {
                        return t;
                    }
                    let first = seq.fetch_add(n, Ordering::Relaxed);
                    let now = Instant::now();
                    let bodies = (first..first + n).map(|s| payloads.make(s, now)).collect();
                    match p.publish(bodies).await {
                        Ok(()) => t.ok(n, now.elapsed()),
                        Err(e) => t.failed(n, &e),
                    }
                }
            });
        }
    }
    let mut total = Tally::new();
    while let Some(lane) = lanes.join_next().await {
        total.merge(lane?);
    }
    Ok(total.outcome(started, 0))
}

/// Takes up to `n` of what remains; 0 when nothing does.
fn claim(remaining: &AtomicU64, n: u64) -> u64 {
    let mut got = 0;
    let _ = remaining.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
        got = left.min(n);
        Some(left - got)
    });
    got
}

/// Open loop at `rate` messages/s over all publishers (one message per send), for `count`
/// messages. Publisher `p` of `P` sends messages p, p+P, p+2P, ... of the schedule.
/// Intended times that are already more than `max` past the start are not sent.
pub async fn open(
    pubs: &[Publisher],
    payloads: &Payloads,
    rate: f64,
    window: usize,
    count: u64,
    max: Duration,
) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        rate > 0.0,
        "the open-loop rate must be positive, got {rate}"
    );
    let started = Instant::now();
    let give_up = started + max + max / 2;
    let n_pubs = pubs.len() as u64;
    let mut schedulers = JoinSet::new();
    for (i, p) in pubs.iter().enumerate() {
        let (p, payloads) = (p.clone(), payloads.clone());
        let window = Arc::new(Semaphore::new(window.max(1)));
        schedulers.spawn(async move {
            let tally = Arc::new(Mutex::new(Tally::new()));
            let mut sends = JoinSet::new();
            let mut unsent = 0u64;
            let mut k = i as u64;
            while k < count {
                let intended = started + Duration::from_secs_f64(k as f64 / rate);
                if intended > Instant::now() {
                    tokio::time::sleep_until(intended).await;
                }
                let permit = tokio::select! {
                    got = window.clone().acquire_owned() => got,
                    _ = tokio::time::sleep_until(give_up) => {
                        unsent += (count - k).div_ceil(n_pubs);
                        break;
                    }
                };
                let Ok(permit) = permit else { break };
                let (p, payloads, tally) = (p.clone(), payloads.clone(), tally.clone());
                let seq = k;
                sends.spawn(async move {
                    let r = p.publish(vec![payloads.make(seq, intended)]).await;
                    let latency = intended.elapsed();
                    let mut t = tally.lock().unwrap_or_else(PoisonError::into_inner);
                    match r {
                        Ok(()) => t.ok(1, latency),
                        Err(e) => t.failed(1, &e),
                    }
                    drop(permit);
                });
                k += n_pubs;
            }
            while sends.join_next().await.is_some() {}
            let t = std::mem::replace(
                &mut *tally.lock().unwrap_or_else(PoisonError::into_inner),
                Tally::new(),
            );
            (t, unsent)
        });
    }
    let mut total = Tally::new();
    let mut unsent = 0;
    while let Some(s) = schedulers.join_next().await {
        let (t, u) = s?;
        total.merge(t);
        unsent += u;
    }
    Ok(total.outcome(started, unsent))
}

/// Subscribers receive (and ack) until `count` messages arrived in all, or until nothing
/// arrived for `idle`, or `max` passed. Latency is each body's age at delivery (from its
/// stamp): end to end when the producer runs at the same time.
pub async fn consume(
    subs: Vec<Subscriber>,
    payloads: &Payloads,
    count: u64,
    idle: Duration,
    max: Duration,
) -> anyhow::Result<Outcome> {
    let received = Arc::new(AtomicU64::new(0));
    let last_any = Arc::new(Mutex::new(Instant::now()));
    let started = Instant::now();
    let deadline = started + max;
    let mut tasks = JoinSet::new();
    for mut s in subs {
        let (payloads, received, last_any) = (payloads.clone(), received.clone(), last_any.clone());
        tasks.spawn(async move {
            let mut t = Tally::new();
            let mut got = Vec::new();
            loop {
                let quiet = last_any
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .elapsed();
                if received.load(Ordering::Relaxed) >= count
                    || Instant::now() >= deadline
                    || quiet >= idle
                {
                    break;
                }
                got.clear();
                let r = tokio::time::timeout(
                    CALL_TIMEOUT,
                    s.receive(&mut got, Duration::from_millis(200)),
                )
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("receive took over {CALL_TIMEOUT:?}")));
                let now = Instant::now();
                if let Err(e) = r {
                    t.failed(1, &e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                if got.is_empty() {
                    continue;
                }
                *last_any.lock().unwrap_or_else(PoisonError::into_inner) = now;
                received.fetch_add(got.len() as u64, Ordering::Relaxed);
                for body in &got {
                    t.ok(1, payloads.age(body, now).unwrap_or_default());
                }
            }
            s.close().await;
            t
        });
    }
    let mut total = Tally::new();
    while let Some(t) = tasks.join_next().await {
        total.merge(t?);
    }
    Ok(total.outcome(started, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_never_exceed_what_remains() {
        let r = AtomicU64::new(5);
        assert_eq!(claim(&r, 3), 3);
        assert_eq!(claim(&r, 3), 2);
        assert_eq!(claim(&r, 3), 0);
    }

    #[test]
    fn tallies_merge_counts_errors_and_latencies() {
        let mut a = Tally::new();
        a.ok(10, Duration::from_millis(2));
        let mut b = Tally::new();
        b.ok(5, Duration::from_millis(8));
        b.failed(2, &anyhow::anyhow!("boom"));
        a.merge(b);
        assert_eq!((a.messages, a.errors), (15, 2));
        assert_eq!(a.first_error.as_deref(), Some("boom"));
        assert_eq!(a.hist.len(), 15);
        assert!(a.hist.max() >= 7_990);
    }
}
