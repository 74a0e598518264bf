//! The order-log seam: where a node appends order events and waits for them
//! to be durable. Implementations: the embedded [`Journal`]; a Kafka topic
//! in cluster mode.

use std::future::Future;

use crate::{Event, Journal};

/// Why an append did not become durable. The node answers 503
/// `unavailable` and compensates.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log refused or failed the append; nothing was recorded.
    #[error("the order log is unavailable: {0}")]
    Unavailable(String),
    /// The append may or may not be recorded (a timed-out produce); the
    /// caller must reconcile by order id, never guess.
    #[error("the order log outcome is undetermined: {0}")]
    Undetermined(String),
}

impl LogError {
    /// The stable error code carried by the HTTP body.
    pub fn code(&self) -> &'static str {
        "unavailable"
    }

    /// Whether the same request may succeed if retried later: always (the
    /// log, or the way to it, may be back).
    pub fn is_retryable(&self) -> bool {
        true
    }
}

/// An append-only log of order events.
pub trait OrderLog: Send + Sync + 'static {
    /// Appends `event`; the future resolves once the event is durable. It
    /// does not borrow `self`, so a core can drop its borrow of the log
    /// before awaiting.
    fn append(&self, event: &Event) -> impl Future<Output = Result<(), LogError>> + 'static;
    /// Stops accepting appends and makes everything appended durable.
    fn close(&self);
}

impl OrderLog for Journal {
    fn append(&self, event: &Event) -> impl Future<Output = Result<(), LogError>> + 'static {
        let durable = self.append_encoded(event.to_json());
        async move {
            durable
                .await
                .map_err(|e| LogError::Unavailable(e.to_string()))
        }
    }

    fn close(&self) {
        Journal::close(self);
    }
}
