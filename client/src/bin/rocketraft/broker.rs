//! `rocketraft broker ...`: a broker group's members and leader ("group" means a consumer
//! group elsewhere in this command line, as in RocketMQ).

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use rocketraft_client::admin::Admin;
use rocketraft_client::membership::BrokerGroup;

use crate::print;

#[derive(Args)]
pub struct Target {
    /// The broker group; its nodes are found through the nameserver.
    #[arg(long = "broker-group")]
    group: Option<String>,
    /// Nodes of the group to ask instead (host:port, comma-separated; any live one will do).
    #[arg(long, value_delimiter = ',', required_unless_present = "group")]
    nodes: Vec<String>,
}

#[derive(Subcommand)]
pub enum BrokerCommand {
    /// Members of a broker group, its leader and each member's lag.
    /// Example: rocketraft broker members --broker-group g1
    Members(Target),
    /// Add a node (started with --join) to a group: learner, catch-up, then voter.
    /// Example: rocketraft broker add --broker-group g1 --node-id 4 --addr 10.0.0.4:8081
    Add {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        node_id: u64,
        /// Where the group's nodes and clients reach the new node.
        #[arg(long)]
        addr: String,
        /// Stop once it caught up as a learner (it does not vote).
        #[arg(long)]
        learner_only: bool,
        /// How long the node may take to catch up (e.g. 60s, 10m).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        catch_up_timeout: Duration,
    },
    /// Remove a node from its group (the leader hands leadership over first).
    /// Example: rocketraft broker remove --broker-group g1 --node-id 3
    Remove {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        node_id: u64,
    },
    /// Hand a group's leadership to one of its voters.
    /// Example: rocketraft broker transfer-leader --broker-group g1 --to 2
    TransferLeader {
        #[command(flatten)]
        target: Target,
        /// The voter to lead.
        #[arg(long)]
        to: u64,
    },
}

async fn group(nameserver: &str, t: &Target) -> anyhow::Result<BrokerGroup> {
    if !t.nodes.is_empty() {
        return BrokerGroup::new(t.nodes.clone());
    }
    let name = t
        .group
        .as_deref()
        .context("--broker-group or --nodes is required")?;
    let groups = Admin::connect(nameserver).await?.cluster_status().await?;
    let g = groups.iter().find(|g| g.name == name).with_context(|| {
        format!(
            "broker group {name:?} is unknown to the nameserver (groups: {})",
            groups
                .iter()
                .map(|g| g.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    // The leader first: it answers without forwarding.
    let mut nodes: Vec<_> = g.nodes.iter().filter(|n| !n.down).collect();
    nodes.sort_by_key(|n| Some(n.node_id) != g.leader);
    BrokerGroup::new(nodes.iter().map(|n| n.addr.clone()).collect())
}

pub async fn run(nameserver: &str, json: bool, cmd: BrokerCommand) -> anyhow::Result<()> {
    match cmd {
        BrokerCommand::Members(t) => {
            let m = group(nameserver, &t).await?.status().await?;
            print(json, &m, || {
                let mut out = format!(
                    "group {}: leader {} (term {}, commit index {})\n",
                    m.group,
                    m.leader.map_or("none".into(), |l| l.to_string()),
                    m.term,
                    m.commit_index
                );
                for n in &m.members {
                    out += &format!(
                        "  node {} {} {} lag {}\n",
                        n.node_id,
                        n.addr,
                        if n.voter { "voter" } else { "learner" },
                        n.lag.map_or("-".into(), |l| l.to_string())
                    );
                }
                out
            })
        }
        BrokerCommand::Add {
            target,
            node_id,
            addr,
            learner_only,
            catch_up_timeout,
        } => {
            let m = group(nameserver, &target)
                .await?
                .add(node_id, &addr, learner_only, catch_up_timeout)
                .await?;
            print(json, &m, || {
                format!(
                    "node {node_id} added; voters {:?}, learners {:?}\n",
                    m.voters, m.learners
                )
            })
        }
        BrokerCommand::Remove { target, node_id } => {
            let m = group(nameserver, &target).await?.remove(node_id).await?;
            print(json, &m, || {
                format!(
                    "node {node_id} removed; voters {:?}, learners {:?}\n",
                    m.voters, m.learners
                )
            })
        }
        BrokerCommand::TransferLeader { target, to } => {
            let (leader, term) = group(nameserver, &target)
                .await?
                .transfer_leader(to)
                .await?;
            print(
                json,
                &serde_json::json!({"leader": leader, "term": term}),
                || format!("node {leader} leads (term {term})\n"),
            )
        }
    }
}
