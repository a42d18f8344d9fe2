//! Drives the official RocketMQ 5 Rust client (`rocketmq` 5.0.0 from crates.io, unmodified)
//! against a rocketraft broker group, one scenario per run:
//!
//! ```text
//! produce     ACCESS_POINT TOPIC COUNT        NORMAL + FIFO sends, one "<i> <id>" line each
//! simple      ACCESS_POINT TOPIC GROUP N      send N, receive + ack all, then a tag filter
//! fifo        ACCESS_POINT TOPIC GROUP        4 message groups x 10 through an orderly group
//! delay       ACCESS_POINT TOPIC GROUP        5 DELAY messages, none may arrive early
//! transaction ACCESS_POINT TOPIC GROUP        commit, rollback and an orphan resolved by check
//! dlq         ACCESS_POINT TOPIC GROUP        2 unacked deliveries, then %DLQ%GROUP has it
//! ```
//!
//! Each scenario checks what it receives itself. On success the last stdout line is
//! `SUMMARY <json>` with counts and measurements; on a mismatch it prints `FAILED ...` to
//! stderr and exits 1 (2 for bad arguments). The client's own log goes to stderr.
//! Groups, topics and their settings (orderly, max delivery attempts) are created by the
//! caller beforehand.

mod clients;
mod delay;
mod dlq;
mod fifo;
mod produce;
mod simple;
mod transaction;

use anyhow::Result;
use serde_json::Value;
use tokio::time::Instant;

const USAGE: &str = "usage: rocketraft-interop-rust-producer SCENARIO ARGS...
  produce     ACCESS_POINT TOPIC COUNT
  simple      ACCESS_POINT TOPIC GROUP N
  fifo        ACCESS_POINT TOPIC GROUP
  delay       ACCESS_POINT TOPIC GROUP
  transaction ACCESS_POINT TOPIC GROUP
  dlq         ACCESS_POINT TOPIC GROUP";

enum Scenario {
    Produce { count: usize },
    Simple { group: String, n: usize },
    Fifo { group: String },
    Delay { group: String },
    Transaction { group: String },
    Dlq { group: String },
}

fn parse(args: &[String]) -> Option<(String, String, Scenario)> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (name, ap, topic, rest) = match args.as_slice() {
        [name, ap, topic, rest @ ..] => (*name, *ap, *topic, rest),
        _ => return None,
    };
    let scenario = match (name, rest) {
        ("produce", [count]) => Scenario::Produce {
            count: count.parse().ok()?,
        },
        ("simple", [group, n]) => Scenario::Simple {
            group: group.to_string(),
            n: n.parse().ok()?,
        },
        ("fifo", [group]) => Scenario::Fifo {
            group: group.to_string(),
        },
        ("delay", [group]) => Scenario::Delay {
            group: group.to_string(),
        },
        ("transaction", [group]) => Scenario::Transaction {
            group: group.to_string(),
        },
        ("dlq", [group]) => Scenario::Dlq {
            group: group.to_string(),
        },
        _ => return None,
    };
    Some((ap.to_string(), topic.to_string(), scenario))
}

async fn run(access_point: &str, topic: &str, scenario: Scenario) -> Result<Value> {
    match scenario {
        Scenario::Produce { count } => produce::run(access_point, topic, count).await,
        Scenario::Simple { group, n } => simple::run(access_point, topic, &group, n).await,
        Scenario::Fifo { group } => fifo::run(access_point, topic, &group).await,
        Scenario::Delay { group } => delay::run(access_point, topic, &group).await,
        Scenario::Transaction { group } => transaction::run(access_point, topic, &group).await,
        Scenario::Dlq { group } => dlq::run(access_point, topic, &group).await,
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((access_point, topic, scenario)) = parse(&args) else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let started = Instant::now();
    match run(&access_point, &topic, scenario).await {
        Ok(mut summary) => {
            summary["elapsed_ms"] = (started.elapsed().as_millis() as u64).into();
            println!("SUMMARY {summary}");
        }
        Err(e) => {
            eprintln!("FAILED {}: {e:#}", args.join(" "));
            std::process::exit(1);
        }
    }
}
