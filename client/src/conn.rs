//! Channels to nameservers and broker nodes, and the headers every call carries.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rocketraft_proto::nameserver::nameserver_admin_client::NameserverAdminClient;
use rocketraft_proto::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};

/// One client's connections: lazily connected channels by address, shared by its calls.
pub(crate) struct Connections {
    client_id: String,
    request_timeout: Duration,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Connections {
    pub fn new(client_id: String, request_timeout: Duration) -> Self {
        Self {
            client_id,
            request_timeout,
            channels: Mutex::new(HashMap::new()),
        }
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    fn channel(&self, addr: &str) -> Result<Channel> {
        let mut channels = self.channels.lock().expect("lock poisoned");
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let uri = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| Error::invalid("address", format!("{addr:?} is not an address: {e}")))?;
        let c = rocketraft_proto::transport::endpoint_windows(endpoint)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(1))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect_lazy();
        channels.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    pub fn messaging(&self, addr: &str) -> Result<MessagingServiceClient<Channel>> {
        Ok(MessagingServiceClient::new(self.channel(addr)?))
    }

    pub fn nameserver(&self, addr: &str) -> Result<NameserverAdminClient<Channel>> {
        Ok(NameserverAdminClient::new(self.channel(addr)?))
    }

    /// Calls `call` at each of `addrs` in turn until one answers; a transport failure moves
    /// on to the next address (nodes of one group all serve every call).
    pub async fn first_answer<T, F, Fut>(
        &self,
        addrs: &[String],
        what: &str,
        mut call: F,
    ) -> Result<T>
    where
        F: FnMut(MessagingServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut last = None;
        for addr in addrs {
            match call(self.messaging(addr)?).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) => last = Some(Error::transport(format!("{what} at {addr}"), s)),
            }
        }
        Err(last.unwrap_or_else(|| Error::invalid("addresses", format!("no node to {what}"))))
    }

    /// `msg` with the client's headers and the request timeout.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        self.request_with_timeout(msg, self.request_timeout)
    }

    /// `msg` with the client's headers and `timeout` (long polls wait longer than calls).
    pub fn request_with_timeout<T>(&self, msg: T, timeout: Duration) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(timeout);
        let md = req.metadata_mut();
        if let Ok(v) = MetadataValue::try_from(self.client_id.as_str()) {
            md.insert("x-mq-client-id", v);
        }
        md.insert("x-mq-language", MetadataValue::from_static("RUST"));
        md.insert("x-mq-protocol", MetadataValue::from_static("v2"));
        md.insert(
            "x-mq-client-version",
            MetadataValue::from_static(concat!("rocketraft-", env!("CARGO_PKG_VERSION"))),
        );
        req
    }
}
