//! Where the audit reads the order log from.
//!
//! [`OrderLogSource`] is the seam: the embedded node's journal file today
//! ([`JournalFile`]); the Kafka topic of cluster mode plugs in as another
//! [`LogSpec`] variant and source once the node can write one.
//!
//! [`JournalFile`] is a read-only reader of the journal format (see
//! `queue::journal`): magic `SKJRNL01`, then frames of `u32 LE len | u32 LE
//! crc32 | JSON event`. It never writes, so it can read a live node's file:
//! an incomplete frame at the end is a write in progress (or a torn tail)
//! and is left out; a bad frame with a valid frame after it is corruption
//! and an error, as it is for the node.

use std::fs;
use std::path::PathBuf;

use queue::journal::MAGIC;
use queue::Event;

use crate::BenchError;

/// Largest frame payload the journal writes.
const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;
const FRAME_HEADER: usize = 8;

/// The events of an order log, as the audit sees them.
#[derive(Debug, Default)]
pub struct LogContents {
    pub events: Vec<Event>,
    /// Bytes at the end that did not make a whole valid frame.
    pub torn_tail_bytes: usize,
    /// Events of a schema version newer than this build knows (skipped).
    pub unknown_versions: usize,
}

/// A readable order log.
pub trait OrderLogSource {
    /// What it reads, for the report (`journal /path/orders.journal`).
    fn describe(&self) -> String;
    /// Every event currently in the log, in log order.
    fn read(&self) -> Result<LogContents, BenchError>;
}

/// Which order log to audit, as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogSpec {
    /// The embedded node's `orders.journal` (a file path, or the data dir).
    Journal(PathBuf),
}

impl LogSpec {
    /// Opens the source.
    pub fn source(&self) -> Box<dyn OrderLogSource> {
        match self {
            LogSpec::Journal(path) => {
                let path = if path.is_dir() {
                    path.join(queue::journal::FILE_NAME)
                } else {
                    path.clone()
                };
                Box::new(JournalFile { path })
            }
        }
    }
}

/// A journal file read without opening it for writing.
#[derive(Clone, Debug)]
pub struct JournalFile {
    pub path: PathBuf,
}

impl OrderLogSource for JournalFile {
    fn describe(&self) -> String {
        format!("journal {}", self.path.display())
    }

    fn read(&self) -> Result<LogContents, BenchError> {
        let bytes = fs::read(&self.path)
            .map_err(|e| BenchError::Log(format!("cannot read {}: {e}", self.path.display())))?;
        parse_journal(&bytes).map_err(|e| BenchError::Log(format!("{}: {e}", self.path.display())))
    }
}

/// Decodes a whole journal image.
pub fn parse_journal(bytes: &[u8]) -> Result<LogContents, String> {
    if bytes.len() < MAGIC.len() {
        // A file created but not yet given its magic is an empty log.
        return if MAGIC.starts_with(bytes) {
            Ok(LogContents {
                torn_tail_bytes: bytes.len(),
                ..LogContents::default()
            })
        } else {
            Err("not a journal (bad magic)".into())
        };
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a journal (bad magic)".into());
    }
    let mut out = LogContents::default();
    let mut at = MAGIC.len();
    while at < bytes.len() {
        match frame_at(bytes, at) {
            Some(payload) => {
                let event: serde_json::Value = serde_json::from_slice(payload)
                    .map_err(|e| format!("frame at byte {at} is not JSON: {e}"))?;
                if event.get("v").and_then(|v| v.as_u64())
                    > Some(u64::from(queue::event::SCHEMA_VERSION))
                {
                    out.unknown_versions += 1;
                } else {
                    let event: Event = serde_json::from_value(event)
                        .map_err(|e| format!("frame at byte {at} is not an event: {e}"))?;
                    out.events.push(event);
                }
                at += FRAME_HEADER + payload.len();
            }
            None => {
                if (at + 1..bytes.len()).any(|later| frame_at(bytes, later).is_some()) {
                    return Err(format!(
                        "bad frame at byte {at} with valid frames after it: the journal is corrupt"
                    ));
                }
                out.torn_tail_bytes = bytes.len() - at;
                break;
            }
        }
    }
    Ok(out)
}

/// The payload of a whole, CRC-valid frame starting at `at`.
fn frame_at(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let header = bytes.get(at..at + FRAME_HEADER)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len > MAX_RECORD_BYTES {
        return None;
    }
    let payload = bytes.get(at + FRAME_HEADER..at + FRAME_HEADER + len)?;
    (crc32fast::hash(payload) == crc).then_some(payload)
}

/// Encodes events as a journal image (for tests and for cutting copies).
pub fn encode_journal(events: &[Event]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    for e in events {
        let payload = e.to_json();
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use queue::EventKind;

    fn reserved(id: &str) -> Event {
        Event::new(
            1,
            EventKind::OrderReserved {
                order_id: id.into(),
                sale_id: "s".into(),
                user_id: "u".into(),
                quantity: 1,
                expires_at: 9,
                idempotency_key: None,
                fingerprint: None,
            },
        )
    }

    #[test]
    fn reads_what_the_queue_journal_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) =
            queue::Journal::open(dir.path(), queue::JournalOptions::default()).unwrap();
        for i in 0..3 {
            let durable = journal.append(&reserved(&format!("o{i}")));
            block_on(durable).unwrap();
        }
        journal.close();
        let log = LogSpec::Journal(dir.path().to_path_buf())
            .source()
            .read()
            .unwrap();
        assert_eq!(log.events.len(), 3);
        assert_eq!(log.events[2], reserved("o2"));
        assert_eq!(log.torn_tail_bytes, 0);
    }

    #[test]
    fn torn_tail_is_left_out_and_corruption_is_an_error() {
        let image = encode_journal(&[reserved("a"), reserved("b"), reserved("c")]);
        let torn = &image[..image.len() - 3];
        let log = parse_journal(torn).unwrap();
        assert_eq!(log.events.len(), 2);
        assert!(log.torn_tail_bytes > 0);
        // Flip a byte in the middle frame: valid data follows, so corrupt.
        let mut bad = image.clone();
        let second = MAGIC.len() + FRAME_HEADER + reserved("a").to_json().len() + FRAME_HEADER + 5;
        bad[second] ^= 0x20;
        assert!(parse_journal(&bad).unwrap_err().contains("corrupt"));
        assert!(parse_journal(b"NOTAJRNL").is_err());
        assert_eq!(parse_journal(&MAGIC[..3]).unwrap().events.len(), 0);
    }

    /// Polls a future to completion on this thread.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        use std::sync::Arc;
        use std::task::{Context, Poll, Wake, Waker};
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }
}
