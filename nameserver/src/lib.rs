//! rocketraft's nameserver: where broker nodes report, where clients find routes.
//!
//! - [`registry`]: the route table, merged by version from broker reports and peers;
//! - [`server`]: the process: report intake, push-pull gossip with peer nameservers, the
//!   admin API (topics and consumer groups across broker groups, cluster status);
//! - [`access`]: the clients' access point, `apache.rocketmq.v2.MessagingService`;
//! - [`metrics`]: `/metrics` and `/readyz` on the HTTP endpoint;
//! - [`config`]: TOML, environment and flags.

pub mod access;
pub mod config;
pub mod metrics;
pub mod registry;
pub mod server;
