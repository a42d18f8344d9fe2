//! RocksDB options shared by the log store and the state machine.
//!
//! Measured on the 2-core benchmark box (docs/benchmarks.md): with defaults, a memtable
//! flush writes its whole SST and syncs it at the end, and the Raft log's WAL fsync queues
//! behind that burst (p99 ack latency ~400 ms). `bytes_per_sync` makes RocksDB write back SST
//! data in 1 MiB steps instead, so a WAL fsync never waits behind tens of MB.

use std::path::Path;
use std::sync::OnceLock;

use rocksdb::{BlockBasedOptions, Cache, DBCompressionType, Options, WriteBufferManager};

/// The most memory the memtables of every database in this process may hold together.
/// Each payload column family alone may grow to 3 x 32 MiB ([`payload_cf_options`]), and
/// every other column family to RocksDB's default 2 x 64 MiB, so without a common cap the
/// bound was several hundred MiB (filling a 1 M-message backlog they reached 86 MiB while
/// nodes peaked at 250-305 MiB, docs/benchmarks.md). Past about 90 % of this, RocksDB
/// flushes the column family being written.
pub const MEMTABLE_BUDGET_BYTES: usize = 64 << 20;

/// The block cache every column family of this process shares. Unset, RocksDB gives each
/// column family its own 32 MiB cache, and a node has 15 column families.
pub const BLOCK_CACHE_BYTES: usize = 16 << 20;

/// RocksDB's memory in this process: one cache and one memtable budget for both of a node's
/// databases (the Raft log and the state machine). A broker process is one node; a test
/// process running several nodes shares one budget among them, which only flushes sooner.
struct Budget {
    cache: Cache,
    memtables: WriteBufferManager,
}

fn budget() -> &'static Budget {
    static BUDGET: OnceLock<Budget> = OnceLock::new();
    BUDGET.get_or_init(|| Budget {
        cache: Cache::new_lru_cache(BLOCK_CACHE_BYTES),
        // No stall: a writer over budget triggers flushes rather than waiting for them;
        // the Raft log's appends must not block behind the state machine's flush.
        memtables: WriteBufferManager::new_write_buffer_manager(MEMTABLE_BUDGET_BYTES, false),
    })
}

/// What RocksDB holds in memory in this process, for the metrics endpoint.
#[derive(Debug, Clone, Copy)]
pub struct MemoryUsage {
    pub memtable_bytes: usize,
    pub block_cache_bytes: usize,
}

pub fn memory_usage() -> MemoryUsage {
    let b = budget();
    MemoryUsage {
        memtable_bytes: b.memtables.get_usage(),
        block_cache_bytes: b.cache.get_usage(),
    }
}

/// A block-based table with the process's shared cache.
fn table() -> BlockBasedOptions {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&budget().cache);
    table
}

/// Options for a database (not its column families) that will live in `dir`.
///
/// Flushes and compactions write with direct I/O where the file system allows it: they
/// write every message body again (memtable to SST, SST to SST), and through the page cache
/// the kernel's copy of those bytes took about 30% of a node's CPU under load (measured:
/// 25k -> 31k appends/s with it, docs/benchmarks.md). The Raft log's WAL stays buffered;
/// it is synced explicitly. tmpfs and some others refuse O_DIRECT: there, buffered I/O.
pub fn db_options(dir: &Path) -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_bytes_per_sync(1 << 20);
    opts.set_max_background_jobs(2);
    opts.set_use_direct_io_for_flush_and_compaction(direct_io_supported(dir));
    opts.set_write_buffer_manager(&budget().memtables);
    opts
}

/// Whether files in `dir` (created if missing) can be opened with O_DIRECT.
fn direct_io_supported(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    if std::fs::create_dir_all(dir).is_err() {
        return false;
    }
    let probe = dir.join(".direct-io-probe");
    let supported = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    supported
}

/// Options for a column family holding message payloads: written once, read mostly soon
/// after. Compression is off: bodies are the producer's bytes (often already compressed),
/// and the CPU is the scarcer resource on small boxes.
///
/// Memtables of 32 MiB, at most 3 (one being written, two flushing): each node has two such
/// column families (the log's entries, the state machine's messages), so their memtables
/// take 64-192 MiB. With 128 MiB x 4 a node's resident set reached 330-400 MB under load;
/// with these, 150-165 MB, at the same throughput (docs/benchmarks.md).
///
/// Blocks of 64 KiB, not 4: SST files are written with direct I/O, so nothing of them is in
/// the page cache and a consumer reading a backlog reads blocks from disk, one read per
/// block. With 4 KiB blocks that was a disk read per 3 or 4 messages, and draining a backlog
/// waited on the disk (about 50k msgs/s, docs/benchmarks.md); with 64 a read brings about 60.
pub fn payload_cf_options() -> Options {
    let mut table = table();
    table.set_block_size(64 << 10);
    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table);
    opts.set_write_buffer_size(32 << 20);
    opts.set_max_write_buffer_number(3);
    opts.set_compression_type(DBCompressionType::None);
    opts
}

/// Options for small column families (metadata, offsets): RocksDB's defaults but the
/// shared cache. (`bytes_per_sync` is a database option, set in [`db_options`]; column
/// families ignore it.)
pub fn small_cf_options() -> Options {
    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table());
    opts
}

/// Options for a column family of point lookups that mostly miss: the message-id index,
/// which every appended message looks up (producer deduplication) and which almost never
/// holds the id. Bloom filters, on the SST files and on the memtable, answer most misses
/// without reading a block: without them those lookups took about 14% of a leader's CPU
/// under load, walking every level's index and data blocks.
pub fn lookup_cf_options() -> Options {
    let mut table = table();
    table.set_bloom_filter(10.0, false);
    table.set_whole_key_filtering(true);
    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table);
    opts.set_memtable_whole_key_filtering(true);
    opts.set_memtable_prefix_bloom_ratio(0.05);
    opts
}
