//! The embedded order log: an append-only file of CRC-framed records, written
//! by one dedicated thread with group commit (one `fdatasync` per batch).
//!
//! File format (`<data-dir>/orders.journal`):
//!
//! ```text
//! "SKJRNL01"                      8-byte header magic
//! u32 LE len | u32 LE crc | payload   one frame per record, repeated
//! ```
//!
//! `len` is the payload length (1..=[`MAX_RECORD_BYTES`]), `crc` the CRC-32
//! (crc32fast) of the payload, and the payload one [`Event`] as JSON.
//!
//! The life of an append:
//! 1. [`Journal::append`] encodes the event and computes its CRC on the
//!    caller's thread, pushes the frame on a queue and returns a [`Durable`]
//!    future; it never does I/O.
//! 2. The writer thread (`seckill-journal`) wakes, takes everything queued
//!    (up to [`JournalOptions::max_batch_bytes`]), writes it with one
//!    `write_all` of a contiguous buffer and calls `sync_data` once.
//! 3. Every [`Durable`] of the batch resolves `Ok(())`. If the write or the
//!    sync fails, the batch and every later append fail: the file is in an
//!    unknown state and the node must answer 503 (fail closed).
//!
//! Recovery ([`Journal::open`]) replays the file. A torn tail — what a crash
//! in the middle of a batch leaves — is cut off; a bad frame with good data
//! after it is corruption and stops the node rather than silently dropping
//! records that were once acknowledged.
//!
//! Segments and compaction. With [`JournalOptions::segment_bytes`] set, the
//! writer seals the file once a synced batch takes it past that size:
//! `orders.journal` is renamed `orders.journal.<gen>` (20 digits, rising),
//! a fresh `orders.journal` gets its header and is synced, then the
//! directory; [`JournalOptions::on_seal`] hears the sealed generation. A
//! compactor (the node's) folds sealed segments into a snapshot
//! (`crate::snapshot`, which names the last segment it covers) and then
//! removes them. [`Journal::recover`] reads the snapshot, removes the
//! segments it covers, and returns the events of the others and of
//! `orders.journal`, in order. A crash at any step leaves files that
//! recover to the same events: a sealed segment is whole (it was synced
//! before the rename), a missing `orders.journal` is made afresh, a
//! segment the snapshot covers is skipped.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll};
use std::thread::{self, JoinHandle};

use parking_lot::{Condvar, Mutex};
use serde::Deserialize;
use tokio::sync::oneshot;

use crate::event::{Event, SCHEMA_VERSION};
use crate::snapshot::{self, Snapshot, SnapshotError};

/// Name of the journal file inside the data directory.
pub const FILE_NAME: &str = "orders.journal";
/// The 8 bytes a journal file starts with.
pub const MAGIC: &[u8; 8] = b"SKJRNL01";
/// Largest payload a frame may carry; a longer length field is a bad frame.
pub const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;
/// Bytes of a frame header: payload length and CRC.
pub const FRAME_HEADER: usize = 8;

/// How the writer batches and syncs.
#[derive(Clone, Debug)]
pub struct JournalOptions {
    /// true: one fdatasync per batch of whatever records are queued (group commit, the default).
    /// false: one fdatasync per record (the naive baseline, for benchmarks).
    pub group_commit: bool,
    /// Upper bound of bytes written per batch (default 1 MiB). A single
    /// record larger than this is still written, alone.
    pub max_batch_bytes: usize,
    /// Seal `orders.journal` as a segment once a batch takes it to this
    /// many bytes, for a compactor to fold into the snapshot; 0 (the
    /// default) never seals.
    pub segment_bytes: u64,
    /// Told the generation of every segment sealed.
    pub on_seal: Option<mpsc::Sender<u64>>,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            group_commit: true,
            max_batch_bytes: 1024 * 1024,
            segment_bytes: 0,
            on_seal: None,
        }
    }
}

/// What [`Journal::recover`] found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The snapshot, if one was installed.
    pub snapshot: Option<Snapshot>,
    /// Events after the snapshot: those of the sealed segments it does not
    /// cover, then those of `orders.journal`.
    pub events: Vec<Event>,
    /// The sealed segments still to fold into the snapshot.
    pub sealed: Vec<u64>,
}

/// Counters since [`Journal::open`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Records written and synced.
    pub records: u64,
    /// `fdatasync` calls that succeeded.
    pub syncs: u64,
    /// Bytes written (frame headers included).
    pub bytes: u64,
}

/// Why the journal could not open, replay or make a record durable.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O failed: {0}")]
    Io(#[from] io::Error),
    /// A bad frame with further data after it: not a torn tail. The node
    /// must not start on it; an operator has to look at the file.
    #[error("journal is corrupt at byte offset {offset}: a bad frame is followed by further data")]
    Corrupt { offset: u64 },
    /// The file does not start with [`MAGIC`].
    #[error("{} is not a seckill journal: bad header", path.display())]
    BadHeader { path: PathBuf },
    /// A frame with a good CRC whose payload is not an event of a known
    /// schema version.
    #[error("journal record at byte offset {offset} is not a valid event: {source}")]
    Undecodable {
        offset: u64,
        #[source]
        source: serde_json::Error,
    },
    /// An empty payload or one over [`MAX_RECORD_BYTES`]; nothing was queued.
    #[error("journal record of {len} bytes is outside 1..={MAX_RECORD_BYTES}")]
    RecordSize { len: usize },
    /// A record of a schema version newer than this build knows: the node
    /// must not start without it (a newer build reads it).
    #[error(
        "journal record at byte offset {offset} has schema version {v}, newer than this build \
         reads ({SCHEMA_VERSION}): run a newer seckill"
    )]
    NewerSchema { offset: u64, v: u32 },
    /// The journal was closed before this append.
    #[error("journal is closed")]
    Closed,
    /// The snapshot could not be read.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// [`Journal::open`] found a snapshot: the events alone are not the
    /// state; use [`Journal::recover`].
    #[error("{} holds a snapshot: recover it with the snapshot", dir.display())]
    HasSnapshot { dir: PathBuf },
    /// A sealed segment is not whole (segments are synced before they are
    /// sealed).
    #[error("sealed journal segment {} is damaged", path.display())]
    DamagedSegment { path: PathBuf },
    /// An earlier write or sync failed (or the writer stopped); the journal
    /// accepts no more appends until it is reopened.
    #[error("journal failed and accepts no more appends: {reason}")]
    Failed { reason: String },
}

impl JournalError {
    /// The stable error code of the HTTP body: the order log is unavailable,
    /// whatever the cause, and the node answers 503.
    pub fn code(&self) -> &'static str {
        "unavailable"
    }
}

/// Handle to the embedded order log. Cheap to clone; `Send + Sync`. When the
/// last handle is dropped the writer flushes what is queued and exits.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

impl Journal {
    /// Opens (creating if missing) `dir/orders.journal`, replays it, and starts the writer thread.
    /// Returns the handle and every event already in the file, in order.
    ///
    /// A torn tail (an incomplete last frame, a last frame whose CRC fails
    /// and that reaches the end of the file, or a bad frame followed only by
    /// zero bytes) is dropped: the file is truncated to the end of the last
    /// good frame and a warning says how many bytes were cut. It is only
    /// treated as torn if no complete valid frame starts anywhere after it,
    /// so a damaged length field cannot hide acknowledged records. Any other
    /// bad frame is [`JournalError::Corrupt`].
    ///
    /// An event of a newer schema version than this build knows stops the
    /// open ([`JournalError::NewerSchema`]): skipping it would forget what
    /// it records (an order's units could be sold again). A newer build
    /// reads it.
    pub fn open(dir: &Path, opts: JournalOptions) -> Result<(Journal, Vec<Event>), JournalError> {
        let (journal, recovered) = Journal::recover(dir, opts)?;
        if recovered.snapshot.is_some() {
            journal.close();
            return Err(JournalError::HasSnapshot {
                dir: dir.to_owned(),
            });
        }
        Ok((journal, recovered.events))
    }

    /// Like [`Journal::open`], with segments and the snapshot: returns the
    /// snapshot (if any) and the events after it. Segments the snapshot
    /// covers are removed.
    pub fn recover(dir: &Path, opts: JournalOptions) -> Result<(Journal, Recovered), JournalError> {
        if !dir.exists() {
            fs::create_dir_all(dir)?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let snapshot = snapshot::read(dir)?;
        let covers = snapshot.as_ref().map_or(0, |s| s.covers);
        remove_sealed_upto(dir, covers, |_| {})?;
        let mut out = Recovered {
            snapshot,
            ..Recovered::default()
        };
        let mut last_gen = covers;
        for (gen, path) in sealed_segments(dir)? {
            out.events.extend(read_segment(&path)?);
            out.sealed.push(gen);
            last_gen = gen;
        }
        let (file, events) = open_file(dir)?;
        out.events.extend(events);
        let journal = Journal::start_file(dir, file, last_gen, opts)?;
        Ok((journal, out))
    }

    /// Opens a journal that is only an order log, not the node's state (a
    /// cluster node's: Redis holds the state): `orders.journal` is checked
    /// and cut at a torn tail as [`Journal::open`] does, but its events are
    /// not returned, and the sealed segments `orders.journal.<gen>` (sealed
    /// every `opts.segment_bytes`) are kept for the log's readers and never
    /// read here. So a restart reads at most one segment's worth, however
    /// many orders the node took. A data dir with a snapshot is refused (it
    /// holds an embedded node's state).
    pub fn open_log(dir: &Path, opts: JournalOptions) -> Result<Journal, JournalError> {
        if dir.join(snapshot::FILE_NAME).exists() {
            return Err(JournalError::HasSnapshot {
                dir: dir.to_owned(),
            });
        }
        let (file, _) = open_file(dir)?;
        let last_gen = sealed_segments(dir)?.last().map_or(0, |(gen, _)| *gen);
        Journal::start_file(dir, file, last_gen, opts)
    }

    /// Starts the writer on the open `orders.journal` of `dir`, sealing it
    /// as generation `last_gen + 1` onwards.
    fn start_file(
        dir: &Path,
        file: File,
        last_gen: u64,
        opts: JournalOptions,
    ) -> Result<Journal, JournalError> {
        let sink = FileSink {
            dir: dir.to_owned(),
            len: file.metadata()?.len(),
            file,
            next_gen: last_gen + 1,
            limit: opts.segment_bytes,
            on_seal: opts.on_seal.clone(),
        };
        Journal::start(Box::new(sink), opts)
    }

    /// Queues one event. The returned future resolves once the record is
    /// durable (written and fdatasync'ed). Dropping the future does not
    /// withdraw the record.
    pub fn append(&self, event: &Event) -> Durable {
        self.append_encoded(event.to_json())
    }

    /// Same, with bytes already produced by [`Event::to_json`] (so the
    /// encoding cost stays on the caller's core). Other bytes are written as
    /// given and make the next [`Journal::open`] fail with
    /// [`JournalError::Undecodable`].
    pub fn append_encoded(&self, payload: Vec<u8>) -> Durable {
        if payload.is_empty() || payload.len() > MAX_RECORD_BYTES {
            return Durable::ready(Err(JournalError::RecordSize { len: payload.len() }));
        }
        let header = frame_header(&payload);
        let (done, rx) = oneshot::channel();
        let shared = &self.inner.shared;
        let mut queue = shared.queue.lock();
        if let Some(reason) = &queue.failed {
            let reason = reason.clone();
            drop(queue);
            return Durable::ready(Err(JournalError::Failed { reason }));
        }
        if queue.closed {
            drop(queue);
            return Durable::ready(Err(JournalError::Closed));
        }
        queue.pending.push_back(Pending {
            header,
            payload,
            done,
        });
        drop(queue);
        shared.wake_writer.notify_one();
        Durable {
            state: DurableState::Waiting(rx),
        }
    }

    /// Stops accepting appends, flushes and fsyncs what is queued, joins
    /// the writer thread. Idempotent; a second caller waits for the first.
    /// Blocks until the flush is done: call it on the shutdown path, not
    /// from inside a runtime's task.
    pub fn close(&self) {
        self.inner.close();
    }

    /// Records, syncs and bytes written since open.
    pub fn stats(&self) -> JournalStats {
        let s = &self.inner.shared.stats;
        JournalStats {
            records: s.records.load(Ordering::Relaxed),
            syncs: s.syncs.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
        }
    }

    /// Starts the writer thread over `sink`, positioned where frames go.
    fn start(sink: Box<dyn Sink>, opts: JournalOptions) -> Result<Journal, JournalError> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake_writer: Condvar::new(),
            stats: Stats::default(),
        });
        let writer_shared = Arc::clone(&shared);
        let writer = thread::Builder::new()
            .name("seckill-journal".into())
            .spawn(move || run_writer(&writer_shared, sink, &opts))?;
        Ok(Journal {
            inner: Arc::new(Inner {
                shared,
                writer: Mutex::new(Some(writer)),
            }),
        })
    }
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Resolves once an appended record is durable, or with the reason it
/// never will be. `Send`, runtime-agnostic.
#[must_use = "a record is only durable once its Durable resolves Ok"]
pub struct Durable {
    state: DurableState,
}

enum DurableState {
    Waiting(oneshot::Receiver<Result<(), JournalError>>),
    Ready(Option<Result<(), JournalError>>),
}

impl Durable {
    fn ready(result: Result<(), JournalError>) -> Self {
        Durable {
            state: DurableState::Ready(Some(result)),
        }
    }
}

impl Future for Durable {
    type Output = Result<(), JournalError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            DurableState::Waiting(rx) => match Pin::new(rx).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(result)) => Poll::Ready(result),
                // The writer dropped the waiter without an answer: it
                // panicked, so the record's fate is unknown.
                Poll::Ready(Err(_)) => Poll::Ready(Err(JournalError::Failed {
                    reason: "the journal writer stopped before the record was durable".into(),
                })),
            },
            DurableState::Ready(result) => {
                Poll::Ready(result.take().expect("Durable polled after completion"))
            }
        }
    }
}

impl fmt::Debug for Durable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Durable").finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------
// Writer side.

/// Where the writer puts bytes: the journal file, or a fake in tests.
trait Sink: Send + 'static {
    /// Writes the whole batch (one `write_all`).
    fn write_batch(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes what was written durable (`fdatasync`).
    fn sync(&mut self) -> io::Result<()>;
    /// Called after every synced batch (the file sink seals a full
    /// segment here). An error fails the journal.
    fn after_batch(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The journal files of a data directory: `orders.journal`, sealed into a
/// segment when it reaches `limit` bytes.
struct FileSink {
    dir: PathBuf,
    file: File,
    /// Bytes in `orders.journal`.
    len: u64,
    /// The generation the next sealed segment gets.
    next_gen: u64,
    /// 0: never seal.
    limit: u64,
    on_seal: Option<mpsc::Sender<u64>>,
}

impl Sink for FileSink {
    fn write_batch(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.len += buf.len() as u64;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn after_batch(&mut self) -> io::Result<()> {
        if self.limit == 0 || self.len < self.limit {
            return Ok(());
        }
        // Everything in the file is synced. After the rename a crash leaves
        // the segment whole and no `orders.journal` (made afresh on open);
        // after the new file's header is synced, an empty journal.
        let gen = self.next_gen;
        let live = self.dir.join(FILE_NAME);
        fs::rename(&live, segment_path(&self.dir, gen))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&live)?;
        write_header(&file)?;
        sync_dir(&self.dir)?;
        self.file = file;
        self.len = MAGIC.len() as u64;
        self.next_gen += 1;
        if let Some(tx) = &self.on_seal {
            // A compactor that has gone away finds the segment on the next start.
            let _ = tx.send(gen);
        }
        Ok(())
    }
}

/// The sealed segments of `dir`, oldest first.
pub fn sealed_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let gen = path
            .file_name()
            .and_then(OsStr::to_str)
            .and_then(|n| n.strip_prefix(FILE_NAME))
            .and_then(|n| n.strip_prefix('.'))
            .filter(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(gen) = gen {
            out.push((gen, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Every event of a sealed segment (which must be whole).
pub fn read_segment(path: &Path) -> Result<Vec<Event>, JournalError> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let replay = replay(&mut file, len, path)?;
    if replay.end != len {
        return Err(JournalError::DamagedSegment {
            path: path.to_owned(),
        });
    }
    Ok(replay.events)
}

/// Every event of a journal file, the live one of a running node too: a
/// torn tail (a frame being written) ends it. For readers beside the node
/// (`seckill trace`); a bad frame before the end is an error.
pub fn read_file(path: &Path) -> Result<Vec<Event>, JournalError> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    Ok(replay(&mut file, len, path)?.events)
}

/// The payload of the whole, CRC-valid frame that starts at `bytes[at]`;
/// `None` for a short, empty, oversized or bad-CRC frame. The read-only
/// view of the format for readers outside the journal (the harness's audit,
/// tests), which must not re-implement it.
pub fn frame_at(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let header = bytes.get(at..at.checked_add(FRAME_HEADER)?)?;
    let (plen, crc) = parse_header(header);
    if !(1..=MAX_RECORD_BYTES).contains(&plen) {
        return None;
    }
    let payload = bytes.get(at + FRAME_HEADER..at + FRAME_HEADER + plen)?;
    (crc32fast::hash(payload) == crc).then_some(payload)
}

/// The frames of a journal image (a whole `orders.journal` or segment read
/// into memory): `None` unless it starts with [`MAGIC`]; else an iterator
/// of `(offset, payload)` over the good frames in order, stopping at the
/// first bad one ([`Frames::end`] then says where: the end of the last good
/// frame). Read-only: nothing is decoded, truncated or judged a torn tail.
pub fn frames(bytes: &[u8]) -> Option<Frames<'_>> {
    bytes.starts_with(MAGIC).then_some(Frames {
        bytes,
        at: MAGIC.len(),
    })
}

/// See [`frames`].
#[derive(Clone, Debug)]
pub struct Frames<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Frames<'_> {
    /// Where the next frame would start: after the iterator is done, the
    /// end of the last good frame (the image's length if all were good).
    pub fn end(&self) -> usize {
        self.at
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = (usize, &'a [u8]);

    fn next(&mut self) -> Option<(usize, &'a [u8])> {
        let at = self.at;
        let payload = frame_at(self.bytes, at)?;
        self.at = at + FRAME_HEADER + payload.len();
        Some((at, payload))
    }
}

/// Removes the sealed segments up to generation `covers` (a snapshot holds
/// them), oldest first, calling `removed` after each; then syncs the
/// directory.
pub fn remove_sealed_upto(dir: &Path, covers: u64, mut removed: impl FnMut(u64)) -> io::Result<()> {
    let mut any = false;
    for (gen, path) in sealed_segments(dir)? {
        if gen > covers {
            break;
        }
        fs::remove_file(&path)?;
        any = true;
        removed(gen);
    }
    if any {
        sync_dir(dir)?;
    }
    Ok(())
}

fn segment_path(dir: &Path, gen: u64) -> PathBuf {
    dir.join(format!("{FILE_NAME}.{gen:020}"))
}

struct Inner {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    fn close(&self) {
        // Held while joining so a concurrent close() returns only once the
        // queue is flushed. The writer thread never takes this lock.
        let mut writer = self.writer.lock();
        let Some(handle) = writer.take() else { return };
        self.shared.queue.lock().closed = true;
        self.shared.wake_writer.notify_one();
        if handle.join().is_err() {
            tracing::error!("journal writer thread panicked");
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

struct Shared {
    queue: Mutex<Queue>,
    wake_writer: Condvar,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    records: AtomicU64,
    syncs: AtomicU64,
    bytes: AtomicU64,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<Pending>,
    closed: bool,
    /// Set once a write or sync failed; every later append fails with it.
    failed: Option<String>,
}

struct Pending {
    header: [u8; FRAME_HEADER],
    payload: Vec<u8>,
    done: oneshot::Sender<Result<(), JournalError>>,
}

impl Pending {
    fn frame_len(&self) -> usize {
        FRAME_HEADER + self.payload.len()
    }
}

/// The body of the `seckill-journal` thread.
fn run_writer(shared: &Shared, mut sink: Box<dyn Sink>, opts: &JournalOptions) {
    let _guard = FailOnPanic(shared);
    let mut batch: Vec<Pending> = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        {
            let mut queue = shared.queue.lock();
            while queue.pending.is_empty() && !queue.closed {
                shared.wake_writer.wait(&mut queue);
            }
            if queue.pending.is_empty() {
                return; // closed and drained
            }
            take_batch(&mut queue.pending, &mut batch, opts);
        }

        buf.clear();
        for p in &batch {
            buf.extend_from_slice(&p.header);
            buf.extend_from_slice(&p.payload);
        }
        let written = sink
            .write_batch(&buf)
            .and_then(|()| sink.sync())
            .and_then(|()| sink.after_batch());
        match written {
            Ok(()) => {
                let stats = &shared.stats;
                stats
                    .records
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                stats.syncs.fetch_add(1, Ordering::Relaxed);
                stats.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
                for p in batch.drain(..) {
                    // The caller may have dropped its Durable; nothing to do.
                    let _ = p.done.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "journal write failed; failing all appends");
                let reason = format!("write or sync failed: {e}");
                let rest = {
                    let mut queue = shared.queue.lock();
                    queue.failed = Some(reason.clone());
                    std::mem::take(&mut queue.pending)
                };
                for p in batch.drain(..) {
                    let _ = p
                        .done
                        .send(Err(io::Error::new(e.kind(), e.to_string()).into()));
                }
                for p in rest {
                    let _ = p.done.send(Err(JournalError::Failed {
                        reason: reason.clone(),
                    }));
                }
                return;
            }
        }
    }
}

/// If the writer thread unwinds, fails what is queued and every later
/// append; otherwise their `Durable`s would wait forever. Dropping a waiter's
/// sender resolves its `Durable` as failed.
struct FailOnPanic<'a>(&'a Shared);

impl Drop for FailOnPanic<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            let rest = {
                let mut queue = self.0.queue.lock();
                queue.failed = Some("the journal writer panicked".into());
                std::mem::take(&mut queue.pending)
            };
            drop(rest);
        }
    }
}

/// Moves the next batch from `pending` to `batch`: one record without group
/// commit; else everything queued up to `max_batch_bytes` (at least one).
fn take_batch(pending: &mut VecDeque<Pending>, batch: &mut Vec<Pending>, opts: &JournalOptions) {
    let mut bytes = 0;
    while let Some(next) = pending.front() {
        if !batch.is_empty()
            && (!opts.group_commit || bytes + next.frame_len() > opts.max_batch_bytes)
        {
            break;
        }
        bytes += next.frame_len();
        batch.extend(pending.pop_front());
    }
}

fn frame_header(payload: &[u8]) -> [u8; FRAME_HEADER] {
    let mut header = [0; FRAME_HEADER];
    header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[4..].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    header
}

// ---------------------------------------------------------------------------
// Open and replay.

/// Opens or creates the file, replays it, cuts a torn tail, and returns it
/// positioned at its end.
fn open_file(dir: &Path) -> Result<(File, Vec<Event>), JournalError> {
    if !dir.exists() {
        fs::create_dir_all(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    let path = dir.join(FILE_NAME);
    let mut file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(file) => {
            write_header(&file)?;
            // The new directory entry must survive a crash too.
            sync_dir(dir)?;
            return Ok((file, Vec::new()));
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            OpenOptions::new().read(true).write(true).open(&path)?
        }
        Err(e) => return Err(e.into()),
    };

    let len = file.metadata()?.len();
    if len < MAGIC.len() as u64 {
        // A crash between creating the file and syncing its header leaves
        // a prefix of the magic; anything else is not ours.
        let mut head = Vec::new();
        file.read_to_end(&mut head)?;
        if !MAGIC.starts_with(&head) {
            return Err(JournalError::BadHeader { path });
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        write_header(&file)?;
        sync_dir(dir)?;
        return Ok((file, Vec::new()));
    }

    let replay = replay(&mut file, len, &path)?;
    if replay.end < len {
        tracing::warn!(
            path = %path.display(),
            cut_bytes = len - replay.end,
            kept_bytes = replay.end,
            "journal had a torn tail; truncated it"
        );
        file.set_len(replay.end)?;
        file.sync_all()?;
    }
    file.seek(SeekFrom::Start(replay.end))?;
    Ok((file, replay.events))
}

fn write_header(mut file: &File) -> io::Result<()> {
    file.write_all(MAGIC)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    snapshot::sync_dir(dir)
}

struct Replay {
    events: Vec<Event>,
    /// End of the last good frame: where the file is cut and appends go.
    end: u64,
}

/// Reads every frame of a file of `len` bytes.
fn replay(file: &mut File, len: u64, path: &Path) -> Result<Replay, JournalError> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::with_capacity(256 * 1024, &mut *file);
    let mut magic = [0; 8];
    reader.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(JournalError::BadHeader {
            path: path.to_owned(),
        });
    }

    let mut out = Replay {
        events: Vec::new(),
        end: MAGIC.len() as u64,
    };
    let mut payload = Vec::new();
    loop {
        let offset = out.end;
        let remaining = len - offset;
        if remaining == 0 {
            return Ok(out);
        }
        if !read_frame(&mut reader, remaining, &mut payload)? {
            drop(reader);
            return if is_torn_tail(&read_from(file, offset)?) {
                Ok(out)
            } else {
                Err(JournalError::Corrupt { offset })
            };
        }
        out.end = offset + (FRAME_HEADER + payload.len()) as u64;
        match decode(&payload) {
            Decoded::Known(event) => out.events.push(event),
            Decoded::Newer(v) => return Err(JournalError::NewerSchema { offset, v }),
            Decoded::Bad(source) => return Err(JournalError::Undecodable { offset, source }),
        }
    }
}

/// Reads the frame at the reader's position into `payload`; false if it is
/// a bad frame (short, bad length, bad CRC). `remaining`: bytes left in the
/// file from the frame's start.
fn read_frame(reader: &mut impl Read, remaining: u64, payload: &mut Vec<u8>) -> io::Result<bool> {
    if remaining < FRAME_HEADER as u64 {
        return Ok(false);
    }
    let mut header = [0; FRAME_HEADER];
    reader.read_exact(&mut header)?;
    let (plen, crc) = parse_header(&header);
    if !(1..=MAX_RECORD_BYTES).contains(&plen) || (FRAME_HEADER + plen) as u64 > remaining {
        return Ok(false);
    }
    payload.resize(plen, 0);
    reader.read_exact(payload)?;
    Ok(crc32fast::hash(payload) == crc)
}

fn parse_header(header: &[u8]) -> (usize, u32) {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    (len as usize, crc)
}

fn read_from(file: &mut File, offset: u64) -> io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(offset))?;
    let mut rest = Vec::new();
    file.read_to_end(&mut rest)?;
    Ok(rest)
}

/// `rest` runs from a bad frame to the end of the file. It is a torn tail —
/// what an interrupted batch leaves — if the frame runs to or past the end
/// of the file (or everything left is zeros: an extended but unwritten
/// region) and no complete valid frame starts anywhere after it.
fn is_torn_tail(rest: &[u8]) -> bool {
    let reaches_end = rest.len() < FRAME_HEADER || {
        let (plen, _) = parse_header(rest);
        (FRAME_HEADER + plen) as u64 >= rest.len() as u64
    };
    let zeros = rest.iter().all(|&b| b == 0);
    (reaches_end || zeros) && !(1..rest.len()).any(|at| is_valid_frame(&rest[at..]))
}

/// Whether a complete frame with a good CRC starts at `bytes[0]`.
fn is_valid_frame(bytes: &[u8]) -> bool {
    frame_at(bytes, 0).is_some()
}

enum Decoded {
    Known(Event),
    Newer(u32),
    Bad(serde_json::Error),
}

fn decode(payload: &[u8]) -> Decoded {
    #[derive(Deserialize)]
    struct Version {
        v: u32,
    }
    match Event::from_json(payload) {
        Ok(event) if event.v <= SCHEMA_VERSION => Decoded::Known(event),
        Ok(event) => Decoded::Newer(event.v),
        Err(e) => match serde_json::from_slice::<Version>(payload) {
            Ok(version) if version.v > SCHEMA_VERSION => Decoded::Newer(version.v),
            _ => Decoded::Bad(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use seckill_testkit::{block_on, block_on_for};
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    fn event(n: u64) -> Event {
        Event::new(
            n,
            EventKind::OrderReserved {
                order_id: format!("1-{n}"),
                sale_id: "s1".into(),
                user_id: format!("u{n}"),
                quantity: 1,
                expires_at: 900,
                idempotency_key: None,
                fingerprint: None,
            },
        )
    }

    fn journal_path(dir: &Path) -> PathBuf {
        dir.join(FILE_NAME)
    }

    /// Writes `n` events through a journal and closes it; returns the file
    /// length after each frame (index 0 = just the header).
    fn write_events(dir: &Path, n: u64) -> Vec<u64> {
        let (j, _) = Journal::open(dir, JournalOptions::default()).unwrap();
        let mut ends = vec![fs::metadata(journal_path(dir)).unwrap().len()];
        for i in 0..n {
            block_on(j.append(&event(i))).unwrap();
            ends.push(fs::metadata(journal_path(dir)).unwrap().len());
        }
        j.close();
        ends
    }

    fn append_raw(dir: &Path, bytes: &[u8]) {
        let mut f = OpenOptions::new()
            .append(true)
            .open(journal_path(dir))
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = frame_header(payload).to_vec();
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn new_dir_starts_empty_with_magic() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let (j, events) = Journal::open(&dir, JournalOptions::default()).unwrap();
        assert!(events.is_empty());
        j.close();
        assert_eq!(fs::read(journal_path(&dir)).unwrap(), MAGIC);
        let (_, events) = Journal::open(&dir, JournalOptions::default()).unwrap();
        assert!(events.is_empty());
    }

    #[test]
    fn empty_file_or_magic_prefix_is_a_new_journal() {
        for content in [&b""[..], &b"SKJ"[..]] {
            let tmp = tempfile::tempdir().unwrap();
            fs::write(journal_path(tmp.path()), content).unwrap();
            let (j, events) = Journal::open(tmp.path(), JournalOptions::default()).unwrap();
            assert!(events.is_empty());
            block_on(j.append(&event(1))).unwrap();
            j.close();
            let (_, events) = Journal::open(tmp.path(), JournalOptions::default()).unwrap();
            assert_eq!(events, vec![event(1)]);
        }
    }

    #[test]
    fn wrong_magic_is_rejected() {
        for content in [&b"SKJRNL02"[..], &b"{\"v\":1}\n"[..], &b"xy"[..]] {
            let tmp = tempfile::tempdir().unwrap();
            fs::write(journal_path(tmp.path()), content).unwrap();
            let err = Journal::open(tmp.path(), JournalOptions::default()).unwrap_err();
            assert!(matches!(err, JournalError::BadHeader { .. }), "{err:?}");
            assert!(err.to_string().contains("bad header"), "{err}");
            // The file is left alone.
            assert_eq!(fs::read(journal_path(tmp.path())).unwrap(), content);
        }
    }

    #[test]
    fn events_come_back_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        write_events(tmp.path(), 20);
        let (_, events) = Journal::open(tmp.path(), JournalOptions::default()).unwrap();
        assert_eq!(events, (0..20).map(event).collect::<Vec<_>>());
    }

    #[test]
    fn concurrent_appends_from_four_threads_all_come_back() {
        let tmp = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(tmp.path(), JournalOptions::default()).unwrap();
        let per_thread = 250u64;
        thread::scope(|s| {
            for t in 0..4u64 {
                let j = j.clone();
                s.spawn(move || {
                    let waits: Vec<Durable> = (0..per_thread)
                        .map(|i| j.append(&event(t * 1_000_000 + i)))
                        .collect();
                    for w in waits {
                        block_on(w).unwrap();
                    }
                });
            }
        });
        let stats = j.stats();
        assert_eq!(stats.records, 4 * per_thread);
        drop(j);
        let (_, events) = Journal::open(tmp.path(), JournalOptions::default()).unwrap();
        assert_eq!(events.len() as u64, 4 * per_thread);
        for t in 0..4u64 {
            let mine: Vec<u64> = events
                .iter()
                .map(|e| e.at)
                .filter(|at| at / 1_000_000 == t)
                .collect();
            let want: Vec<u64> = (0..per_thread).map(|i| t * 1_000_000 + i).collect();
            assert_eq!(mine, want, "thread {t}: order within a thread is kept");
        }
    }

    #[test]
    fn group_commit_batches_syncs_on_a_real_file() {
        let tmp = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(tmp.path(), JournalOptions::default()).unwrap();
        thread::scope(|s| {
            for t in 0..4 {
                let j = j.clone();
                s.spawn(move || {
                    let waits: Vec<Durable> =
                        (0..250).map(|i| j.append(&event(t * 1000 + i))).collect();
                    for w in waits {
                        block_on(w).unwrap();
                    }
                });
            }
        });
        let stats = j.stats();
        assert_eq!(stats.records, 1000);
        assert!(stats.syncs * 4 < stats.records, "{stats:?}");
        let file_len = fs::metadata(journal_path(tmp.path())).unwrap().len();
        assert_eq!(stats.bytes + MAGIC.len() as u64, file_len);
    }

    #[test]
    fn without_group_commit_every_record_is_synced() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = JournalOptions {
            group_commit: false,
            ..JournalOptions::default()
        };
        let (j, _) = Journal::open(tmp.path(), opts).unwrap();
        let waits: Vec<Durable> = (0..30).map(|i| j.append(&event(i))).collect();
        for w in waits {
            block_on(w).unwrap();
        }
        assert_eq!(j.stats().syncs, 30);
        assert_eq!(j.stats().records, 30);
    }

    #[test]
    fn batches_respect_max_batch_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let record = event(0).to_json().len() + FRAME_HEADER;
        let opts = JournalOptions {
            group_commit: true,
            max_batch_bytes: 3 * record,
            ..JournalOptions::default()
        };
        let (j, _) = Journal::open(tmp.path(), opts).unwrap();
        let n = 60;
        let waits: Vec<Durable> = (0..n).map(|_| j.append(&event(0))).collect();
        for w in waits {
            block_on(w).unwrap();
        }
        // At most 3 records per sync.
        assert!(j.stats().syncs >= n / 3, "{:?}", j.stats());
    }

    #[test]
    fn torn_tail_partial_frame_is_cut() {
        let full = frame(&event(99).to_json());
        // Cut inside the header and inside the payload.
        for cut in [3, FRAME_HEADER + 5, full.len() - 1] {
            let tmp = tempfile::tempdir().unwrap();
            let ends = write_events(tmp.path(), 3);
            append_raw(tmp.path(), &full[..cut]);
            let (j, events) = Journal::open(tmp.path(), JournalOptions::default()).unwrap();
            assert_eq!(events, (0..3).map(event).collect::<Vec<_>>(), "cut {cut}");
            assert_eq!(
                fs::metadata(journal_path(tmp.path())).unwrap().len(),
                ends[3],
                "file truncated to the last good frame"
            );
            block_on(j.append(&event(3))).unwrap();
            drop(j);
            let (_, events) = Journal::open(tmp.path(), JournalOptions::default()).unwrap();
            assert_eq!(events, (0..4).map(event).collect::<Vec<_>>(), "cut {cut}");
        }
    }

    #[test]
    fn torn_tail_bad_crc_at_the_end_is_cut() {
        let tmp = tempfile::tempdir().unwrap();
        let ends = write_events(tmp.path(), 3);
        let mut last = frame(&event(99).to_json());
        let n = last.len();
        last[n - 1] ^= 0x01;
        append_raw(tmp.path(), &last);
        let (j, events) = Journal::open(tmp.path(), JournalOptions::default()).unwrap();
        assert_eq!(events, (0..3).map(event).collect::<Vec<_>>());
        assert_eq!(
            fs::metadata(journal_path(tmp.path())).unwrap().len(),
            ends[3]
        );
        block_on(j.append(&event(3))).unwrap();
        drop(j);
        let (_, events) = Journal::open(tmp.path(), JournalOptions::default()).unwrap();
        assert_eq!(events, (0..4).map(event).collect::<Vec<_>>());
    }

    #[test]
    fn zero_filled_tail_is_cut() {
        let tmp = tempfile::tempdir().unwrap();
        let ends = write_events(tmp.path(), 2);
        append_raw(tmp.path(), &[0; 4096]);
        let (_, events) = Journal::open(tmp.path(), JournalOptions::default()).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(
            fs::metadata(journal_path(tmp.path())).unwrap().len(),
            ends[2]
        );
    }

    #[test]
    fn corruption_in_the_middle_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let ends = write_events(tmp.path(), 5);
        let path = journal_path(tmp.path());
        let good = fs::read(&path).unwrap();
        // Flip one payload byte of the second frame.
        let mut bytes = good.clone();
        bytes[ends[1] as usize + FRAME_HEADER + 2] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let err = Journal::open(tmp.path(), JournalOptions::default()).unwrap_err();
        assert!(
            matches!(err, JournalError::Corrupt { offset } if offset == ends[1]),
            "{err:?}"
        );
        assert_eq!(err.code(), "unavailable");
        // Nothing was truncated.
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn a_length_pointing_past_the_end_does_not_hide_later_frames() {
        let tmp = tempfile::tempdir().unwrap();
        let ends = write_events(tmp.path(), 5);
        let path = journal_path(tmp.path());
        let mut bytes = fs::read(&path).unwrap();
        // The second frame's length now claims to run past the end of the
        // file, as an incomplete last frame would; three good frames follow.
        let at = ends[1] as usize;
        bytes[at..at + 4].copy_from_slice(&(1_000_000u32).to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        let err = Journal::open(tmp.path(), JournalOptions::default()).unwrap_err();
        assert!(matches!(err, JournalError::Corrupt { .. }), "{err:?}");
        // An absurd length (> 16 MiB) with data after it is a bad frame too.
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        let err = Journal::open(tmp.path(), JournalOptions::default()).unwrap_err();
        assert!(matches!(err, JournalError::Corrupt { .. }), "{err:?}");
    }

    #[test]
    fn good_crc_but_not_an_event_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        write_events(tmp.path(), 1);
        append_raw(tmp.path(), &frame(b"{\"v\":1,\"type\":\"nope\"}"));
        let err = Journal::open(tmp.path(), JournalOptions::default()).unwrap_err();
        assert!(matches!(err, JournalError::Undecodable { .. }), "{err:?}");
    }

    #[test]
    fn an_event_of_a_newer_schema_stops_the_open() {
        // Skipping it would forget an order: its units could be sold again.
        for newer in [
            b"{\"v\":2,\"type\":\"from_the_future\"}".to_vec(),
            Event {
                v: SCHEMA_VERSION + 1,
                ..event(7)
            }
            .to_json(),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            write_events(tmp.path(), 1);
            append_raw(tmp.path(), &frame(&newer));
            append_raw(tmp.path(), &frame(&event(1).to_json()));
            let before = std::fs::read(tmp.path().join(FILE_NAME)).unwrap();
            let err = match Journal::open(tmp.path(), JournalOptions::default()) {
                Ok((_, events)) => panic!("opened, skipping the newer event: {events:?}"),
                Err(err) => err,
            };
            assert!(
                matches!(err, JournalError::NewerSchema { v: 2, .. }),
                "{err:?}"
            );
            assert!(err.to_string().contains("newer"), "{err}");
            // Nothing was cut or rewritten.
            assert_eq!(std::fs::read(tmp.path().join(FILE_NAME)).unwrap(), before);
        }
    }

    #[test]
    fn appends_after_close_fail_closed() {
        let tmp = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(tmp.path(), JournalOptions::default()).unwrap();
        let before = j.append(&event(1));
        j.close();
        j.close(); // idempotent
        block_on(before).unwrap();
        let err = block_on(j.append(&event(2))).unwrap_err();
        assert!(matches!(err, JournalError::Closed), "{err:?}");
        let (_, events) = Journal::open(tmp.path(), JournalOptions::default()).unwrap();
        assert_eq!(events, vec![event(1)]);
    }

    #[test]
    fn dropping_the_last_handle_flushes_queued_records() {
        let tmp = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(tmp.path(), JournalOptions::default()).unwrap();
        let waits: Vec<Durable> = (0..100).map(|i| j.append(&event(i))).collect();
        drop(j); // joins the writer after it drained the queue
        for w in waits {
            block_on(w).unwrap();
        }
        let (_, events) = Journal::open(tmp.path(), JournalOptions::default()).unwrap();
        assert_eq!(events.len(), 100);
    }

    #[test]
    fn oversized_and_empty_records_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(tmp.path(), JournalOptions::default()).unwrap();
        let err = block_on(j.append_encoded(Vec::new())).unwrap_err();
        assert!(
            matches!(err, JournalError::RecordSize { len: 0 }),
            "{err:?}"
        );
        let err = block_on(j.append_encoded(vec![b' '; MAX_RECORD_BYTES + 1])).unwrap_err();
        assert!(matches!(err, JournalError::RecordSize { .. }), "{err:?}");
        assert_eq!(j.stats(), JournalStats::default());
    }

    /// A sink whose writes fail once `broken` is set.
    struct FlakySink {
        broken: Arc<AtomicBool>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Sink for FlakySink {
        fn write_batch(&mut self, buf: &[u8]) -> io::Result<()> {
            if self.broken.load(Ordering::SeqCst) {
                return Err(io::Error::other("disk on fire"));
            }
            self.written.lock().extend_from_slice(buf);
            Ok(())
        }

        fn sync(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_fails_this_and_every_later_append() {
        let broken = Arc::new(AtomicBool::new(false));
        let written = Arc::new(Mutex::new(Vec::new()));
        let sink = FlakySink {
            broken: Arc::clone(&broken),
            written: Arc::clone(&written),
        };
        let j = Journal::start(Box::new(sink), JournalOptions::default()).unwrap();
        block_on(j.append(&event(1))).unwrap();
        assert_eq!(*written.lock(), frame(&event(1).to_json()));

        broken.store(true, Ordering::SeqCst);
        let err = block_on(j.append(&event(2))).unwrap_err();
        assert!(matches!(err, JournalError::Io(_)), "{err:?}");
        assert!(err.to_string().contains("disk on fire"), "{err}");

        // The disk recovers, but the journal stays failed: the file may
        // hold half a batch.
        broken.store(false, Ordering::SeqCst);
        let err = block_on(j.append(&event(3))).unwrap_err();
        assert!(matches!(err, JournalError::Failed { .. }), "{err:?}");
        assert_eq!(err.code(), "unavailable");
        assert_eq!(j.stats().records, 1);
        j.close();
    }

    /// A sink whose first sync waits for the test to open a gate.
    struct GatedSink {
        entered: std::sync::mpsc::Sender<()>,
        gate: Option<std::sync::mpsc::Receiver<()>>,
    }

    impl Sink for GatedSink {
        fn write_batch(&mut self, _buf: &[u8]) -> io::Result<()> {
            Ok(())
        }

        fn sync(&mut self) -> io::Result<()> {
            if let Some(gate) = self.gate.take() {
                let _ = self.entered.send(());
                let _ = gate.recv();
            }
            Ok(())
        }
    }

    #[test]
    fn records_queued_during_a_sync_share_the_next_one() {
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (open_gate, gate) = std::sync::mpsc::channel();
        let sink = GatedSink {
            entered: entered_tx,
            gate: Some(gate),
        };
        let j = Journal::start(Box::new(sink), JournalOptions::default()).unwrap();
        let first = j.append(&event(0));
        entered.recv().unwrap(); // the writer is inside the first sync
        let rest: Vec<Durable> = (1..=100).map(|i| j.append(&event(i))).collect();
        open_gate.send(()).unwrap();
        block_on(first).unwrap();
        for d in rest {
            block_on(d).unwrap();
        }
        let stats = j.stats();
        // The 100 records queued while the first sync ran went in one batch.
        assert_eq!((stats.records, stats.syncs), (101, 2), "{stats:?}");
        j.close();
    }

    struct PanickingSink;

    impl Sink for PanickingSink {
        fn write_batch(&mut self, _buf: &[u8]) -> io::Result<()> {
            panic!("injected writer panic");
        }

        fn sync(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_panicking_writer_fails_appends_instead_of_hanging_them() {
        let j = Journal::start(Box::new(PanickingSink), JournalOptions::default()).unwrap();
        let err = block_on(j.append(&event(1))).unwrap_err();
        assert!(matches!(err, JournalError::Failed { .. }), "{err:?}");
        let later = block_on_for(j.append(&event(2)), Duration::from_secs(10));
        let err = later
            .expect("a later append must fail, not hang")
            .unwrap_err();
        assert!(matches!(err, JournalError::Failed { .. }), "{err:?}");
        j.close();
    }

    #[test]
    fn handles_and_futures_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Journal>();
        send::<Durable>();
        send_sync::<JournalError>();
    }

    #[test]
    fn torn_tail_rules() {
        let good = frame(b"{\"v\":1}");
        assert!(is_valid_frame(&good));
        assert!(is_torn_tail(&good[..5]));
        assert!(is_torn_tail(&good[..good.len() - 1]));
        let mut flipped = good.clone();
        flipped[5] ^= 1;
        assert!(is_torn_tail(&flipped));
        // Bad frame then junk that is not a frame: corruption.
        let mut then_junk = flipped.clone();
        then_junk.extend_from_slice(b"junk");
        assert!(!is_torn_tail(&then_junk));
        // Zero-length frames are bad (crc32 of nothing is 0), but an
        // all-zero rest is an unwritten tail.
        assert!(!is_valid_frame(&[0; 8]));
        assert!(is_torn_tail(&[0; 100]));
    }

    fn segmented(limit: u64) -> (JournalOptions, mpsc::Receiver<u64>) {
        let (tx, rx) = mpsc::channel();
        let opts = JournalOptions {
            segment_bytes: limit,
            on_seal: Some(tx),
            ..JournalOptions::default()
        };
        (opts, rx)
    }

    fn append_all(j: &Journal, range: std::ops::Range<u64>) {
        for n in range {
            block_on(j.append(&event(n))).unwrap();
        }
    }

    #[test]
    fn full_segments_are_sealed_and_recovered_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let (opts, sealed) = segmented(1_000);
        let (j, _) = Journal::open(tmp.path(), opts.clone()).unwrap();
        append_all(&j, 0..60);
        j.close();
        let gens: Vec<u64> = sealed.try_iter().collect();
        assert!(gens.len() >= 3, "sealed {gens:?}");
        let on_disk: Vec<u64> = sealed_segments(tmp.path())
            .unwrap()
            .into_iter()
            .map(|(g, _)| g)
            .collect();
        assert_eq!(on_disk, gens);
        let (j, got) = Journal::recover(tmp.path(), opts.clone()).unwrap();
        assert_eq!(got.events, (0..60).map(event).collect::<Vec<_>>());
        assert_eq!(got.sealed, gens);
        // Generations keep rising across a restart.
        append_all(&j, 60..120);
        j.close();
        let (_, got) = Journal::recover(tmp.path(), opts).unwrap();
        assert_eq!(got.events, (0..120).map(event).collect::<Vec<_>>());
        assert!(got.sealed.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_crash_between_the_seal_rename_and_the_new_file_loses_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let (opts, _sealed) = segmented(1_000);
        let (j, _) = Journal::open(tmp.path(), opts.clone()).unwrap();
        append_all(&j, 0..10);
        j.close();
        // The seal's rename happened; the new orders.journal did not.
        let next = sealed_segments(tmp.path())
            .unwrap()
            .last()
            .map_or(1, |(g, _)| g + 1);
        fs::rename(tmp.path().join(FILE_NAME), segment_path(tmp.path(), next)).unwrap();
        let (j, got) = Journal::recover(tmp.path(), opts.clone()).unwrap();
        assert_eq!(got.events, (0..10).map(event).collect::<Vec<_>>());
        append_all(&j, 10..12);
        j.close();
        let (_, got) = Journal::recover(tmp.path(), opts).unwrap();
        assert_eq!(got.events, (0..12).map(event).collect::<Vec<_>>());
    }

    #[test]
    fn a_snapshot_covers_its_segments_at_every_step() {
        let tmp = tempfile::tempdir().unwrap();
        let (opts, sealed) = segmented(1_000);
        let (j, _) = Journal::open(tmp.path(), opts.clone()).unwrap();
        append_all(&j, 0..60);
        j.close();
        let gens: Vec<u64> = sealed.try_iter().collect();
        let covered = gens[1];
        let in_covered: usize = sealed_segments(tmp.path())
            .unwrap()
            .iter()
            .filter(|(g, _)| *g <= covered)
            .map(|(_, p)| read_segment(p).unwrap().len())
            .sum();
        let rest: Vec<Event> = (in_covered as u64..60).map(event).collect();

        // Temp written, not installed: nothing changes.
        snapshot::write_temp(tmp.path(), covered, b"folded").unwrap();
        let (j, got) = Journal::recover(tmp.path(), opts.clone()).unwrap();
        j.close();
        assert!(got.snapshot.is_none());
        assert_eq!(got.events.len(), 60);
        // Installed, segments not removed yet: they are skipped and removed.
        snapshot::write_temp(tmp.path(), covered, b"folded").unwrap();
        snapshot::install(tmp.path()).unwrap();
        let (j, got) = Journal::recover(tmp.path(), opts.clone()).unwrap();
        j.close();
        assert_eq!(got.snapshot.unwrap().state, b"folded");
        assert_eq!(got.events, rest);
        assert!(got.sealed.iter().all(|g| *g > covered));
        assert!(sealed_segments(tmp.path())
            .unwrap()
            .iter()
            .all(|(g, _)| *g > covered));
        // Again (as after a crash mid-removal): the same.
        let (j, got) = Journal::recover(tmp.path(), opts.clone()).unwrap();
        j.close();
        assert_eq!(got.events, rest);
        // New segments never reuse a covered generation.
        let (j, _) = Journal::recover(tmp.path(), opts.clone()).unwrap();
        append_all(&j, 60..120);
        j.close();
        assert!(sealed.try_iter().all(|g| g > covered));
        // Open without the snapshot is refused.
        assert!(matches!(
            Journal::open(tmp.path(), opts),
            Err(JournalError::HasSnapshot { .. })
        ));
    }

    /// `frames` yields every good frame of a journal image in order and
    /// stops at a torn tail, `end` naming where.
    #[test]
    fn frames_reads_the_image_read_only() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(tmp.path(), JournalOptions::default()).unwrap();
        for n in 0..3 {
            block_on(journal.append(&event(n))).unwrap();
        }
        journal.close();
        let mut bytes = fs::read(tmp.path().join(FILE_NAME)).unwrap();
        let whole = bytes.len();
        bytes.extend_from_slice(&[7, 0, 0, 0, 1, 2]); // a torn frame
        let mut frames = frames(&bytes).expect("the magic");
        let read: Vec<Event> = frames
            .by_ref()
            .map(|(_, payload)| Event::from_json(payload).unwrap())
            .collect();
        assert_eq!(read, (0..3).map(event).collect::<Vec<_>>());
        assert_eq!(frames.end(), whole);
        assert!(super::frames(b"NOTAJRNL").is_none());
    }
}
