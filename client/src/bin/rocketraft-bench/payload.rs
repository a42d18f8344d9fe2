//! The one payload generator every backend sends: incompressible pseudo-random bytes (so no
//! system gains from compressing them), with the send time stamped into the first bytes so
//! a consumer in this process can compute the end-to-end latency of what it receives,
//! whatever the system carries besides the body.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::Instant;

/// Bytes at the start of each payload that carry its intended send time.
pub const STAMP_BYTES: usize = 8;
/// Random bytes generated once; each message copies a window of them.
const POOL_BYTES: usize = 1 << 20;

/// Makes payloads of one size. Cheap to clone (the random pool is shared).
#[derive(Clone)]
pub struct Payloads {
    pool: Bytes,
    size: usize,
    /// The zero of the stamps: payloads carry nanoseconds since this instant.
    epoch: Instant,
}

impl Payloads {
    /// `size` is the body size in bytes, at least [`STAMP_BYTES`]; `seed` makes runs
    /// reproducible.
    pub fn new(size: usize, seed: u64, epoch: Instant) -> anyhow::Result<Self> {
        anyhow::ensure!(
            size >= STAMP_BYTES,
            "--size must be at least {STAMP_BYTES} bytes (the send time is stamped into the body), got {size}"
        );
        let mut state = seed;
        let mut pool = BytesMut::with_capacity(POOL_BYTES + size);
        while pool.len() < POOL_BYTES + size {
            pool.put_u64_le(splitmix64(&mut state));
        }
        Ok(Self {
            pool: pool.freeze(),
            size,
            epoch,
        })
    }

    /// The `seq`-th payload, stamped with `intended` (the time it was meant to be sent).
    pub fn make(&self, seq: u64, intended: Instant) -> Bytes {
        // Windows start at different offsets so consecutive bodies differ.
        let start = (seq.wrapping_mul(4099) % (POOL_BYTES as u64)) as usize;
        let mut b = BytesMut::with_capacity(self.size);
        let ns = intended.saturating_duration_since(self.epoch).as_nanos() as u64;
        b.put_u64_le(ns);
        b.put_slice(&self.pool[start..start + self.size - STAMP_BYTES]);
        b.freeze()
    }

    /// How long ago (at `now`) the payload was meant to be sent; `None` if `body` is too
    /// short to carry a stamp (not one of ours).
    pub fn age(&self, body: &[u8], now: Instant) -> Option<Duration> {
        let stamp: [u8; STAMP_BYTES] = body.get(..STAMP_BYTES)?.try_into().ok()?;
        let sent = self.epoch + Duration::from_nanos(u64::from_le_bytes(stamp));
        Some(now.saturating_duration_since(sent))
    }
}

/// SplitMix64: a tiny, well-mixed generator; enough for incompressible bytes.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_size_and_carry_their_send_time() {
        let epoch = Instant::now();
        let p = Payloads::new(128, 7, epoch).expect("payloads");
        let sent = epoch + Duration::from_millis(5);
        let body = p.make(3, sent);
        assert_eq!(body.len(), 128);
        let age = p
            .age(&body, sent + Duration::from_micros(250))
            .expect("a stamp");
        assert_eq!(age, Duration::from_micros(250));
        assert_ne!(p.make(4, sent)[8..], body[8..], "bodies differ");
    }

    #[test]
    fn payloads_do_not_compress() {
        let p = Payloads::new(4096, 1, Instant::now()).expect("payloads");
        let body = p.make(0, Instant::now());
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut z, &body).expect("gzip");
        let packed = z.finish().expect("gzip");
        assert!(
            packed.len() > 4000,
            "gzip packed 4096 bytes into {}",
            packed.len()
        );
    }

    #[test]
    fn too_small_a_size_is_refused_with_the_limit() {
        let err = Payloads::new(4, 1, Instant::now()).err().expect("an error");
        assert!(err.to_string().contains("at least 8 bytes"), "{err}");
    }
}
