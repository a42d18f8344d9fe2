//! `rocketraft bench produce|consume`: load through the client library, with latency in an
//! HDR histogram. Closed loop: each producer keeps `--in-flight` sends (or batches) under
//! way and starts the next as one completes. A progress bar runs on stderr when it is a
//! terminal; the summary (or its JSON line) goes to stdout.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, ensure};
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use rocketraft_client::{ClientConfig, Filter, Message, Producer, SimpleConsumer};
use serde::Serialize;
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio::time::Instant;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Send fixed-size messages as fast as acknowledgements allow.
    /// Example: rocketraft bench produce TopicTest --size 1024 --in-flight 1024 --duration-secs 10
    Produce(ProduceArgs),
    /// Receive and acknowledge a topic's backlog as a consumer group; latency is end to end
    /// (receive time minus the producer's timestamp).
    /// Example: rocketraft bench consume TopicTest --group Bench --count 100000
    Consume(ConsumeArgs),
}

#[derive(Args)]
pub struct ProduceArgs {
    topic: String,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Stop after this many messages (default: run for --duration-secs).
    #[arg(long)]
    count: Option<u64>,
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Producers (each its own connections and window).
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Sends (or batches) under way per producer.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Messages per send request.
    #[arg(long, default_value_t = 1)]
    batch: usize,
}

#[derive(Args)]
pub struct ConsumeArgs {
    topic: String,
    #[arg(long)]
    group: String,
    /// Stop after this many messages (default: when nothing arrives for --idle-secs).
    #[arg(long)]
    count: Option<u64>,
    /// Stop when nothing arrives for this long.
    #[arg(long, default_value_t = 5)]
    idle_secs: u64,
    /// Consumers of the group receiving in parallel.
    #[arg(long, default_value_t = 4)]
    consumers: usize,
    /// Messages per receive.
    #[arg(long, default_value_t = 32)]
    receive_batch: u32,
}

/// One run's numbers, printed as one JSON line with --json.
#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub topic: String,
    pub size: usize,
    pub producers_or_consumers: usize,
    pub in_flight: usize,
    pub batch: usize,
    pub messages: u64,
    pub errors: u64,
    pub seconds: f64,
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
    /// Latency in microseconds: per send (or batch) for produce, end to end for consume.
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Report {
    fn text(&self) -> String {
        format!(
            "{} {}: {} messages ({} errors) in {:.2} s = {:.0} msgs/s, {:.2} MB/s; latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms\n",
            self.mode,
            self.topic,
            self.messages,
            self.errors,
            self.seconds,
            self.msgs_per_s,
            self.mb_per_s,
            self.p50_us as f64 / 1000.0,
            self.p99_us as f64 / 1000.0,
            self.p999_us as f64 / 1000.0,
            self.max_us as f64 / 1000.0,
        )
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 us .. 10 min at 3 significant digits.
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

#[allow(clippy::too_many_arguments)]
fn report(
    mode: &'static str,
    topic: String,
    size: usize,
    parallel: usize,
    in_flight: usize,
    batch: usize,
    messages: u64,
    errors: u64,
    elapsed: Duration,
    h: &Histogram<u64>,
) -> Report {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    Report {
        mode,
        topic,
        size,
        producers_or_consumers: parallel,
        in_flight,
        batch,
        messages,
        errors,
        seconds,
        msgs_per_s: messages as f64 / seconds,
        mb_per_s: (messages as f64 * size as f64) / seconds / 1e6,
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
    }
}

pub async fn run(config: ClientConfig, json: bool, cmd: BenchCommand) -> anyhow::Result<()> {
    let r = match cmd {
        BenchCommand::Produce(a) => produce(config, a).await?,
        BenchCommand::Consume(a) => consume(config, a).await?,
    };
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print!("{}", r.text());
    }
    Ok(())
}

/// What the producers share: how many messages may still be started, and the results.
struct Shared {
    remaining: Option<u64>,
    deadline: Instant,
    sent: u64,
    errors: u64,
    first_error: Option<String>,
    hist: Histogram<u64>,
}

impl Shared {
    /// Claims up to `n` messages to send; 0 when the run is over.
    fn claim(&mut self, n: usize) -> usize {
        if Instant::now() >= self.deadline {
            return 0;
        }
        match &mut self.remaining {
            None => n,
            Some(left) => {
                let take = (*left).min(n as u64);
                *left -= take;
                take as usize
            }
        }
    }
}

async fn produce(config: ClientConfig, a: ProduceArgs) -> anyhow::Result<Report> {
    ensure!(a.size > 0, "--size must be at least 1 byte");
    ensure!(
        a.producers > 0 && a.in_flight > 0 && a.batch > 0,
        "--producers, --in-flight and --batch must be at least 1"
    );
    let body = bytes::Bytes::from(vec![b'x'; a.size]);
    let shared = Arc::new(Mutex::new(Shared {
        remaining: a.count,
        deadline: Instant::now()
            + if a.count.is_some() {
                Duration::from_secs(24 * 3600)
            } else {
                Duration::from_secs(a.duration_secs)
            },
        sent: 0,
        errors: 0,
        first_error: None,
        hist: histogram()?,
    }));
    let mut producers = Vec::new();
    for _ in 0..a.producers {
        producers.push(
            Producer::builder(config.clone())
                .topics([a.topic.clone()])
                .max_in_flight(a.in_flight)
                .build()
                .await?,
        );
    }
    let bar = crate::progress(a.count, "sent", false);
    let started = Instant::now();
    let mut lanes = JoinSet::new();
    for p in &producers {
        // `in_flight` lanes per producer, each sending one request after the other.
        for _ in 0..a.in_flight {
            let (p, shared, topic, body, bar) = (
                p.clone(),
                shared.clone(),
                a.topic.clone(),
                body.clone(),
                bar.clone(),
            );
            let batch = a.batch;
            lanes.spawn(async move {
                loop {
                    let n = shared.lock().await.claim(batch);
                    if n == 0 {
                        return;
                    }
                    let messages: Vec<Message> = (0..n)
                        .map(|_| Message::new(topic.clone(), body.clone()))
                        .collect();
                    let t = Instant::now();
                    let result = if n == 1 {
                        let m = messages.into_iter().next().expect("one message");
                        p.send(m).await.map(|_| ())
                    } else {
                        p.send_batch(messages).await.map(|_| ())
                    };
                    let us = t.elapsed().as_micros() as u64;
                    let mut s = shared.lock().await;
                    match result {
                        Ok(()) => {
                            s.sent += n as u64;
                            bar.inc(n as u64);
                            let _ = s.hist.record(us.max(1));
                        }
                        Err(e) => {
                            s.errors += n as u64;
                            s.first_error.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
            });
        }
    }
    while let Some(done) = lanes.join_next().await {
        done.context("a producer lane panicked")?;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    for p in &producers {
        p.close().await;
    }
    let s = shared.lock().await;
    if let Some(e) = &s.first_error {
        eprintln!("{} sends failed; the first: {e}", s.errors);
    }
    Ok(report(
        "produce",
        a.topic,
        a.size,
        a.producers,
        a.in_flight,
        a.batch,
        s.sent,
        s.errors,
        elapsed,
        &s.hist,
    ))
}

async fn consume(config: ClientConfig, a: ConsumeArgs) -> anyhow::Result<Report> {
    ensure!(a.consumers > 0, "--consumers must be at least 1");
    let idle = Duration::from_secs(a.idle_secs);
    let shared = Arc::new(Mutex::new((0u64, 0u64, 0usize, histogram()?)));
    let bar = crate::progress(a.count, "received", false);
    let started = Instant::now();
    let last = Arc::new(Mutex::new(Instant::now()));
    let mut tasks = JoinSet::new();
    for _ in 0..a.consumers {
        let consumer = SimpleConsumer::builder(config.clone(), a.group.clone())
            .subscribe(a.topic.clone(), Filter::all())
            .await_duration(idle.min(Duration::from_secs(5)))
            .build()
            .await?;
        let (shared, last, count, batch, bar) = (
            shared.clone(),
            last.clone(),
            a.count,
            a.receive_batch,
            bar.clone(),
        );
        tasks.spawn(async move {
            loop {
                {
                    let s = shared.lock().await;
                    if count.is_some_and(|c| s.0 >= c) || last.lock().await.elapsed() >= idle {
                        return Ok::<_, anyhow::Error>(());
                    }
                }
                let got = consumer.receive(batch, Duration::from_secs(30)).await?;
                if got.is_empty() {
                    continue;
                }
                let now = SystemTime::now();
                *last.lock().await = Instant::now();
                let mut bytes = 0usize;
                let mut lat = Vec::with_capacity(got.len());
                for m in &got {
                    if let Some(born) = m.born_at
                        && let Ok(d) = now.duration_since(born)
                    {
                        lat.push(d.as_micros() as u64);
                    }
                    bytes = bytes.max(m.body.len());
                }
                // One ack request per receive, as a high-throughput consumer would.
                let (acked, failed) = match consumer.ack_all(&got).await {
                    Ok(()) => (got.len() as u64, 0),
                    Err(_) => (0, got.len() as u64),
                };
                bar.inc(acked);
                let mut s = shared.lock().await;
                s.0 += acked;
                s.1 += failed;
                s.2 = s.2.max(bytes);
                for us in lat {
                    let _ = s.3.record(us.max(1));
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a consumer panicked")??;
    }
    bar.finish_and_clear();
    let s = shared.lock().await;
    // The run ends `idle` after the last message arrived; that wait is not consumption.
    let last_at = *last.lock().await;
    let elapsed = last_at.saturating_duration_since(started);
    Ok(report(
        "consume",
        a.topic,
        s.2,
        a.consumers,
        a.receive_batch as usize,
        1,
        s.0,
        s.1,
        elapsed,
        &s.3,
    ))
}
