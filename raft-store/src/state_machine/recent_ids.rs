//! An in-memory "certainly not stored recently" answer for producer deduplication.
//!
//! Every appended message asks whether its id was stored within the topic's dedup window,
//! and the answer is nearly always no. Asking RocksDB costs a bloom probe per memtable and
//! per SST file of the id index (about 2 us per message, 11% of a node's CPU under load), so
//! the apply path first asks a few in-memory bloom filters over the ids stored since this
//! node opened its state: when none of them may hold the id, it was not stored in the
//! window. Any other answer (a filter may hold it, or the window reaches back before what
//! the filters cover) falls back to the index, so the result is exactly what the index
//! alone would say, on every replica.
//!
//! Store times come from the leader's clock and can go back after a leader change, so each
//! filter remembers the range of store times it holds rather than assuming order.

use std::collections::VecDeque;

/// Ids one filter takes before a new one starts; at 10 bits an id, 320 KiB each.
const GENERATION_IDS_MAX: u64 = 1 << 18;
const BITS_PER_ID: u64 = 10;
const HASHES: u64 = 7;
/// Filters kept at most: older ones are dropped, and windows reaching back into what they
/// held fall back to the index. 32 x 320 KiB bounds the memory; at 40k messages/s they
/// cover the last 3.5 minutes, more than the default 2-minute window.
const GENERATIONS_MAX: usize = 32;
/// A filter also closes after this much store time, so that old ids leave memory even
/// when few are stored.
const GENERATION_SPAN_MS: i64 = 60_000;

struct Generation {
    bits: Vec<u64>,
    ids: u64,
    min_ms: i64,
    max_ms: i64,
}

impl Generation {
    fn new(at_ms: i64) -> Self {
        Self {
            bits: vec![0; (GENERATION_IDS_MAX * BITS_PER_ID / 64) as usize],
            ids: 0,
            min_ms: at_ms,
            max_ms: at_ms,
        }
    }

    /// The bits `hash` sets; the iterator borrows nothing, so insert can set them as it goes
    /// (this runs once per stored message: no allocation).
    fn positions(&self, hash: u64) -> impl Iterator<Item = usize> + use<> {
        let nbits = self.bits.len() as u64 * 64;
        let (h1, h2) = (hash, hash.rotate_left(32) | 1);
        (0..HASHES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % nbits) as usize)
    }

    fn insert(&mut self, hash: u64, at_ms: i64) {
        for p in self.positions(hash) {
            self.bits[p / 64] |= 1 << (p % 64);
        }
        self.ids += 1;
        self.min_ms = self.min_ms.min(at_ms);
        self.max_ms = self.max_ms.max(at_ms);
    }

    fn may_hold(&self, hash: u64) -> bool {
        self.positions(hash)
            .all(|p| self.bits[p / 64] & (1 << (p % 64)) != 0)
    }
}

/// The filters, and from which store time on they hold every stored id.
#[derive(Default)]
pub(super) struct RecentIds {
    /// Every id stored with a store time above this since the node opened its state is in
    /// a filter (or in a dropped one, see `dropped_max_ms`). `None`: not known yet.
    complete_after_ms: Option<i64>,
    /// The latest store time a dropped filter held: windows reaching back to it or before
    /// cannot be answered here.
    dropped_max_ms: i64,
    generations: VecDeque<Generation>,
}

/// FNV-1a over the topic and the id, separated so that ("ab", "c") and ("a", "bc") differ.
pub(super) fn id_hash(topic: &str, message_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic.bytes().chain([0xff]).chain(message_id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV's low bits mix poorly; fold the high half in before using it for positions.
    h ^ (h >> 29)
}

impl RecentIds {
    /// Starts over: every id stored with a store time above `after_ms` will be recorded
    /// (the latest store time the state held when it was opened or installed).
    pub(super) fn reset(&mut self, after_ms: i64) {
        *self = Self {
            complete_after_ms: Some(after_ms),
            dropped_max_ms: i64::MIN,
            generations: VecDeque::new(),
        };
    }

    /// Records an id stored at `at_ms`.
    pub(super) fn insert(&mut self, hash: u64, at_ms: i64) {
        let fresh = match self.generations.back() {
            None => true,
            Some(g) => g.ids >= GENERATION_IDS_MAX || at_ms - g.min_ms > GENERATION_SPAN_MS,
        };
        if fresh {
            if self.generations.len() >= GENERATIONS_MAX
                && let Some(old) = self.generations.pop_front()
            {
                self.dropped_max_ms = self.dropped_max_ms.max(old.max_ms);
            }
            self.generations.push_back(Generation::new(at_ms));
        }
        if let Some(g) = self.generations.back_mut() {
            g.insert(hash, at_ms);
        }
    }

    /// Whether the id certainly was not stored with a store time of `since_ms` or later.
    /// `false` means "ask the index".
    pub(super) fn certainly_absent(&self, hash: u64, since_ms: i64) -> bool {
        let Some(after) = self.complete_after_ms else {
            return false;
        };
        if since_ms <= after || since_ms <= self.dropped_max_ms {
            return false;
        }
        !self
            .generations
            .iter()
            .any(|g| g.max_ms >= since_ms && g.may_hold(hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_only_when_the_filters_cover_the_window_and_miss() {
        let mut r = RecentIds::default();
        let h = |i: u64| id_hash("T", &format!("id-{i}"));
        assert!(!r.certainly_absent(h(1), 0), "nothing known before reset");
        r.reset(1_000);
        for i in 0..1000 {
            r.insert(h(i), 2_000 + i as i64);
        }
        // Stored ids are never reported absent.
        assert!((0..1000).all(|i| !r.certainly_absent(h(i), 1_500)));
        // Unknown ids mostly are, when the window starts after what the state held at open.
        let absent = (1000..11000)
            .filter(|&i| r.certainly_absent(h(i), 1_500))
            .count();
        assert!(absent > 9_900, "false positives: {}", 10_000 - absent);
        // A window reaching back to the open (or before) must ask the index.
        assert!(!r.certainly_absent(h(5000), 1_000));
        assert!(!r.certainly_absent(h(5000), 500));
        // An id stored before the window starts does not count as in it.
        assert!(r.certainly_absent(h(0), 5_000));
    }

    /// A full filter still answers most misses wrongly only rarely (10 bits an id: 0.8 %).
    #[test]
    fn a_full_filter_keeps_false_positives_under_one_percent() {
        let mut g = Generation::new(0);
        let h = |i: u64| id_hash("T", &format!("id-{i}"));
        for i in 0..GENERATION_IDS_MAX {
            g.insert(h(i), 0);
        }
        assert!(
            (0..GENERATION_IDS_MAX)
                .step_by(97)
                .all(|i| g.may_hold(h(i)))
        );
        let probes = 100_000u64;
        let false_positives = (0..probes)
            .filter(|i| g.may_hold(h(GENERATION_IDS_MAX + i)))
            .count() as f64;
        let rate = false_positives / probes as f64;
        assert!(rate < 0.01, "false-positive rate {rate}");
    }

    #[test]
    fn dropped_filters_send_old_windows_to_the_index() {
        let mut r = RecentIds::default();
        r.reset(0);
        let h = id_hash("T", "early");
        r.insert(h, 10);
        // One filter a minute: after GENERATIONS_MAX more, the first is dropped.
        let step = GENERATION_SPAN_MS + 1;
        for i in 1..=GENERATIONS_MAX as i64 {
            r.insert(id_hash("T", &format!("later-{i}")), 10 + i * step);
        }
        assert!(
            !r.certainly_absent(h, 5),
            "a window reaching into a dropped filter asks the index"
        );
        assert!(r.certainly_absent(id_hash("T", "other"), 20 + step));
        // Store times going back (a new leader's clock) are still covered.
        r.insert(id_hash("T", "skewed"), 50 + step);
        assert!(!r.certainly_absent(id_hash("T", "skewed"), 40 + step));
    }
}
