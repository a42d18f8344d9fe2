//! In-band statuses of the RocketMQ API, and what we know about the calling client.
//!
//! Every RPC answers with gRPC OK and a `Status {code, message}` inside the response; only
//! transport problems are gRPC errors. The official Rust client 5.0.0 was generated from the
//! March 2023 schema and panics on a `Code` it does not know, so codes added later are
//! replaced by their older, more general neighbour for such clients.

use rocketraft_proto::rocketmq::v2::{Code, Status};
use tonic::metadata::MetadataMap;

pub fn status(code: Code, message: impl Into<String>) -> Status {
    Status {
        code: code as i32,
        message: message.into(),
    }
}

/// The in-band answer of an RPC rocketraft does not serve (yet).
pub fn not_implemented(what: &str) -> Option<Status> {
    Some(status(
        Code::NotImplemented,
        format!("{what} is not implemented by rocketraft yet"),
    ))
}

pub fn ok() -> Status {
    status(Code::Ok, "OK")
}

/// The client as its request headers describe it.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub client_id: String,
    pub language: String,
    pub version: String,
}

impl ClientInfo {
    pub fn from_metadata(md: &MetadataMap) -> Self {
        let get = |k: &str| {
            md.get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        Self {
            client_id: get("x-mq-client-id"),
            language: get("x-mq-language"),
            version: get("x-mq-client-version"),
        }
    }

    /// Clients built from the 2023 schema: the Rust crate 5.0.x.
    fn knows_only_2023_codes(&self) -> bool {
        self.language.eq_ignore_ascii_case("RUST") && self.version.starts_with("5.0.")
    }

    /// `code`, or the nearest code this client knows.
    pub fn code(&self, code: Code) -> Code {
        if !self.knows_only_2023_codes() {
            return code;
        }
        match code {
            Code::IllegalOffset | Code::IllegalLiteTopic | Code::InvalidClientProperties => {
                Code::BadRequest
            }
            Code::OffsetNotFound => Code::NotFound,
            Code::MessageBodyEmpty => Code::BadRequest,
            Code::LiteTopicQuotaExceeded | Code::LiteSubscriptionQuotaExceeded => {
                Code::TooManyRequests
            }
            other => other,
        }
    }

    pub fn status(&self, code: Code, message: impl Into<String>) -> Status {
        status(self.code(code), message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_5_0_clients_never_see_codes_added_after_2023() {
        let rust = ClientInfo {
            language: "RUST".into(),
            version: "5.0.0".into(),
            ..Default::default()
        };
        let python = ClientInfo {
            language: "PYTHON".into(),
            version: "5.1.2".into(),
            ..Default::default()
        };
        assert_eq!(rust.code(Code::MessageBodyEmpty), Code::BadRequest);
        assert_eq!(rust.code(Code::OffsetNotFound), Code::NotFound);
        assert_eq!(
            rust.code(Code::MessageBodyTooLarge),
            Code::MessageBodyTooLarge
        );
        assert_eq!(python.code(Code::MessageBodyEmpty), Code::MessageBodyEmpty);
    }
}
