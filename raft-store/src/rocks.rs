//! RocksDB options shared by the log store and the state machine.
//!
//! Measured on the 2-core benchmark box (docs/benchmarks.md): with defaults, a memtable
//! flush writes its whole SST and syncs it at the end, and the Raft log's WAL fsync queues
//! behind that burst (p99 ack latency ~400 ms). `bytes_per_sync` makes RocksDB write back SST
//! data in 1 MiB steps instead, so a WAL fsync never waits behind tens of MB.

use rocksdb::{DBCompressionType, Options};

/// Options for a database (not its column families).
pub fn db_options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_bytes_per_sync(1 << 20);
    opts.set_max_background_jobs(2);
    opts
}

/// Options for a column family holding message payloads: written once, read mostly soon
/// after. Compression is off: bodies are the producer's bytes (often already compressed),
/// and the CPU is the scarcer resource on small boxes.
pub fn payload_cf_options() -> Options {
    let mut opts = Options::default();
    opts.set_write_buffer_size(128 << 20);
    opts.set_max_write_buffer_number(4);
    opts.set_compression_type(DBCompressionType::None);
    opts
}

/// Options for small column families (metadata, offsets): RocksDB's defaults.
/// (`bytes_per_sync` is a database option, set in [`db_options`]; column families ignore it.)
pub fn small_cf_options() -> Options {
    Options::default()
}
