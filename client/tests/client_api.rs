//! The client library against a real local cluster (a nameserver and a 3-node broker
//! group): every producer mode (sync, batch, async, oneway, FIFO, delay, transaction with
//! commit, rollback and an orphan answered by the checker) and every consumer type
//! (simple, push, pull), with contents and counts asserted. The push consumer keeps
//! consuming while the group's leader is killed: nothing sent is missing, and duplicates
//! are counted and printed.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, ensure};
use common::LocalCluster;
use rocketraft_client::admin::{Admin, GroupSpec, Retry};
use rocketraft_client::{
    ClientConfig, ConsumeResult, Filter, Message, Producer, PullConsumer, PushConsumer,
    SimpleConsumer, TransactionResolution,
};

fn config(cluster: &LocalCluster) -> ClientConfig {
    ClientConfig::new([cluster.nameserver.clone()])
}

/// Receives with `consumer` until `want` distinct message ids (by body) were seen or the
/// deadline passes; acks everything. Returns body -> delivery count.
async fn drain(
    consumer: &SimpleConsumer,
    want: usize,
    deadline: Duration,
) -> anyhow::Result<BTreeMap<String, u32>> {
    let until = Instant::now() + deadline;
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    while seen.len() < want && Instant::now() < until {
        for m in consumer.receive(32, Duration::from_secs(30)).await? {
            *seen
                .entry(String::from_utf8_lossy(&m.body).into_owned())
                .or_default() += 1;
            consumer.ack(&m).await?;
        }
    }
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_producer_mode_reaches_simple_and_pull_consumers() -> anyhow::Result<()> {
    let cluster =
        LocalCluster::start_with("client-api", &["--transaction-check-first-ms", "1000"])?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    cluster.create_topic("Events", 4).await?;

    let producer = Producer::builder(config(&cluster))
        .topics(["Events"])
        .max_in_flight(8)
        .compress_bodies_over(1024)
        .transaction_checker(|m| {
            if m.properties.get("verdict").map(String::as_str) == Some("commit") {
                TransactionResolution::Commit
            } else {
                TransactionResolution::Rollback
            }
        })
        .build()
        .await?;
    let mut expected: BTreeSet<String> = BTreeSet::new();

    // Sync, with tags and keys; every receipt names the group and a real offset.
    for i in 0..10 {
        let tag = if i % 2 == 0 { "even" } else { "odd" };
        let body = format!("sync-{i}");
        let r = producer
            .send(
                Message::new("Events", body.clone())
                    .with_tag(tag)
                    .with_keys([format!("k{i}")]),
            )
            .await?;
        ensure!(r.broker_group == "client-api" && r.offset >= 0, "{r:?}");
        ensure!(
            r.message_id.len() == 34,
            "RocketMQ-style id: {}",
            r.message_id
        );
        expected.insert(body);
    }
    // Batch: one answer per message.
    let batch: Vec<Message> = (0..10)
        .map(|i| Message::new("Events", format!("batch-{i}")).with_tag("even"))
        .collect();
    ensure!(producer.send_batch(batch).await?.len() == 10);
    expected.extend((0..10).map(|i| format!("batch-{i}")));
    // Async through a window of 8, and oneway.
    let mut pending = Vec::new();
    for i in 0..40 {
        pending.push(
            producer
                .send_async(Message::new("Events", format!("async-{i}")).with_tag("odd"))
                .await?,
        );
        expected.insert(format!("async-{i}"));
    }
    for p in pending {
        p.await?;
    }
    for i in 0..5 {
        producer
            .send_oneway(Message::new("Events", format!("oneway-{i}")).with_tag("odd"))
            .await?;
        expected.insert(format!("oneway-{i}"));
    }
    // A large body travels gzipped and arrives as written.
    let large = format!("large-{}", "x".repeat(50_000));
    producer
        .send(Message::new("Events", large.clone()).with_tag("even"))
        .await?;
    expected.insert(large.clone());
    // FIFO: three message groups.
    for i in 0..15 {
        let body = format!("fifo-{}-{i}", i % 3);
        producer
            .send(
                Message::new("Events", body.clone())
                    .with_message_group(format!("g{}", i % 3))
                    .with_tag("even"),
            )
            .await?;
        expected.insert(body);
    }
    // Delay 2 s.
    let delayed_at = SystemTime::now() + Duration::from_secs(2);
    producer
        .send(
            Message::new("Events", "delayed")
                .with_tag("even")
                .deliver_at(delayed_at),
        )
        .await?;
    expected.insert("delayed".into());
    // Transactions: committed, rolled back, and one left open for the checker to commit.
    let t = producer
        .send_transactional(Message::new("Events", "tx-commit").with_tag("even"))
        .await?;
    ensure!(!t.receipt().transaction_id.is_empty());
    t.commit().await?;
    expected.insert("tx-commit".into());
    producer
        .send_transactional(Message::new("Events", "tx-rollback").with_tag("even"))
        .await?
        .rollback()
        .await?;
    let orphan = producer
        .send_transactional(
            Message::new("Events", "tx-orphan")
                .with_tag("even")
                .with_property("verdict", "commit"),
        )
        .await?;
    drop(orphan);
    expected.insert("tx-orphan".into());

    // Simple consumer, everything: each expected body exactly once, nothing else.
    let all = SimpleConsumer::builder(config(&cluster), "AllOfIt")
        .subscribe("Events", Filter::all())
        .await_duration(Duration::from_secs(2))
        .build()
        .await?;
    let seen = drain(&all, expected.len(), Duration::from_secs(40)).await?;
    let got: BTreeSet<String> = seen.keys().cloned().collect();
    ensure!(
        got == expected,
        "missing {:?}, unexpected {:?}",
        expected.difference(&got).collect::<Vec<_>>(),
        got.difference(&expected).collect::<Vec<_>>()
    );
    ensure!(seen.values().all(|n| *n == 1), "redelivered: {seen:?}");
    ensure!(
        SystemTime::now() >= delayed_at,
        "the delayed message came early"
    );
    // The producer answered the orphan's check; it can go now.
    producer.close().await;

    // Tag filter: the odd ones only.
    let odd = SimpleConsumer::builder(config(&cluster), "OddOnes")
        .subscribe("Events", Filter::Tag("odd".into()))
        .await_duration(Duration::from_secs(1))
        .build()
        .await?;
    let odd_expected = 5 + 40 + 5;
    let seen = drain(&odd, odd_expected, Duration::from_secs(20)).await?;
    ensure!(
        seen.len() == odd_expected,
        "odd: {} of {odd_expected}",
        seen.len()
    );
    ensure!(
        seen.keys()
            .all(|b| b.starts_with("sync-") || b.starts_with("async-") || b.starts_with("oneway-"))
    );

    // Change invisible duration: a message made visible again comes back, attempt 2.
    let retry = SimpleConsumer::builder(config(&cluster), "Retrier")
        .subscribe("Events", Filter::Tag("odd".into()))
        .await_duration(Duration::from_secs(2))
        .build()
        .await?;
    let mut first = retry.receive(1, Duration::from_secs(30)).await?;
    let mut m = first.pop().context("a message")?;
    retry
        .change_invisible_duration(&mut m, Duration::ZERO)
        .await?;
    let until = Instant::now() + Duration::from_secs(10);
    let again = loop {
        let got = retry.receive(32, Duration::from_secs(30)).await?;
        if let Some(a) = got.into_iter().find(|a| a.message_id == m.message_id) {
            break a;
        }
        ensure!(Instant::now() < until, "the message did not come back");
    };
    ensure!(
        again.delivery_attempt == 2,
        "attempt {}",
        again.delivery_attempt
    );

    // Pull consumer: read every queue from the beginning, commit, and read the commit back.
    let mut pull = PullConsumer::new(config(&cluster), "Puller").await?;
    let queues = pull.queues("Events").await?;
    ensure!(queues.len() == 4, "{queues:?}");
    let mut pulled = BTreeSet::new();
    for q in &queues {
        pull.seek_to_beginning(q).await?;
        loop {
            let got = pull.pull(q, 64, Duration::ZERO).await?;
            if got.is_empty() {
                break;
            }
            pulled.extend(
                got.into_iter()
                    .map(|m| String::from_utf8_lossy(&m.body).into_owned()),
            );
        }
        let end = pull.position(q).context("position")?;
        pull.commit(q, end).await?;
        let mut other = PullConsumer::new(config(&cluster), "Puller").await?;
        ensure!(
            other.seek_to_committed(q).await? == Some(end),
            "committed offset of {q:?}"
        );
    }
    // The pull path reads the queues as stored: every visible message (the rolled-back one
    // never reached a queue).
    ensure!(
        pulled == expected,
        "pulled {} of {}",
        pulled.len(),
        expected.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_consumer_survives_a_leader_kill_without_losing_messages() -> anyhow::Result<()> {
    let mut cluster = LocalCluster::start("client-push")?;
    let leader = cluster.wait_ready(Duration::from_secs(30)).await?;
    cluster.create_topic("Pushed", 4).await?;
    // A short retry schedule, so the failure below comes back quickly.
    Admin::connect(&cluster.nameserver)
        .await?
        .put_group(&GroupSpec {
            name: "Pushers".into(),
            retry: Some(Retry::Delays(vec![Duration::from_millis(300)])),
            ..Default::default()
        })
        .await?;

    let deliveries: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let counted = deliveries.clone();
    let consumer = PushConsumer::builder(config(&cluster), "Pushers")
        .subscribe("Pushed", Filter::all())
        .workers(8)
        .invisible_duration(Duration::from_secs(10))
        .listener(move |m| {
            let counted = counted.clone();
            async move {
                let body = String::from_utf8_lossy(&m.body).into_owned();
                let n = {
                    let mut c = counted.lock().expect("lock");
                    let n = c.entry(body.clone()).or_default();
                    *n += 1;
                    *n
                };
                // The first delivery of one message fails: it must come back.
                if body == "push-7" && n == 1 {
                    ConsumeResult::Failure
                } else {
                    ConsumeResult::Success
                }
            }
        })
        .build()
        .await?;

    let producer = Producer::builder(config(&cluster))
        .topics(["Pushed"])
        .retries(10, Duration::from_millis(100), Duration::from_secs(1))
        .build()
        .await?;
    let total = 400;
    let mut sent = BTreeSet::new();
    let mut killed = false;
    for i in 0..total {
        if i == total / 2 {
            cluster.kill_broker(leader);
            killed = true;
        }
        let body = format!("push-{i}");
        producer.send(Message::new("Pushed", body.clone())).await?;
        sent.insert(body);
    }
    ensure!(killed);

    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let missing: Vec<String> = {
            let d = deliveries.lock().expect("lock");
            sent.iter()
                .filter(|b| !d.contains_key(*b))
                .cloned()
                .collect()
        };
        let retried = deliveries
            .lock()
            .expect("lock")
            .get("push-7")
            .copied()
            .unwrap_or(0);
        if missing.is_empty() && retried >= 2 {
            break;
        }
        ensure!(
            Instant::now() < until,
            "missing {} (e.g. {:?}); push-7 delivered {retried} times\n{}",
            missing.len(),
            missing.first(),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    consumer.shutdown().await;
    let d = deliveries.lock().expect("lock");
    let duplicates: u32 = d
        .iter()
        .filter(|(b, _)| *b != "push-7")
        .map(|(_, n)| n - 1)
        .sum();
    println!(
        "push consumer with the leader killed: {} messages, all received; {duplicates} redelivered",
        sent.len()
    );
    ensure!(d.keys().all(|b| sent.contains(b)), "unexpected messages");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_consumer_keeps_a_slow_message_invisible_until_its_listener_returns()
-> anyhow::Result<()> {
    let cluster = LocalCluster::start("client-renew")?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    cluster.create_topic("Slow", 1).await?;
    // Each call: (delivery attempt, finished).
    let calls: Arc<Mutex<Vec<(u32, bool)>>> = Arc::default();
    let seen = calls.clone();
    // Renewal happens at half of it, which leaves 2 s for a renewal under a loaded CI.
    let invisible = Duration::from_secs(4);
    let consumer = PushConsumer::builder(config(&cluster), "SlowReaders")
        .subscribe("Slow", Filter::all())
        .invisible_duration(invisible)
        .listener(move |m| {
            let seen = seen.clone();
            async move {
                let i = {
                    let mut c = seen.lock().expect("lock");
                    c.push((m.delivery_attempt, false));
                    c.len() - 1
                };
                // Two and a half invisible durations: without renewal the message would be
                // handed out again meanwhile.
                tokio::time::sleep(Duration::from_secs(10)).await;
                seen.lock().expect("lock")[i].1 = true;
                ConsumeResult::Success
            }
        })
        .build()
        .await?;
    let producer = Producer::builder(config(&cluster))
        .topics(["Slow"])
        .build()
        .await?;
    producer.send(Message::new("Slow", "slow-0")).await?;

    // Done when the listener finished and the ack (with the renewed handle) left nothing
    // in flight and nothing to consume.
    let mut admin = Admin::connect(&cluster.nameserver).await?;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let finished = calls.lock().expect("lock").iter().any(|c| c.1);
        let d = admin.describe_group("SlowReaders").await?;
        if finished && d.lag == 0 && d.inflight == 0 && !d.queues.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < until,
            "calls {:?}, group {d:?}\n{}",
            calls.lock().expect("lock"),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    consumer.shutdown().await;
    let calls = calls.lock().expect("lock").clone();
    ensure!(
        calls == [(1, true)],
        "one delivery, consumed once: {calls:?}"
    );
    Ok(())
}

/// SendMessage calls all brokers of the cluster have answered so far, from their metrics.
async fn send_calls(cluster: &LocalCluster) -> anyhow::Result<u64> {
    let mut total = 0;
    for addr in &cluster.broker_http {
        let (status, body) = rocketraft_client::membership::http_get(
            &format!("http://{addr}/metrics"),
            Duration::from_secs(5),
        )
        .await?;
        ensure!(status == 200, "metrics of {addr}: HTTP {status}");
        total += body
            .lines()
            .filter(|l| {
                l.starts_with("rocketraft_rpc_duration_seconds_count") && l.contains("SendMessage")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64;
    }
    Ok(total)
}

/// Async sends to one topic go out coalesced: many messages per request while earlier
/// requests are under way, each message still with its own receipt and offset.
#[tokio::test]
async fn async_sends_are_coalesced_into_few_requests() -> anyhow::Result<()> {
    let cluster = LocalCluster::start("g1")?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    cluster.create_topic("Burst", 1).await?;
    let producer = Producer::builder(config(&cluster))
        .topics(["Burst"])
        .max_in_flight(1000)
        .build()
        .await?;
    let before = send_calls(&cluster).await?;
    let mut pending = Vec::new();
    for i in 0..1000 {
        pending.push(
            producer
                .send_async(Message::new("Burst", format!("burst-{i}")))
                .await?,
        );
    }
    let mut offsets = BTreeSet::new();
    for p in pending {
        offsets.insert(p.await?.offset);
    }
    let calls = send_calls(&cluster).await? - before;
    ensure!(
        offsets == (0..1000).collect::<BTreeSet<i64>>(),
        "every message has its own offset in the topic's one queue: {} distinct",
        offsets.len()
    );
    ensure!(
        calls <= 250,
        "1000 async sends took {calls} SendMessage calls; coalesced they take far fewer"
    );
    println!("1000 async sends in {calls} SendMessage calls");
    // A burst to a topic with several queues still spreads over them, as one-by-one sends
    // would (the broker puts each request in the next queue): coalescing must not pack it
    // all into one request, one queue, one broker group.
    cluster.create_topic("Spread", 4).await?;
    let mut pending = Vec::new();
    for i in 0..40 {
        pending.push(
            producer
                .send_async(Message::new("Spread", format!("spread-{i}")))
                .await?,
        );
    }
    let mut offsets = Vec::new();
    for p in pending {
        offsets.push(p.await?.offset);
    }
    let highest = offsets.iter().max().copied().unwrap_or_default();
    ensure!(
        highest < 39,
        "40 async sends to a 4-queue topic all went to one queue (offsets up to {highest})"
    );
    // What went out together is stored as sent.
    let consumer = SimpleConsumer::builder(config(&cluster), "BurstReaders")
        .subscribe("Burst", Filter::all())
        .await_duration(Duration::from_secs(2))
        .build()
        .await?;
    let seen = drain(&consumer, 1000, Duration::from_secs(30)).await?;
    ensure!(
        (0..1000).all(|i| seen.contains_key(&format!("burst-{i}"))),
        "{} of 1000 consumed",
        seen.len()
    );
    producer.close().await;
    Ok(())
}
