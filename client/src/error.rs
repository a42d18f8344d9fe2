//! The client's errors. Every server answer that is not a success becomes one of these;
//! nothing the server sends makes the client panic.

use rocketraft_proto::rocketmq::v2 as pb;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The call did not get an answer: connection refused or reset, deadline exceeded.
    #[error("{context}: {status}")]
    Transport {
        context: String,
        status: tonic::Status,
    },
    /// The server answered with a code other than OK.
    #[error("{context}: server answered {code:?}: {message}")]
    Server {
        context: String,
        code: pb::Code,
        message: String,
    },
    /// No live broker group hosts the topic (per every nameserver asked).
    #[error("topic {0:?} has no route: no live broker group hosts it")]
    NoRoute(String),
    /// The caller's input breaks a limit; nothing was sent.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The client was shut down.
    #[error("the client is closed")]
    Closed,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn transport(context: impl Into<String>, status: tonic::Status) -> Self {
        Error::Transport {
            context: context.into(),
            status,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The error for an in-band status that is not OK, or `None` when it is OK.
    pub(crate) fn check(context: &str, status: Option<&pb::Status>) -> Result<()> {
        let Some(s) = status else {
            return Err(Error::Server {
                context: context.into(),
                code: pb::Code::Unspecified,
                message: "the answer carries no status".into(),
            });
        };
        let code = pb::Code::try_from(s.code).unwrap_or(pb::Code::Unspecified);
        if code == pb::Code::Ok {
            return Ok(());
        }
        Err(Error::Server {
            context: context.into(),
            code,
            message: s.message.clone(),
        })
    }

    /// The in-band code, for server answers.
    pub fn code(&self) -> Option<pb::Code> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether trying again (after a pause, perhaps at another node) may succeed: the
    /// transport failed, the server was busy, or it had no leader for a moment. Bad input,
    /// missing topics and refused permissions are final.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Transport { status, .. } => matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Aborted
            ),
            Error::Server { code, .. } => matches!(
                code,
                pb::Code::TooManyRequests
                    | pb::Code::InternalError
                    | pb::Code::InternalServerError
                    | pb::Code::HaNotAvailable
                    | pb::Code::ProxyTimeout
                    | pb::Code::MasterPersistenceTimeout
                    | pb::Code::SlavePersistenceTimeout
                    | pb::Code::RequestTimeout
            ),
            Error::NoRoute(_) => true,
            Error::Invalid { .. } | Error::Closed => false,
        }
    }
}
