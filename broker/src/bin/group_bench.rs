//! `rocketraft-group-bench`: appends messages to a local 3-node broker group through the
//! admin API and prints throughput and ack latency. It starts the group itself (child
//! processes of the `rocketraft-broker` binary next to this one, on free loopback ports,
//! fsync before ack as always) and stops it by PID at the end.
//!
//! With `--connect` it drives a group that is already running instead.
//!
//! Latency is per batch (send to ack); every message of a batch is counted with it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use rocketraft_proto::admin as pb;
use rocketraft_proto::admin::broker_admin_client::BrokerAdminClient;
use tokio::time::Instant;
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(about = "Append benchmark against a local 3-node rocketraft broker group")]
struct Args {
    /// Message body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Messages per append call (one Raft entry).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Append calls in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// How long to measure, after a 2 s warm-up.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Queues of the benchmark topic; calls are spread over them.
    #[arg(long, default_value_t = 8)]
    queues: u32,
    /// Nodes in the group (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Where the nodes keep their data (a fresh temp dir by default).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Drive an already running group at these addresses (comma-separated) instead of
    /// starting one.
    #[arg(long, value_delimiter = ',')]
    connect: Vec<String>,
    /// Print one JSON line instead of the human summary.
    #[arg(long)]
    json: bool,
    /// An extra flag for every broker it starts, e.g. `--broker-arg=--log-flush=async`
    /// (repeatable).
    #[arg(long = "broker-arg", allow_hyphen_values = true)]
    broker_args: Vec<String>,
}

struct Group {
    children: Vec<Child>,
    addrs: Vec<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Group {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_group(args: &Args) -> anyhow::Result<Group> {
    if !args.connect.is_empty() {
        return Ok(Group {
            children: Vec::new(),
            addrs: args.connect.clone(),
            _dir: None,
        });
    }
    let (dir, tmp) = match &args.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .with_context(|| format!("creating data dir {}", d.display()))?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let broker = std::env::current_exe()?.with_file_name("rocketraft-broker");
    if !broker.exists() {
        bail!(
            "{} not found; build it with `cargo build --release -p rocketraft-broker`",
            broker.display()
        );
    }
    let addrs: Vec<String> = (0..args.nodes)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.to_string())
        })
        .collect::<Result<_, _>>()?;
    let members = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let id = i + 1;
        let log = std::fs::File::create(dir.join(format!("node{id}.log")))?;
        children.push(
            Command::new(&broker)
                .args([
                    "--node-id",
                    &id.to_string(),
                    "--group",
                    "bench",
                    "--listen",
                    addr,
                ])
                .arg("--data-dir")
                .arg(dir.join(format!("node{id}")))
                .args(["--members", &members])
                .args(&args.broker_args)
                .env("ROCKETRAFT_LOG", "warn")
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log))
                .spawn()
                .context("starting rocketraft-broker")?,
        );
    }
    Ok(Group {
        children,
        addrs,
        _dir: tmp,
    })
}

fn client(addr: &str) -> anyhow::Result<BrokerAdminClient<Channel>> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_millis(500))
        .connect_lazy();
    Ok(BrokerAdminClient::new(ch)
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20))
}

async fn find_leader(group: &Group) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        for addr in &group.addrs {
            if let Ok(s) = client(addr)?.group_status(pb::GroupStatusRequest {}).await {
                let s = s.into_inner();
                if s.role == "Leader" {
                    return Ok(addr.clone());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no leader elected within 30 s")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.batch == 0 || args.concurrency == 0 || args.size == 0 {
        bail!("--batch, --concurrency and --size must be at least 1");
    }
    let group = start_group(&args)?;
    let leader = find_leader(&group).await?;
    let mut admin = client(&leader)?;
    admin
        .put_topic(pb::PutTopicRequest {
            topic: Some(pb::TopicConfig {
                name: "BenchTopic".into(),
                queue_count: args.queues,
                permission: pb::Permission::ReadWrite as i32,
                message_types: vec![],
                ..Default::default()
            }),
        })
        .await?;

    let body = bytes::Bytes::from(vec![b'x'; args.size]);
    let warmup_end = Instant::now() + Duration::from_secs(2);
    let end = warmup_end + Duration::from_secs(args.duration_secs);
    let mut tasks = Vec::new();
    for w in 0..args.concurrency {
        let mut c = client(&leader)?;
        let body = body.clone();
        let batch = args.batch;
        let queues = args.queues;
        tasks.push(tokio::spawn(async move {
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let (mut msgs, mut errors, mut seq) = (0u64, 0u64, 0u64);
            while Instant::now() < end {
                let messages = (0..batch)
                    .map(|i| pb::MessageInput {
                        message_id: format!("w{w}-{seq}-{i}"),
                        body: body.clone(),
                        ..Default::default()
                    })
                    .collect();
                let req = pb::AppendRequest {
                    topic: "BenchTopic".into(),
                    queue_id: (w as u32 + seq as u32) % queues,
                    messages,
                };
                seq += 1;
                let started = Instant::now();
                let ok = c.append(req).await.is_ok();
                if started < warmup_end {
                    continue;
                }
                if ok {
                    let us = started.elapsed().as_micros() as u64;
                    hist.record_n(us.max(1), batch as u64)
                        .expect("latency within bounds");
                    msgs += batch as u64;
                } else {
                    errors += 1;
                }
            }
            (hist, msgs, errors)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut msgs, mut errors) = (0u64, 0u64);
    for t in tasks {
        let (h, m, e) = t.await?;
        hist.add(h)?;
        msgs += m;
        errors += e;
    }
    let secs = args.duration_secs as f64;
    let rate = msgs as f64 / secs;
    let mb = rate * args.size as f64 / 1e6;
    let (p50, p99, p999) = (
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.value_at_quantile(0.999) as f64 / 1000.0,
    );
    if args.json {
        println!(
            "{{\"size\":{},\"batch\":{},\"concurrency\":{},\"nodes\":{},\"seconds\":{},\"msgs\":{msgs},\"msgs_per_s\":{rate:.0},\"mb_per_s\":{mb:.1},\"p50_ms\":{p50:.2},\"p99_ms\":{p99:.2},\"p999_ms\":{p999:.2},\"errors\":{errors}}}",
            args.size, args.batch, args.concurrency, args.nodes, args.duration_secs
        );
    } else {
        println!(
            "{} nodes, fsync before ack, {} B messages, batch {}, {} calls in flight, {} s",
            args.nodes, args.size, args.batch, args.concurrency, args.duration_secs
        );
        println!("throughput: {rate:.0} msgs/s ({mb:.1} MB/s), {msgs} messages, {errors} errors");
        println!("ack latency: p50 {p50:.2} ms, p99 {p99:.2} ms, p999 {p999:.2} ms");
    }
    Ok(())
}
