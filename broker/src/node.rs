//! One broker node's lifecycle: open storage, start Raft and the gRPC server, bootstrap
//! the group on first start, and shut down gracefully.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, SnapshotPolicy};
use rocketraft_proto::admin::broker_admin_server::BrokerAdminServer;
use rocketraft_raft_store::{
    LogStore, NetworkFactory, Raft, RaftTransportService, StateMachineStore, StateReader,
};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::admin::{ADMIN_MESSAGE_BYTES_MAX, AdminService};
use crate::config::BrokerConfig;
use crate::metrics::BrokerMetrics;
use crate::ops::RpcTimingLayer;
use crate::proposer::Proposer;
use crate::service::{
    MessagingServiceImpl, ServiceContext, TransactionChecks, delay, retention, transaction,
};

/// How long a write waits for a leader during an election before it fails.
const LEADER_WAIT: Duration = Duration::from_secs(5);
/// Shutdown budget for in-flight requests, then for Raft itself.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub struct BrokerNode {
    pub raft: Raft,
    pub reader: StateReader,
    pub local_addr: std::net::SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served, if configured.
    pub http_addr: Option<std::net::SocketAddr>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    stop_server: tokio::sync::oneshot::Sender<()>,
    stop_background: tokio::sync::watch::Sender<bool>,
}

fn raft_config(c: &BrokerConfig) -> anyhow::Result<openraft::Config> {
    let config = openraft::Config {
        cluster_name: c.group.clone(),
        heartbeat_interval: c.heartbeat_interval_ms,
        election_timeout_min: c.election_timeout_min_ms,
        election_timeout_max: c.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(c.snapshot_logs_since_last),
        max_in_snapshot_log_to_keep: c.log_keep_before_snapshot,
        // Bounded replication batches keep one slow follower from stalling the others.
        max_payload_entries: 512,
        install_snapshot_timeout: 10_000,
        ..Default::default()
    };
    config.validate().context("invalid raft settings")
}

impl BrokerNode {
    /// Starts the node and returns once it is serving; the group may still be electing.
    pub async fn start(config: BrokerConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let log_store = LogStore::open_with(&config.data_dir.join("raft-log"), config.log_flush())
            .context("opening the raft log")?;
        let state_machine = StateMachineStore::open(&config.data_dir.join("state"))
            .context("opening the state machine")?;
        let reader = state_machine.reader();
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config(&config)?),
            NetworkFactory::default(),
            log_store,
            state_machine,
        )
        .await
        .context("starting raft")?;

        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let http_listener = crate::ops::bind_http(config.http_listen).await?;
        let http_addr = http_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        // One proposer for every service, so its in-flight bound covers all proposals.
        let proposer = Proposer::new(raft.clone(), LEADER_WAIT);
        let mut ctx = ServiceContext::new(
            config.node_id,
            config.group.clone(),
            config.advertised_addr(),
            raft.clone(),
            reader.clone(),
            proposer.clone(),
            TransactionChecks {
                first: Duration::from_millis(config.transaction_check_first_ms),
                interval: Duration::from_millis(config.transaction_check_interval_ms),
                max: config.transaction_check_max,
            },
        );
        ctx.auto_create_topic_queues = config.auto_create_topic_queues;
        let disk = Arc::new(crate::disk::DiskGuard::new(
            config.node_id,
            config.data_dir.clone(),
            config.disk_min_free_bytes,
        ));
        // The first sample before serving, so a full disk is known from the first request.
        disk.sample();
        ctx.disk = Some(disk.clone());
        let ctx = Arc::new(ctx);
        // Background work every node runs: delivering due DELAY messages (the leader) and
        // checking unresolved transactions with connected producers.
        let (stop_background, background) = tokio::sync::watch::channel(false);
        tokio::spawn(delay::run_timers(ctx.clone(), background.clone()));
        tokio::spawn(transaction::run_checks(ctx.clone(), background.clone()));
        tokio::spawn(retention::run(
            ctx.clone(),
            Duration::from_millis(config.retention_check_interval_ms),
            background.clone(),
        ));
        let reporter = crate::report::Reporter {
            group: config.group.clone(),
            node_id: config.node_id,
            addr: config.advertised_addr(),
            raft: raft.clone(),
            reader: reader.clone(),
            nameservers: config.nameservers.clone(),
            interval: Duration::from_millis(config.nameserver_report_interval_ms),
        };
        tokio::spawn(reporter.run(background.clone()));
        let messaging = MessagingServiceImpl::new(ctx);
        let admin = AdminService {
            node_id: config.node_id,
            group: config.group.clone(),
            raft: raft.clone(),
            reader: reader.clone(),
            proposer: proposer.clone(),
            election_lease: Duration::from_millis(config.election_timeout_max_ms),
            hold_generation: Arc::default(),
            disk: Some(disk.clone()),
        };
        tokio::spawn(disk.run(raft.clone(), proposer.clone(), stop_background.subscribe()));
        let metrics = Arc::new(
            BrokerMetrics::new(
                raft.clone(),
                reader.clone(),
                proposer,
                config.data_dir.clone(),
            )
            .context("registering metrics")?,
        );
        tokio::spawn(metrics.clone().watch_raft(stop_background.subscribe()));
        if let Some(l) = http_listener {
            crate::ops::spawn_http(l, metrics.clone(), stop_background.subscribe());
        }
        let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
        let router =
            rocketraft_proto::transport::server_windows(tonic::transport::Server::builder())
                .tcp_nodelay(true)
                .layer(RpcTimingLayer::new(metrics.rpc.clone()))
                .add_service(RaftTransportService::new(raft.clone()).into_server())
                .add_service(messaging.into_server())
                .add_service(
                    BrokerAdminServer::new(admin)
                        .max_decoding_message_size(ADMIN_MESSAGE_BYTES_MAX)
                        .max_encoding_message_size(ADMIN_MESSAGE_BYTES_MAX),
                );
        // Socket options on the builder only reach sockets tonic binds itself; ours come from
        // our own listener, so TCP_NODELAY is set here. Without it, Nagle plus delayed ACKs
        // stall small replies for ~40 ms.
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.await;
        }));

        // Every node initializes with the same membership; openraft accepts that, and
        // refuses (harmlessly) on a node whose log already holds a membership.
        if config.join {
            tracing::info!(
                node_id = config.node_id,
                "joining: waiting for the group's leader to add this node"
            );
        } else if !raft.is_initialized().await? {
            let members: BTreeMap<u64, BasicNode> = config
                .members
                .iter()
                .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
                .collect();
            match raft.initialize(members).await {
                Ok(()) => {
                    tracing::info!(node_id = config.node_id, "initialized the group membership")
                }
                Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                    tracing::info!(node_id = config.node_id, "group already initialized: {e}")
                }
                Err(e) => return Err(e).context("initializing the group"),
            }
        }
        #[cfg(feature = "fault-injection")]
        if let Some(fault) = rocketraft_raft_store::fault::active() {
            tracing::warn!(?fault, "FAULT INJECTION: this node is broken on purpose");
        }
        tracing::info!(node_id = config.node_id, group = %config.group, addr = %local_addr, "broker node serving");
        Ok(Self {
            raft,
            reader,
            local_addr,
            http_addr,
            server,
            stop_server,
            stop_background,
        })
    }

    /// Stops accepting, lets in-flight requests finish (bounded), stops Raft and flushes
    /// the state machine.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop_server.send(());
        let _ = self.stop_background.send(true);
        match tokio::time::timeout(DRAIN_TIMEOUT, self.server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!("server ended with an error: {e}"),
            Ok(Err(e)) => tracing::warn!("server task failed: {e}"),
            Err(_) => tracing::warn!("in-flight requests did not finish within {DRAIN_TIMEOUT:?}"),
        }
        match tokio::time::timeout(DRAIN_TIMEOUT, self.raft.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("raft shutdown: {e}"),
            Err(_) => tracing::warn!("raft did not stop within {DRAIN_TIMEOUT:?}"),
        }
        self.reader.flush().context("flushing the state machine")?;
        tracing::info!("broker node stopped");
        Ok(())
    }
}
