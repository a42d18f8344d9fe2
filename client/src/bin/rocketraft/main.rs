//! `rocketraft`: the command line for operating a rocketraft cluster through a nameserver,
//! and the local playground.
//!
//! - `dev` (dev.rs): a nameserver and broker groups as child processes, until Ctrl-C.
//! - `cluster status`, `topic create|delete|list`, `group create|list|describe`: admin
//!   through the nameserver's `NameserverAdmin`.
//! - `send`, `consume`: the client library's producer and simple consumer.

mod bench;
mod broker;
mod dev;

use clap::{Args, Parser, Subcommand};
use std::time::Duration;

use anyhow::Context;
use rocketraft_client::admin::{Admin, GroupSpec, LookupBy, Retry, TopicSpec};
use rocketraft_client::{ClientConfig, Filter, Message, Producer, SimpleConsumer};

#[derive(Parser)]
#[command(
    name = "rocketraft",
    version,
    about = "Operate a rocketraft cluster",
    after_help = "Examples:
  rocketraft dev                                   # a local cluster until Ctrl-C
  rocketraft cluster status
  rocketraft topic create Orders --queues 8
  rocketraft send Orders 'order {i}' --count 100 --tag new
  rocketraft consume Orders --group Billing --count 100
  rocketraft group describe Billing --json"
)]
struct Cli {
    /// A nameserver to talk to (host:port).
    #[arg(
        long,
        global = true,
        env = "ROCKETRAFT_NAMESERVER",
        default_value = "127.0.0.1:9876"
    )]
    nameserver: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a local playground: a nameserver on --nameserver (127.0.0.1:9876) and a 3-node
    /// broker group on 127.0.0.1:8081-8083, with topic TopicTest, until Ctrl-C.
    /// Example: rocketraft dev --data-dir /tmp/rr --nodes 5
    Dev(dev::DevArgs),
    /// Broker groups, their nodes, leaders and terms.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// A broker group's members: add, remove, hand leadership over.
    #[command(subcommand)]
    Broker(broker::BrokerCommand),
    /// Exit 0 if an HTTP endpoint answers 200 (a health check for images without curl).
    /// Example: rocketraft probe http://127.0.0.1:9100/readyz
    Probe {
        url: String,
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Create, delete and list topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Configure, list and describe consumer groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Move consumer groups through a topic.
    #[command(subcommand)]
    Offset(OffsetCommand),
    /// Look messages up.
    #[command(subcommand)]
    Message(MessageCommand),
    /// Load a cluster and measure throughput and latency.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Send messages. Example: rocketraft send Orders 'hello {i}' --count 100 --tag new
    Send(SendArgs),
    /// Receive and acknowledge messages as a consumer group.
    /// Example: rocketraft consume Orders --group Billing --count 100
    Consume(ConsumeArgs),
}

#[derive(Args)]
struct SendArgs {
    topic: String,
    /// The body; `{i}` is replaced by the message's index. Read from --file or stdin when
    /// absent.
    body: Option<String>,
    /// Read the body from this file.
    #[arg(long, conflicts_with = "body")]
    file: Option<std::path::PathBuf>,
    #[arg(long)]
    tag: Option<String>,
    /// Message keys (repeatable).
    #[arg(long = "key")]
    keys: Vec<String>,
    /// User properties, KEY=VALUE (repeatable).
    #[arg(long = "property")]
    properties: Vec<String>,
    /// FIFO message group.
    #[arg(long)]
    message_group: Option<String>,
    /// Deliver this many milliseconds from now.
    #[arg(long)]
    delay_ms: Option<u64>,
    /// How many messages to send.
    #[arg(long, default_value_t = 1)]
    count: u32,
}

#[derive(Args)]
struct ConsumeArgs {
    topic: String,
    /// The consumer group.
    #[arg(long)]
    group: String,
    /// Tag filter: `*` or tags joined by `||`.
    #[arg(long, default_value = "*", conflicts_with = "sql")]
    tag: String,
    /// SQL92 filter on message properties.
    #[arg(long)]
    sql: Option<String>,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Stop when nothing arrives for this long.
    #[arg(long, default_value_t = 10_000)]
    idle_timeout_ms: u64,
}

#[derive(Subcommand)]
enum MessageCommand {
    /// Find a topic's messages by id, by key or by store time (through each broker group's
    /// indexes). Examples: rocketraft message get --topic Orders --key order-42
    ///   rocketraft message get --topic Orders --since 10m --until 5m
    Get {
        #[arg(long)]
        topic: String,
        #[arg(long, conflicts_with_all = ["key", "since"])]
        id: Option<String>,
        #[arg(long, conflicts_with = "since")]
        key: Option<String>,
        /// Stored at or after this time (RFC 3339, epoch ms, or an age like 10m).
        #[arg(long)]
        since: Option<String>,
        /// Stored before this time [default: now].
        #[arg(long, requires = "since")]
        until: Option<String>,
        /// Matches per broker group at most [default: 32; limit 1000].
        #[arg(long, default_value_t = 0)]
        max: u32,
    },
}

#[derive(Subcommand)]
enum OffsetCommand {
    /// Move a consumer group, on every queue of a topic, to the first message stored at or
    /// after a time; messages in flight to the group are dropped and their handles go stale.
    /// Example: rocketraft offset reset --group Billing --topic Orders --to-timestamp 2026-11-24T10:00:00Z
    Reset {
        #[arg(long)]
        group: String,
        #[arg(long)]
        topic: String,
        /// RFC 3339 time (2026-11-24T10:00:00Z), milliseconds since the epoch (0: the oldest
        /// retained message), or a duration ago (10m, 2h).
        #[arg(long)]
        to_timestamp: String,
    },
}

/// `--to-timestamp` as milliseconds since the epoch.
fn parse_timestamp(s: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let at = match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t,
        Err(_) => {
            let ago = humantime::parse_duration(s).map_err(|_| {
                anyhow::anyhow!(
                    "time {s:?}: expected an RFC 3339 time, milliseconds since the epoch, or a duration ago such as 10m"
                )
            })?;
            std::time::SystemTime::now()
                .checked_sub(ago)
                .with_context(|| format!("time {s:?} reaches before the epoch"))?
        }
    };
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64))
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Example: rocketraft cluster status --json
    Status,
}

#[derive(Args)]
struct Groups {
    /// Broker groups to act on (repeatable); all available groups when absent.
    #[arg(long = "broker-group")]
    groups: Vec<String>,
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Create or update a topic (alias: update).
    /// Example: rocketraft topic create Orders --queues 8 --type fifo
    #[command(visible_alias = "update")]
    Create {
        name: String,
        #[arg(long, default_value_t = 8)]
        queues: u32,
        /// Accepted message types (repeatable): normal, fifo, delay, transaction; all when absent.
        #[arg(long = "type")]
        types: Vec<String>,
        /// Delete messages older than this (e.g. 72h, 7d) [default: 72h].
        #[arg(long, value_parser = humantime::parse_duration)]
        retention: Option<Duration>,
        /// Keep at most this many body bytes in the topic, oldest deleted first [default: no limit].
        #[arg(long)]
        retention_bytes: Option<u64>,
        /// A resent message id within this window is not stored again (0s: off) [default: 2m].
        #[arg(long, value_parser = humantime::parse_duration)]
        dedup_window: Option<Duration>,
        #[command(flatten)]
        groups: Groups,
    },
    /// Delete a topic and its messages. Example: rocketraft topic delete Orders
    Delete {
        name: String,
        #[command(flatten)]
        groups: Groups,
    },
    /// List topics and the broker groups hosting them.
    List,
    /// A topic's settings and queue offsets in each broker group.
    /// Example: rocketraft topic describe Orders
    Describe { name: String },
}

#[derive(Subcommand)]
enum GroupCommand {
    /// Create or update a consumer group. Example: rocketraft group create Billing --orderly
    Create {
        name: String,
        /// Deliver each message group in order (FIFO consumption).
        #[arg(long)]
        orderly: bool,
        /// Deliveries before a message goes to %DLQ%<group> [default: 17].
        #[arg(long, default_value_t = 0)]
        max_delivery_attempts: u32,
        /// Every consumer gets every message.
        #[arg(long)]
        broadcast: bool,
        /// Retry delays in milliseconds, by attempt (the last repeats), e.g. 1000,5000,30000
        /// [default: RocketMQ's 1 s, 5 s, 10 s, 30 s, 1 min ... 2 h].
        #[arg(long, value_delimiter = ',', conflicts_with = "retry_exponential")]
        retry_delays_ms: Vec<u64>,
        /// Exponential retry delays: INITIAL_MS:MAX_MS:MULTIPLIER, e.g. 1000:60000:2.
        #[arg(long)]
        retry_exponential: Option<String>,
        #[command(flatten)]
        groups: Groups,
    },
    /// List consumer groups and the broker groups they are configured on.
    List,
    /// Where a consumer group stands on each queue: offsets, in flight, lag.
    /// Example: rocketraft group describe Billing
    Describe { name: String },
}

/// The retry flags of `group create` as a policy (`None`: the default).
fn retry_from_flags(delays_ms: &[u64], exponential: Option<&str>) -> anyhow::Result<Option<Retry>> {
    if let Some(spec) = exponential {
        let parts: Vec<&str> = spec.split(':').collect();
        let [initial, max, multiplier] = parts[..] else {
            anyhow::bail!("--retry-exponential {spec:?}: expected INITIAL_MS:MAX_MS:MULTIPLIER");
        };
        let ms = |v: &str, what: &str| -> anyhow::Result<Duration> {
            Ok(Duration::from_millis(v.parse().with_context(|| {
                format!("--retry-exponential: {what} {v:?} is not a number of milliseconds")
            })?))
        };
        return Ok(Some(Retry::Exponential {
            initial: ms(initial, "INITIAL_MS")?,
            max: ms(max, "MAX_MS")?,
            multiplier: multiplier.parse().with_context(|| {
                format!("--retry-exponential: MULTIPLIER {multiplier:?} is not a number")
            })?,
        }));
    }
    if delays_ms.is_empty() {
        return Ok(None);
    }
    Ok(Some(Retry::Delays(
        delays_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect(),
    )))
}

fn print<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(value)?);
    } else {
        print!("{}", text());
    }
    Ok(())
}

fn config(nameserver: &str) -> ClientConfig {
    ClientConfig::new(
        nameserver
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty()),
    )
}

/// A progress bar on stderr for long-running commands, shown only when stderr is a
/// terminal; for commands that print a line per message (`lines_on_stdout`) only when
/// stdout is not the terminal too, so bar and lines never interleave.
fn progress(
    total: Option<u64>,
    what: &'static str,
    lines_on_stdout: bool,
) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() || (lines_on_stdout && std::io::stdout().is_terminal()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let template = if total.is_some() {
        "{msg} {bar:40} {pos}/{len} ({per_sec}, eta {eta})"
    } else {
        "{msg} {spinner} {pos} ({per_sec})"
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_message(what);
    bar
}

async fn send(nameserver: &str, json: bool, a: SendArgs) -> anyhow::Result<()> {
    let body = match (a.body, a.file) {
        (Some(b), _) => b.into_bytes(),
        (None, Some(f)) => std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?,
        (None, None) => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
            buf
        }
    };
    let templated = std::str::from_utf8(&body)
        .ok()
        .filter(|s| s.contains("{i}"))
        .map(str::to_owned);
    let producer = Producer::builder(config(nameserver))
        .topics([a.topic.clone()])
        .build()
        .await?;
    let mut pending = Vec::new();
    let bar = progress(Some(u64::from(a.count)), "sent", true);
    for i in 0..a.count {
        let body = match &templated {
            Some(t) => t.replace("{i}", &i.to_string()).into_bytes(),
            None => body.clone(),
        };
        let mut m = Message::new(a.topic.clone(), body).with_keys(a.keys.clone());
        if let Some(t) = &a.tag {
            m = m.with_tag(t.clone());
        }
        for p in &a.properties {
            let (k, v) = p
                .split_once('=')
                .with_context(|| format!("--property {p:?}: expected KEY=VALUE"))?;
            m = m.with_property(k, v);
        }
        if let Some(g) = &a.message_group {
            m = m.with_message_group(g.clone());
        }
        if let Some(d) = a.delay_ms {
            m = m.deliver_after(Duration::from_millis(d));
        }
        // FIFO sends go one after another, so their order is the send order.
        if a.message_group.is_some() {
            report(json, producer.send(m).await?)?;
            bar.inc(1);
            continue;
        }
        pending.push(producer.send_async(m).await?);
        if pending.len() >= 256 {
            for p in pending.drain(..) {
                report(json, p.await?)?;
                bar.inc(1);
            }
        }
    }
    for p in pending {
        report(json, p.await?)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    producer.close().await;
    Ok(())
}

fn report(json: bool, r: rocketraft_client::SendReceipt) -> anyhow::Result<()> {
    if json {
        println!(
            "{}",
            serde_json::json!({"message_id": r.message_id, "broker_group": r.broker_group, "offset": r.offset})
        );
    } else {
        println!(
            "sent {} to {} at offset {}",
            r.message_id, r.broker_group, r.offset
        );
    }
    Ok(())
}

async fn consume(nameserver: &str, json: bool, a: ConsumeArgs) -> anyhow::Result<()> {
    let filter = match a.sql {
        Some(sql) => Filter::Sql(sql),
        None => Filter::Tag(a.tag),
    };
    let idle = Duration::from_millis(a.idle_timeout_ms);
    let consumer = SimpleConsumer::builder(config(nameserver), a.group)
        .subscribe(a.topic, filter)
        .await_duration(idle.min(Duration::from_secs(20)))
        .build()
        .await?;
    let mut received = 0u64;
    let mut last_message = std::time::Instant::now();
    let bar = progress(a.count, "received", true);
    while a.count.is_none_or(|c| received < c) && last_message.elapsed() < idle {
        let want = a.count.map_or(32, |c| (c - received).min(32)) as u32;
        let got = consumer.receive(want, Duration::from_secs(30)).await?;
        for m in &got {
            let body = String::from_utf8_lossy(&m.body);
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "message_id": m.message_id, "topic": m.topic, "tag": m.tag,
                        "keys": m.keys, "properties": m.properties, "broker_group": m.broker_group,
                        "queue_id": m.queue_id, "offset": m.offset, "delivery_attempt": m.delivery_attempt,
                        "body": body,
                    })
                );
            } else {
                println!(
                    "{} {}/{}@{} tag={} {}",
                    m.message_id,
                    m.broker_group,
                    m.queue_id,
                    m.offset,
                    m.tag.as_deref().unwrap_or("-"),
                    body
                );
            }
            received += 1;
            bar.inc(1);
            last_message = std::time::Instant::now();
        }
        // Printed, then acknowledged together: one request (one Raft entry) per receive.
        consumer.ack_all(&got).await?;
    }
    bar.finish_and_clear();
    if !json {
        eprintln!("received {received} messages");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Dev(a) => return dev::run(&cli.nameserver, cli.json, a).await,
        Command::Bench(b) => return bench::run(config(&cli.nameserver), cli.json, b).await,
        Command::Send(a) => return send(&cli.nameserver, cli.json, a).await,
        Command::Consume(a) => return consume(&cli.nameserver, cli.json, a).await,
        Command::Broker(b) => return broker::run(&cli.nameserver, cli.json, b).await,
        Command::Probe { url, timeout } => {
            let (code, body) = rocketraft_client::membership::http_get(&url, timeout).await?;
            print!("{body}");
            anyhow::ensure!(code == 200, "{url} answered {code}");
            return Ok(());
        }
        _ => {}
    }
    let mut admin = Admin::connect(&cli.nameserver).await?;
    match cli.command {
        Command::Dev(_)
        | Command::Bench(_)
        | Command::Send(_)
        | Command::Consume(_)
        | Command::Broker(_)
        | Command::Probe { .. } => {}
        Command::Message(MessageCommand::Get {
            topic,
            id,
            key,
            since,
            until,
            max,
        }) => {
            let by = match (id, key, since) {
                (Some(id), _, _) => LookupBy::Id(id),
                (None, Some(key), _) => LookupBy::Key(key),
                (None, None, Some(since)) => LookupBy::Time {
                    start_ms: parse_timestamp(&since)?,
                    end_ms: match until {
                        Some(u) => parse_timestamp(&u)?,
                        None => parse_timestamp("0s")?.saturating_add(1),
                    },
                },
                (None, None, None) => anyhow::bail!("give --id, --key or --since"),
            };
            let found = admin.find_messages(&topic, &by, max).await?;
            print(cli.json, &found, || {
                let mut out = String::new();
                for m in &found.messages {
                    out += &format!(
                        "{} {}/{}@{} tag={} keys={} stored_ms={} {}\n",
                        m.message_id,
                        m.broker_group,
                        m.queue_id,
                        m.offset,
                        m.tag.as_deref().unwrap_or("-"),
                        m.keys.join(","),
                        m.store_timestamp_ms,
                        m.body
                    );
                }
                out += &format!(
                    "{} found; {} messages read{}\n",
                    found.messages.len(),
                    found.scanned,
                    if found.complete {
                        ""
                    } else {
                        " (more match: raise --max)"
                    }
                );
                for (g, e) in &found.errors {
                    out += &format!("broker group {g} could not be asked: {e}\n");
                }
                out
            })?;
        }
        Command::Offset(OffsetCommand::Reset {
            group,
            topic,
            to_timestamp,
        }) => {
            let at = parse_timestamp(&to_timestamp)?;
            let moved = admin.reset_offsets(&group, &topic, at).await?;
            print(
                cli.json,
                &serde_json::json!({"group": group, "topic": topic, "timestamp_ms": at, "offsets": moved}),
                || {
                    moved
                        .iter()
                        .map(|(g, offsets)| {
                            format!("{group} on {topic} in {g}: queue offsets {offsets:?}\n")
                        })
                        .collect()
                },
            )?;
        }
        Command::Cluster(ClusterCommand::Status) => {
            let groups = admin.cluster_status().await?;
            print(cli.json, &groups, || {
                let mut out = String::new();
                for g in &groups {
                    out += &format!(
                        "group {}: leader {} (term {}){}\n",
                        g.name,
                        g.leader.map_or("none".to_string(), |l| l.to_string()),
                        g.leader_term,
                        if g.available { "" } else { ", UNAVAILABLE" }
                    );
                    for n in &g.nodes {
                        out += &format!(
                            "  node {} {} {} term {} log {} applied {} lag {}{}\n",
                            n.node_id,
                            n.addr,
                            n.role,
                            n.term,
                            n.last_log_index,
                            n.applied_index,
                            n.lag.map_or("-".to_string(), |l| l.to_string()),
                            if n.down { " DOWN" } else { "" }
                        );
                    }
                }
                out
            })?;
        }
        Command::Topic(TopicCommand::Create {
            name,
            queues,
            types,
            retention,
            retention_bytes,
            dedup_window,
            groups,
        }) => {
            let spec = TopicSpec {
                name: name.clone(),
                queues,
                message_types: types,
                groups: groups.groups,
                retention,
                retention_bytes,
                dedup_window,
            };
            let on = admin.create_topic(&spec).await?;
            print(
                cli.json,
                &serde_json::json!({"topic": name, "groups": on}),
                || format!("topic {name} on {}\n", on.join(", ")),
            )?;
        }
        Command::Topic(TopicCommand::Delete { name, groups }) => {
            let from = admin.delete_topic(&name, &groups.groups).await?;
            print(
                cli.json,
                &serde_json::json!({"deleted": name, "groups": from}),
                || format!("topic {name} deleted from {}\n", from.join(", ")),
            )?;
        }
        Command::Topic(TopicCommand::List) => {
            let topics = admin.list_topics().await?;
            print(cli.json, &topics, || {
                topics
                    .iter()
                    .map(|t| {
                        let types = if t.message_types.is_empty() {
                            "mixed".to_string()
                        } else {
                            t.message_types.join("|")
                        };
                        format!(
                            "{} queues={} types={} groups={}\n",
                            t.name,
                            t.queues,
                            types,
                            t.groups.join(",")
                        )
                    })
                    .collect()
            })?;
        }
        Command::Group(GroupCommand::Create {
            name,
            orderly,
            max_delivery_attempts,
            broadcast,
            retry_delays_ms,
            retry_exponential,
            groups,
        }) => {
            let spec = GroupSpec {
                name: name.clone(),
                orderly,
                max_delivery_attempts,
                broadcast,
                retry: retry_from_flags(&retry_delays_ms, retry_exponential.as_deref())?,
                groups: groups.groups,
            };
            let on = admin.put_group(&spec).await?;
            print(
                cli.json,
                &serde_json::json!({"group": name, "groups": on}),
                || format!("consumer group {name} on {}\n", on.join(", ")),
            )?;
        }
        Command::Topic(TopicCommand::Describe { name }) => {
            let groups = admin.describe_topic(&name).await?;
            print(cli.json, &groups, || {
                let mut out = format!("topic {name}\n");
                for g in &groups {
                    let types = if g.message_types.is_empty() {
                        "mixed".to_string()
                    } else {
                        g.message_types.join("|")
                    };
                    out += &format!(
                        "  broker group {}: {} queues, {}, types {}, {} messages written\n",
                        g.broker_group,
                        g.queues,
                        g.permission,
                        types,
                        g.max_offsets.iter().sum::<u64>()
                    );
                    for (q, max) in g.max_offsets.iter().enumerate() {
                        out += &format!("    queue {q}: next offset {max}\n");
                    }
                }
                out
            })?;
        }
        Command::Group(GroupCommand::List) => {
            let groups = admin.list_groups().await?;
            print(cli.json, &groups, || {
                groups
                    .iter()
                    .map(|g| {
                        format!(
                            "{} orderly={} broadcast={} max_delivery_attempts={} groups={}\n",
                            g.name,
                            g.orderly,
                            g.broadcast,
                            g.max_delivery_attempts,
                            g.groups.join(",")
                        )
                    })
                    .collect()
            })?;
        }
        Command::Group(GroupCommand::Describe { name }) => {
            let d = admin.describe_group(&name).await?;
            print(cli.json, &d, || describe_text(&name, &d))?;
        }
    }
    Ok(())
}

fn describe_text(name: &str, d: &rocketraft_client::admin::GroupDescription) -> String {
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let mut out = match &d.config {
        Some(c) => format!(
            "consumer group {name}: orderly={} broadcast={} max_delivery_attempts={} on {}\n",
            c.orderly,
            c.broadcast,
            c.max_delivery_attempts,
            c.groups.join(",")
        ),
        None => format!("consumer group {name}: not configured (defaults apply)\n"),
    };
    out += &format!(
        "{:<16} {:<24} {:>5} {:>10} {:>10} {:>10} {:>9} {:>10} {:>10}\n",
        "BROKER GROUP", "TOPIC", "QUEUE", "MIN", "MAX", "CURSOR", "INFLIGHT", "COMMITTED", "LAG"
    );
    for q in &d.queues {
        let topic = if q.consumer.is_empty() {
            q.topic.clone()
        } else {
            format!("{} ({})", q.topic, q.consumer)
        };
        out += &format!(
            "{:<16} {:<24} {:>5} {:>10} {:>10} {:>10} {:>9} {:>10} {:>10}\n",
            q.broker_group,
            topic,
            q.queue_id,
            q.offset_min,
            q.offset_next,
            opt(q.cursor),
            q.inflight,
            opt(q.committed),
            q.lag
        );
    }
    out += &format!("total lag {} ({} in flight)\n", d.lag, d.inflight);
    for (g, e) in &d.errors {
        out += &format!("broker group {g} could not be asked: {e}\n");
    }
    out
}
