//! The durable event log: every accepted event is appended here first, and every other view
//! (event history, trail delivery, digests, Insights) is derived from it by reading forward from
//! its own persisted cursor.
//!
//! - Segment files (`<first_seq:020>.seg`) of checksummed frames; see [`format`].
//! - Sealed segments are packed in the background (`<first_seq:020>.zseg`): every record
//!   compressed alone with a dictionary trained on its segment; see [`packed`]. Reads go by
//!   sequence number, so packing moves no record a view refers to.
//! - One writer thread does group commit: it takes every append waiting in its queue, writes them
//!   with one `write` and one `fdatasync`, then acknowledges them all. An append's future resolves
//!   only after its bytes are durable.
//! - A failed write or sync poisons the log: later appends fail, nothing pretends to succeed.
//! - Recovery on open verifies the last segment frame by frame and truncates only a torn tail (an
//!   incomplete or garbled last frame, or zero fill). Damage with valid data after it is refused.
//! - Readers never see bytes that are not yet durable.

pub mod format;
pub mod packed;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use tokio::sync::{oneshot, watch};

pub use format::NewRecord;
use format::{
    FRAME_HEADER_LEN, HEADER_LEN, MAX_FRAME_LEN, PAYLOAD_HEADER_LEN, check_header, decode_payload,
    decode_payload_header, encode_frame, encode_header, parse_segment_file_name, segment_file_name,
};

/// Errors of the event log, by meaning.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("event log io error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("event log is corrupt in {path} at offset {offset}: {detail}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        detail: String,
    },
    #[error("event log is poisoned by an earlier failed write or sync; restart to recover")]
    Poisoned,
    #[error("event log is closed")]
    Closed,
    #[error("sequence {0} is no longer in the log (deleted by retention)")]
    Truncated(u64),
    #[error("sequence {0} is not in the log yet")]
    NotYet(u64),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Settings of the event log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    /// A new segment is started once the current one has grown past this size.
    pub segment_bytes: u64,
    /// The most bytes one group commit writes before it syncs.
    pub group_bytes: usize,
    /// The zstd level sealed segments are packed with; `None` leaves them plain.
    pub pack_level: Option<i32>,
}

impl LogConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: 128 * 1024 * 1024,
            group_bytes: 16 * 1024 * 1024,
            pack_level: Some(3),
        }
    }
}

/// One segment file, open for positioned reads.
#[derive(Debug)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
    file: File,
    /// Newest event time in the segment, for retention.
    max_time_ms: AtomicI64,
    body: Body,
}

/// Where things are in a plain segment.
#[derive(Debug, Default)]
struct Positions {
    /// Each record's JSON: (file offset, length), by sequence.
    records: Vec<(u64, u32)>,
    /// Each frame: (its first sequence number, its file offset), in order.
    frames: Vec<(u64, u64)>,
}

impl Positions {
    /// The offset of the frame holding `seq`.
    fn frame_of(&self, seq: u64) -> Option<u64> {
        let i = self.frames.partition_point(|(first, _)| *first <= seq);
        i.checked_sub(1).map(|i| self.frames[i].1)
    }
}

#[derive(Debug)]
enum Body {
    /// Format 1, frames as written. The positions are kept by the writer for the segment it
    /// writes, and built on first use for a sealed one.
    Plain(RwLock<Option<Positions>>),
    /// Format 2.
    Packed(packed::Packed),
}

impl Segment {
    fn plain(first_seq: u64, path: PathBuf, file: File, positions: Option<Positions>) -> Self {
        Self {
            first_seq,
            path,
            file,
            max_time_ms: AtomicI64::new(i64::MIN),
            body: Body::Plain(RwLock::new(positions)),
        }
    }
}

/// The durable end of the log: the next sequence number, and where the last segment ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurableEnd {
    pub next_seq: u64,
    pub segment: u64,
    pub offset: u64,
}

/// The answer to an append: the first assigned sequence number (the rest follow densely).
#[derive(Debug, Clone)]
pub struct Appended {
    pub first_seq: u64,
}

/// What recovery found and did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    pub next_seq: u64,
    /// Bytes cut off the end of the last segment as a torn tail.
    pub truncated_bytes: u64,
}

struct AppendRequest {
    records: Vec<NewRecord>,
    reply: oneshot::Sender<Result<Appended, LogError>>,
}

struct Inner {
    config: LogConfig,
    segments: RwLock<BTreeMap<u64, Arc<Segment>>>,
    durable: watch::Sender<DurableEnd>,
    poisoned: AtomicBool,
    syncs: AtomicU64,
    appends: AtomicU64,
    queue: Mutex<Option<mpsc::Sender<AppendRequest>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Sealed plain segments to pack, by first sequence number.
    pack_queue: Mutex<Option<mpsc::Sender<u64>>>,
    packer: Mutex<Option<JoinHandle<()>>>,
    closing: AtomicBool,
    packed: AtomicU64,
}

/// A handle to the event log; cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Inner>,
}

/// One record read back from the log.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub seq: u64,
    pub time_ms: i64,
    pub json: Vec<u8>,
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn open_segment(dir: &Path, first_seq: u64, create: bool) -> Result<(File, PathBuf), LogError> {
    let path = dir.join(segment_file_name(first_seq));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))?;
    Ok((file, path))
}

/// Reads the frame at `offset` of `file` (whose readable end is `end`). Returns `Ok(None)` when
/// the bytes there do not form a complete frame with a matching checksum; the caller decides
/// whether that is a torn tail or damage.
fn read_frame(file: &File, offset: u64, end: u64) -> std::io::Result<Option<(u64, Vec<u8>)>> {
    if end < offset + FRAME_HEADER_LEN {
        return Ok(None);
    }
    let mut fh = [0u8; FRAME_HEADER_LEN as usize];
    file.read_exact_at(&mut fh, offset)?;
    let len = u32::from_le_bytes([fh[0], fh[1], fh[2], fh[3]]);
    let crc = u32::from_le_bytes([fh[4], fh[5], fh[6], fh[7]]);
    let frame_end = offset + FRAME_HEADER_LEN + u64::from(len);
    if len as usize <= PAYLOAD_HEADER_LEN || len > MAX_FRAME_LEN || frame_end > end {
        return Ok(None);
    }
    let mut payload = vec![0u8; len as usize];
    file.read_exact_at(&mut payload, offset + FRAME_HEADER_LEN)?;
    if crc32c::crc32c(&payload) != crc {
        return Ok(None);
    }
    Ok(Some((frame_end, payload)))
}

fn all_zero(file: &File, from: u64, to: u64) -> std::io::Result<bool> {
    let mut at = from;
    let mut buf = vec![0u8; 64 * 1024];
    while at < to {
        let n = usize::try_from((to - at).min(buf.len() as u64)).unwrap_or(buf.len());
        file.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Scans a sealed segment by frame headers only (no checksums): its next sequence number and the
/// newest event time. Sealed segments were synced before the next one was created.
fn scan_sealed(seg: &Segment) -> Result<(u64, i64), LogError> {
    let end = seg.file.metadata().map_err(io_err(&seg.path))?.len();
    let mut hdr = [0u8; HEADER_LEN as usize];
    seg.file
        .read_exact_at(&mut hdr, 0)
        .map_err(io_err(&seg.path))?;
    check_header(&hdr, seg.first_seq).map_err(|p| LogError::Corrupt {
        path: seg.path.clone(),
        offset: 0,
        detail: format!("bad segment header: {p:?}"),
    })?;
    let mut at = HEADER_LEN;
    let mut next = seg.first_seq;
    let mut max_time = i64::MIN;
    let mut head = [0u8; FRAME_HEADER_LEN as usize + PAYLOAD_HEADER_LEN];
    while at < end {
        let corrupt = |detail: &str| LogError::Corrupt {
            path: seg.path.clone(),
            offset: at,
            detail: detail.to_owned(),
        };
        if end < at + head.len() as u64 {
            return Err(corrupt("sealed segment ends inside a frame"));
        }
        seg.file
            .read_exact_at(&mut head, at)
            .map_err(io_err(&seg.path))?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let ph = decode_payload_header(&head[FRAME_HEADER_LEN as usize..])
            .ok_or_else(|| corrupt("short payload header"))?;
        if ph.first_seq != next {
            return Err(corrupt(&format!(
                "expected sequence {next}, frame starts at {}",
                ph.first_seq
            )));
        }
        next += u64::from(ph.count);
        max_time = max_time.max(ph.max_time_ms);
        at += FRAME_HEADER_LEN + u64::from(len);
    }
    if at != end {
        return Err(corrupt_at(seg, at, "sealed segment ends inside a frame"));
    }
    Ok((next, max_time))
}

fn corrupt_at(seg: &Segment, offset: u64, detail: &str) -> LogError {
    LogError::Corrupt {
        path: seg.path.clone(),
        offset,
        detail: detail.to_owned(),
    }
}

/// What recovery of the last segment found.
struct Recovered {
    next_seq: u64,
    end: u64,
    max_time_ms: i64,
    cut: u64,
    positions: Positions,
}

/// Verifies the last segment frame by frame and cuts a torn tail.
fn recover_last(seg: &Segment) -> Result<Recovered, LogError> {
    let file_len = seg.file.metadata().map_err(io_err(&seg.path))?.len();
    if file_len < HEADER_LEN {
        // Created but its header never became durable: nothing in it was acknowledged.
        if !all_zero(&seg.file, 0, file_len).map_err(io_err(&seg.path))? {
            let mut partial = vec![0u8; file_len as usize];
            seg.file
                .read_exact_at(&mut partial, 0)
                .map_err(io_err(&seg.path))?;
            if !format::MAGIC.starts_with(&partial[..partial.len().min(8)]) {
                return Err(corrupt_at(seg, 0, "segment starts with unknown bytes"));
            }
        }
        seg.file.set_len(0).map_err(io_err(&seg.path))?;
        seg.file
            .write_all_at(&encode_header(seg.first_seq), 0)
            .map_err(io_err(&seg.path))?;
        seg.file.sync_all().map_err(io_err(&seg.path))?;
        return Ok(Recovered {
            next_seq: seg.first_seq,
            end: HEADER_LEN,
            max_time_ms: i64::MIN,
            cut: file_len,
            positions: Positions::default(),
        });
    }
    let mut hdr = [0u8; HEADER_LEN as usize];
    seg.file
        .read_exact_at(&mut hdr, 0)
        .map_err(io_err(&seg.path))?;
    if let Err(p) = check_header(&hdr, seg.first_seq) {
        let zero_file = all_zero(&seg.file, 0, file_len).map_err(io_err(&seg.path))?;
        if !zero_file {
            return Err(corrupt_at(seg, 0, &format!("bad segment header: {p:?}")));
        }
        seg.file
            .write_all_at(&encode_header(seg.first_seq), 0)
            .map_err(io_err(&seg.path))?;
        seg.file.set_len(HEADER_LEN).map_err(io_err(&seg.path))?;
        seg.file.sync_all().map_err(io_err(&seg.path))?;
        return Ok(Recovered {
            next_seq: seg.first_seq,
            end: HEADER_LEN,
            max_time_ms: i64::MIN,
            cut: file_len - HEADER_LEN,
            positions: Positions::default(),
        });
    }
    let mut at = HEADER_LEN;
    let mut next = seg.first_seq;
    let mut max_time = i64::MIN;
    let mut positions = Positions::default();
    while at < file_len {
        match read_frame(&seg.file, at, file_len).map_err(io_err(&seg.path))? {
            Some((frame_end, payload)) => {
                let (ph, records) = decode_payload(&payload)
                    .ok_or_else(|| corrupt_at(seg, at, "frame contradicts its own header"))?;
                if ph.first_seq != next {
                    return Err(corrupt_at(
                        seg,
                        at,
                        &format!("expected sequence {next}, frame starts at {}", ph.first_seq),
                    ));
                }
                let base = at + FRAME_HEADER_LEN;
                positions.frames.push((ph.first_seq, at));
                positions.records.extend(
                    records
                        .iter()
                        .map(|r| (base + r.start as u64, r.len as u32)),
                );
                next += u64::from(ph.count);
                max_time = max_time.max(ph.max_time_ms);
                at = frame_end;
            }
            None => {
                // Not a whole frame. It is a torn tail if it runs to the end of the file (the last
                // write never completed) or if everything from here on is zero fill. A bad frame
                // with more bytes after it is damage to acknowledged data: refuse.
                let mut fh = [0u8; FRAME_HEADER_LEN as usize];
                let declared_end = if file_len >= at + FRAME_HEADER_LEN {
                    seg.file
                        .read_exact_at(&mut fh, at)
                        .map_err(io_err(&seg.path))?;
                    let len = u32::from_le_bytes([fh[0], fh[1], fh[2], fh[3]]);
                    at + FRAME_HEADER_LEN + u64::from(len)
                } else {
                    file_len
                };
                let torn = declared_end >= file_len
                    || all_zero(&seg.file, at, file_len).map_err(io_err(&seg.path))?;
                if !torn {
                    return Err(corrupt_at(
                        seg,
                        at,
                        "checksum mismatch in a frame that is followed by more data",
                    ));
                }
                let cut = file_len - at;
                tracing::warn!(path = %seg.path.display(), offset = at, bytes = cut, "truncating torn tail of the event log");
                seg.file.set_len(at).map_err(io_err(&seg.path))?;
                seg.file.sync_all().map_err(io_err(&seg.path))?;
                return Ok(Recovered {
                    next_seq: next,
                    end: at,
                    max_time_ms: max_time,
                    cut,
                    positions,
                });
            }
        }
    }
    Ok(Recovered {
        next_seq: next,
        end: at,
        max_time_ms: max_time,
        cut: 0,
        positions,
    })
}

/// Calls `f(seq, time, offset of its frame, offset of the JSON, JSON)` for every record of a
/// sealed plain segment, checking every frame. Returns the sequence number after the last record.
fn each_record(
    seg: &Segment,
    mut f: impl FnMut(u64, i64, u64, u64, &[u8]) -> Result<(), LogError>,
) -> Result<u64, LogError> {
    let end = seg.file.metadata().map_err(io_err(&seg.path))?.len();
    let mut at = HEADER_LEN;
    let mut next = seg.first_seq;
    while at < end {
        let (frame_end, payload) = read_frame(&seg.file, at, end)
            .map_err(io_err(&seg.path))?
            .ok_or_else(|| corrupt_at(seg, at, "unreadable frame in a sealed segment"))?;
        let (ph, records) = decode_payload(&payload)
            .ok_or_else(|| corrupt_at(seg, at, "frame contradicts its own header"))?;
        if ph.first_seq != next {
            return Err(corrupt_at(seg, at, "frame out of sequence"));
        }
        let base = at + FRAME_HEADER_LEN;
        for (i, r) in records.iter().enumerate() {
            f(
                next + i as u64,
                r.time_ms,
                at,
                base + r.start as u64,
                &payload[r.start..r.start + r.len],
            )?;
        }
        next += u64::from(ph.count);
        at = frame_end;
    }
    Ok(next)
}

impl EventLog {
    /// Opens (creating if needed) the log in `config.dir`, recovers it, and starts the writer
    /// and the packer.
    pub fn open(config: LogConfig) -> Result<(Self, RecoveryReport), LogError> {
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut plain = std::collections::BTreeSet::new();
        let mut packed_firsts = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(first) = parse_segment_file_name(&name) {
                plain.insert(first);
            } else if let Some(first) = packed::parse_file_name(&name) {
                packed_firsts.insert(first);
            } else if name.ends_with(".zseg.tmp") {
                // A packing that never completed; the plain segment is still there.
                let path = entry.path();
                std::fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        let mut firsts: Vec<u64> = plain.union(&packed_firsts).copied().collect();
        let mut report = RecoveryReport {
            segments: firsts.len(),
            ..Default::default()
        };
        if firsts.is_empty() {
            let (mut file, _) = open_segment(&dir, 0, true)?;
            file.write_all(&encode_header(0)).map_err(io_err(&dir))?;
            file.sync_all().map_err(io_err(&dir))?;
            sync_dir(&dir)?;
            firsts.push(0);
            plain.insert(0);
            report.segments = 1;
        }
        let mut segments = BTreeMap::new();
        let mut expected_next: Option<u64> = None;
        let last_first = *firsts.last().ok_or(LogError::Closed)?;
        let mut end = DurableEnd {
            next_seq: 0,
            segment: last_first,
            offset: HEADER_LEN,
        };
        for &first in &firsts {
            let seg = if packed_firsts.contains(&first) {
                let packed = open_packed(&dir, first)?;
                if plain.contains(&first) {
                    // Packed and renamed into place, but the plain copy was not yet deleted.
                    let old = dir.join(segment_file_name(first));
                    std::fs::remove_file(&old).map_err(io_err(&old))?;
                    plain.remove(&first);
                }
                packed
            } else {
                let (file, path) = open_segment(&dir, first, false)?;
                Segment::plain(first, path, file, None)
            };
            if let Some(n) = expected_next
                && n != first
            {
                return Err(corrupt_at(
                    &seg,
                    0,
                    &format!("segment starts at {first}, expected {n}"),
                ));
            }
            let (next, max_time) = match &seg.body {
                Body::Packed(p) => (first + u64::from(p.header.count), p.header.max_time_ms),
                Body::Plain(positions) if first == last_first => {
                    let r = recover_last(&seg)?;
                    end = DurableEnd {
                        next_seq: r.next_seq,
                        segment: first,
                        offset: r.end,
                    };
                    report.truncated_bytes = r.cut;
                    if let Ok(mut p) = positions.write() {
                        *p = Some(r.positions);
                    }
                    (r.next_seq, r.max_time_ms)
                }
                Body::Plain(_) => scan_sealed(&seg)?,
            };
            seg.max_time_ms.store(max_time, Ordering::Relaxed);
            expected_next = Some(next);
            segments.insert(first, Arc::new(seg));
        }
        let last_is_packed = segments
            .get(&last_first)
            .is_some_and(|s| matches!(s.body, Body::Packed(_)));
        if last_is_packed {
            // Only sealed segments are packed, so this log lost its last plain segment while it
            // was empty: start a new one where the packed one ends.
            let first = expected_next.unwrap_or(0);
            let (file, path) = open_segment(&dir, first, true)?;
            file.write_all_at(&encode_header(first), 0)
                .map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
            sync_dir(&dir)?;
            segments.insert(
                first,
                Arc::new(Segment::plain(
                    first,
                    path,
                    file,
                    Some(Positions::default()),
                )),
            );
            end = DurableEnd {
                next_seq: first,
                segment: first,
                offset: HEADER_LEN,
            };
            report.segments += 1;
        }
        report.next_seq = end.next_seq;
        let to_pack: Vec<u64> = segments
            .iter()
            .filter(|(first, s)| **first != end.segment && matches!(s.body, Body::Plain(_)))
            .map(|(first, _)| *first)
            .collect();
        let (durable, _) = watch::channel(end);
        let (tx, rx) = mpsc::channel();
        let (pack_tx, pack_rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            config,
            segments: RwLock::new(segments),
            durable,
            poisoned: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
            appends: AtomicU64::new(0),
            queue: Mutex::new(Some(tx)),
            writer: Mutex::new(None),
            pack_queue: Mutex::new(None),
            packer: Mutex::new(None),
            closing: AtomicBool::new(false),
            packed: AtomicU64::new(0),
        });
        let writer_inner = Arc::clone(&inner);
        let handle = std::thread::Builder::new()
            .name("opentrail-log-writer".into())
            .spawn(move || writer_loop(&writer_inner, &rx, end))
            .map_err(io_err(&dir))?;
        if let Ok(mut w) = inner.writer.lock() {
            *w = Some(handle);
        }
        if inner.config.pack_level.is_some() {
            for first in to_pack {
                let _ = pack_tx.send(first);
            }
            let packer_inner = Arc::clone(&inner);
            let handle = std::thread::Builder::new()
                .name("opentrail-log-packer".into())
                .spawn(move || packer_loop(&packer_inner, &pack_rx))
                .map_err(io_err(&dir))?;
            if let Ok(mut p) = inner.packer.lock() {
                *p = Some(handle);
            }
            if let Ok(mut q) = inner.pack_queue.lock() {
                *q = Some(pack_tx);
            }
        }
        Ok((Self { inner }, report))
    }

    /// Queues records for the next group commit and returns at once; the receiver answers once
    /// they are durable. Records queued before [`EventLog::close`] are written before it returns,
    /// even if nobody waits for the answer.
    pub fn submit(
        &self,
        records: Vec<NewRecord>,
    ) -> Result<oneshot::Receiver<Result<Appended, LogError>>, LogError> {
        let (reply, rx) = oneshot::channel();
        if records.is_empty() {
            let _ = reply.send(Ok(Appended {
                first_seq: self.durable_end().next_seq,
            }));
            return Ok(rx);
        }
        let queue = self.inner.queue.lock().map_err(|_| LogError::Poisoned)?;
        let tx = queue.as_ref().ok_or(LogError::Closed)?;
        tx.send(AppendRequest { records, reply })
            .map_err(|_| LogError::Closed)?;
        Ok(rx)
    }

    /// Appends records; resolves once they are durable (fsync), with their sequence numbers.
    pub async fn append(&self, records: Vec<NewRecord>) -> Result<Appended, LogError> {
        self.submit(records)?.await.map_err(|_| LogError::Closed)?
    }

    /// The durable end of the log.
    pub fn durable_end(&self) -> DurableEnd {
        *self.inner.durable.borrow()
    }

    /// A receiver that changes whenever more records become durable.
    pub fn subscribe(&self) -> watch::Receiver<DurableEnd> {
        self.inner.durable.subscribe()
    }

    /// Counters: (group commits synced, appends acknowledged) since open.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.inner.syncs.load(Ordering::Relaxed),
            self.inner.appends.load(Ordering::Relaxed),
        )
    }

    pub fn is_poisoned(&self) -> bool {
        self.inner.poisoned.load(Ordering::Acquire)
    }

    /// Reads one record's JSON by sequence number (positioned reads; blocking IO).
    pub fn read_seq(&self, seq: u64) -> Result<Vec<u8>, LogError> {
        if seq >= self.durable_end().next_seq {
            return Err(LogError::NotYet(seq));
        }
        let seg = self.segment_at(seq)?;
        let idx = seq - seg.first_seq;
        match &seg.body {
            Body::Packed(p) => {
                let mut one = p.read(&seg.file, &seg.path, idx, 1)?;
                one.pop()
                    .map(|(_, json)| json)
                    .ok_or_else(|| corrupt_at(&seg, 0, "record missing from a packed segment"))
            }
            Body::Plain(lock) => {
                let pos = plain_positions(&seg, lock, |p| p.records.get(idx as usize).copied())?;
                let (offset, len) =
                    pos.ok_or_else(|| corrupt_at(&seg, 0, "record missing from its segment"))?;
                let mut buf = vec![0u8; len as usize];
                seg.file
                    .read_exact_at(&mut buf, offset)
                    .map_err(io_err(&seg.path))?;
                Ok(buf)
            }
        }
    }

    /// The segment holding `seq` (which must be below the durable end).
    fn segment_at(&self, seq: u64) -> Result<Arc<Segment>, LogError> {
        let segs = self.inner.segments.read().map_err(|_| LogError::Poisoned)?;
        match segs.range(..=seq).next_back() {
            Some((_, seg)) => Ok(Arc::clone(seg)),
            None => Err(LogError::Truncated(seq)),
        }
    }

    /// How many segments this handle's packer has packed since open.
    pub fn packed_segments(&self) -> u64 {
        self.inner.packed.load(Ordering::Relaxed)
    }

    /// A reader positioned at `next_seq`.
    pub fn reader(&self, next_seq: u64) -> LogReader {
        LogReader {
            log: self.clone(),
            next_seq,
            pos: None,
        }
    }

    /// Deletes sealed segments whose every record has a sequence number below `seq_floor` (all
    /// views are past them) and whose newest event time is before `time_cutoff_ms` (history
    /// retention). Returns how many were deleted.
    pub fn delete_segments(&self, seq_floor: u64, time_cutoff_ms: i64) -> Result<usize, LogError> {
        let mut doomed = Vec::new();
        {
            let segs = self.inner.segments.read().map_err(|_| LogError::Poisoned)?;
            let firsts: Vec<u64> = segs.keys().copied().collect();
            for pair in firsts.windows(2) {
                let (first, next_first) = (pair[0], pair[1]);
                let Some(seg) = segs.get(&first) else {
                    continue;
                };
                if next_first <= seq_floor
                    && seg.max_time_ms.load(Ordering::Relaxed) < time_cutoff_ms
                {
                    doomed.push(first);
                } else {
                    break;
                }
            }
        }
        if doomed.is_empty() {
            return Ok(0);
        }
        let mut segs = self
            .inner
            .segments
            .write()
            .map_err(|_| LogError::Poisoned)?;
        for first in &doomed {
            if let Some(seg) = segs.remove(first) {
                std::fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
                tracing::info!(segment = first, "deleted event log segment past retention");
            }
        }
        sync_dir(&self.inner.config.dir)?;
        Ok(doomed.len())
    }

    /// The first sequence number still in the log.
    pub fn first_seq(&self) -> u64 {
        self.inner
            .segments
            .read()
            .ok()
            .and_then(|s| s.keys().next().copied())
            .unwrap_or(0)
    }

    /// Stops the writer after it has answered everything queued, then the packer (a packing
    /// under way is abandoned; the plain segment stays). Every acknowledged append was already
    /// synced, so nothing more needs flushing.
    pub fn close(&self) {
        stop_thread(&self.inner.queue, &self.inner.writer, "writer");
        self.inner.closing.store(true, Ordering::Release);
        stop_thread(&self.inner.pack_queue, &self.inner.packer, "packer");
    }

    /// How many sealed segments are still plain, waiting for the packer (0 when packing is
    /// off: nothing waits).
    pub fn unpacked_segments(&self) -> usize {
        if self.inner.config.pack_level.is_none() {
            return 0;
        }
        self.inner.segments.read().map_or(0, |segs| {
            let last = segs.keys().next_back().copied();
            segs.iter()
                .filter(|(first, s)| Some(**first) != last && matches!(s.body, Body::Plain(_)))
                .count()
        })
    }

    /// Waits until every sealed segment is packed (tests and benchmarks). Returns at once when
    /// packing is off.
    pub fn wait_packed(&self, timeout: std::time::Duration) -> bool {
        let start = std::time::Instant::now();
        while self.unpacked_segments() > 0 {
            if start.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        true
    }
}

/// Closes a thread's queue, then waits for the thread to finish what it holds.
fn stop_thread<T>(
    queue: &Mutex<Option<mpsc::Sender<T>>>,
    thread: &Mutex<Option<JoinHandle<()>>>,
    name: &str,
) {
    if let Ok(mut q) = queue.lock() {
        q.take();
    }
    let handle = thread.lock().ok().and_then(|mut t| t.take());
    if let Some(h) = handle
        && h.join().is_err()
    {
        tracing::error!(thread = name, "event log thread panicked");
    }
}

struct WriterState {
    file: Arc<Segment>,
    end: DurableEnd,
}

fn writer_loop(inner: &Inner, rx: &mpsc::Receiver<AppendRequest>, end: DurableEnd) {
    let Some(file) = inner
        .segments
        .read()
        .ok()
        .and_then(|s| s.get(&end.segment).cloned())
    else {
        inner.poisoned.store(true, Ordering::Release);
        return;
    };
    let mut state = WriterState { file, end };
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        let mut bytes: usize = group[0].records.iter().map(|r| r.json.len() + 12).sum();
        while bytes < inner.config.group_bytes {
            match rx.try_recv() {
                Ok(req) => {
                    bytes += req.records.iter().map(|r| r.json.len() + 12).sum::<usize>();
                    group.push(req);
                }
                Err(_) => break,
            }
        }
        if inner.poisoned.load(Ordering::Acquire) {
            for req in group {
                let _ = req.reply.send(Err(LogError::Poisoned));
            }
            continue;
        }
        match commit_group(inner, &mut state, &mut buf, &group) {
            Ok(results) => {
                inner.durable.send_replace(state.end);
                for (req, result) in group.into_iter().zip(results) {
                    let _ = req.reply.send(Ok(result));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "event log write failed; poisoning the log");
                inner.poisoned.store(true, Ordering::Release);
                for req in group {
                    let _ = req.reply.send(Err(LogError::Poisoned));
                }
            }
        }
    }
}

fn commit_group(
    inner: &Inner,
    state: &mut WriterState,
    buf: &mut Vec<u8>,
    group: &[AppendRequest],
) -> Result<Vec<Appended>, LogError> {
    if state.end.offset >= inner.config.segment_bytes {
        roll_segment(inner, state)?;
    }
    buf.clear();
    let mut next_seq = state.end.next_seq;
    let mut max_time = i64::MIN;
    let mut results = Vec::with_capacity(group.len());
    let mut positions = Vec::new();
    let mut frames = Vec::with_capacity(group.len());
    for req in group {
        let base = state.end.offset + buf.len() as u64;
        frames.push((next_seq, base));
        encode_frame(buf, base, next_seq, &req.records, &mut positions);
        results.push(Appended {
            first_seq: next_seq,
        });
        next_seq += req.records.len() as u64;
        max_time = req
            .records
            .iter()
            .map(|r| r.time_ms)
            .fold(max_time, i64::max);
    }
    let seg = &state.file;
    seg.file
        .write_all_at(buf, state.end.offset)
        .map_err(io_err(&seg.path))?;
    seg.file.sync_data().map_err(io_err(&seg.path))?;
    inner.syncs.fetch_add(1, Ordering::Relaxed);
    inner
        .appends
        .fetch_add(group.len() as u64, Ordering::Relaxed);
    seg.max_time_ms.fetch_max(max_time, Ordering::Relaxed);
    if let Body::Plain(lock) = &seg.body {
        let mut p = lock.write().map_err(|_| LogError::Poisoned)?;
        let p = p.get_or_insert_with(Positions::default);
        p.records.extend(positions);
        p.frames.extend(frames);
    }
    state.end.offset += buf.len() as u64;
    state.end.next_seq = next_seq;
    Ok(results)
}

fn roll_segment(inner: &Inner, state: &mut WriterState) -> Result<(), LogError> {
    let dir = &inner.config.dir;
    let first = state.end.next_seq;
    let (file, path) = open_segment(dir, first, true)?;
    file.write_all_at(&encode_header(first), 0)
        .map_err(io_err(&path))?;
    file.sync_all().map_err(io_err(&path))?;
    sync_dir(dir)?;
    let seg = Arc::new(Segment::plain(
        first,
        path,
        file,
        Some(Positions::default()),
    ));
    inner
        .segments
        .write()
        .map_err(|_| LogError::Poisoned)?
        .insert(first, Arc::clone(&seg));
    let sealed = state.end.segment;
    state.file = seg;
    state.end.segment = first;
    state.end.offset = HEADER_LEN;
    if let Ok(q) = inner.pack_queue.lock()
        && let Some(tx) = q.as_ref()
    {
        let _ = tx.send(sealed);
    }
    Ok(())
}

/// Answers `f` from a plain segment's positions, building them first (one scan of the segment)
/// if nobody has yet.
fn plain_positions<T>(
    seg: &Segment,
    lock: &RwLock<Option<Positions>>,
    f: impl Fn(&Positions) -> T,
) -> Result<T, LogError> {
    if let Some(p) = lock.read().map_err(|_| LogError::Poisoned)?.as_ref() {
        return Ok(f(p));
    }
    let mut built = Positions::default();
    each_record(seg, |seq, _, frame_at, offset, json| {
        if built.frames.last().is_none_or(|(_, at)| *at != frame_at) {
            built.frames.push((seq, frame_at));
        }
        built.records.push((offset, json.len() as u32));
        Ok(())
    })?;
    let mut w = lock.write().map_err(|_| LogError::Poisoned)?;
    let p = w.get_or_insert(built);
    Ok(f(p))
}

fn open_packed(dir: &Path, first: u64) -> Result<Segment, LogError> {
    let path = dir.join(packed::file_name(first));
    let file = File::open(&path).map_err(io_err(&path))?;
    let header = packed::read_header(&file, &path, first)?;
    Ok(Segment {
        first_seq: first,
        path,
        file,
        max_time_ms: AtomicI64::new(header.max_time_ms),
        body: Body::Packed(packed::Packed::new(header)),
    })
}

fn packer_loop(inner: &Inner, rx: &mpsc::Receiver<u64>) {
    while let Ok(first) = rx.recv() {
        if inner.closing.load(Ordering::Acquire) {
            return;
        }
        match pack_segment(inner, first) {
            Ok(true) => {
                inner.packed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {}
            // The plain segment stays and serves reads; packing is retried on the next open.
            Err(e) => {
                tracing::error!(segment = first, error = %e, "packing a sealed log segment failed")
            }
        }
    }
}

/// Packs one sealed plain segment: trains a dictionary on a sample of its records, writes the
/// packed file beside it, syncs it, renames it into place and swaps it in, then deletes the plain
/// file. Returns false when there was nothing to do (gone, already packed, or closing).
fn pack_segment(inner: &Inner, first: u64) -> Result<bool, LogError> {
    let Some(level) = inner.config.pack_level else {
        return Ok(false);
    };
    let seg = {
        let segs = inner.segments.read().map_err(|_| LogError::Poisoned)?;
        let sealed = segs.range(first + 1..).next().is_some();
        match segs.get(&first) {
            Some(s) if sealed && matches!(s.body, Body::Plain(_)) => Arc::clone(s),
            _ => return Ok(false),
        }
    };
    let started = std::time::Instant::now();
    let plain_len = seg.file.metadata().map_err(io_err(&seg.path))?.len();
    // One record in `step` is sampled, so that about SAMPLE_BUDGET bytes are sampled. They are
    // read at their positions (the writer kept them for a segment it sealed), so only the
    // compression pass below reads the whole segment.
    let Body::Plain(lock) = &seg.body else {
        return Ok(false);
    };
    let step = usize::try_from(plain_len / packed::SAMPLE_BUDGET)
        .unwrap_or(usize::MAX)
        .max(1);
    let picks: Vec<(u64, u32)> = plain_positions(&seg, lock, |p| {
        p.records.iter().step_by(step).copied().collect()
    })?;
    let mut samples = vec![0u8; picks.iter().map(|(_, len)| *len as usize).sum()];
    let mut sizes = Vec::with_capacity(picks.len());
    let mut at = 0;
    for (offset, len) in picks {
        let len = len as usize;
        seg.file
            .read_exact_at(&mut samples[at..at + len], offset)
            .map_err(io_err(&seg.path))?;
        sizes.push(len);
        at += len;
    }
    let dict = packed::train(&samples, &sizes, plain_len);
    drop(samples);
    let dir = &inner.config.dir;
    let final_path = dir.join(packed::file_name(first));
    let tmp = dir.join(format!("{}.tmp", packed::file_name(first)));
    let file = File::create(&tmp).map_err(io_err(&tmp))?;
    let mut builder = packed::Builder::new(file, &tmp, first, &dict, level)?;
    let mut abandoned = false;
    let next = each_record(&seg, |_, time_ms, _, _, json| {
        if inner.closing.load(Ordering::Acquire) {
            abandoned = true;
            return Err(LogError::Closed);
        }
        builder.push(time_ms, json)
    });
    let next = match next {
        Ok(next) => next,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return if abandoned { Ok(false) } else { Err(e) };
        }
    };
    let header = match builder.finish() {
        Ok(h) => h,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if first + u64::from(header.count) != next {
        let _ = std::fs::remove_file(&tmp);
        return Err(corrupt_at(
            &seg,
            0,
            "packed count differs from the plain segment",
        ));
    }
    {
        let mut segs = inner.segments.write().map_err(|_| LogError::Poisoned)?;
        let current = segs.get(&first).is_some_and(|s| Arc::ptr_eq(s, &seg));
        if !current {
            // Deleted by retention meanwhile.
            drop(segs);
            let _ = std::fs::remove_file(&tmp);
            return Ok(false);
        }
        std::fs::rename(&tmp, &final_path).map_err(io_err(&final_path))?;
        let packed = open_packed(dir, first)?;
        packed
            .max_time_ms
            .store(seg.max_time_ms.load(Ordering::Relaxed), Ordering::Relaxed);
        segs.insert(first, Arc::new(packed));
    }
    sync_dir(dir)?;
    std::fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
    sync_dir(dir)?;
    tracing::info!(
        segment = first,
        records = header.count,
        plain_bytes = plain_len,
        packed_bytes = header.file_len(),
        dictionary = header.dict_len,
        ms = started.elapsed().as_millis() as u64,
        "packed a sealed event log segment"
    );
    Ok(true)
}

/// Reads the log forward from a sequence number, never past the durable end. Blocking IO: use it
/// from a blocking thread.
pub struct LogReader {
    log: EventLog,
    next_seq: u64,
    /// In a plain segment: (segment, offset of the next frame) once known.
    pos: Option<(u64, u64)>,
}

impl LogReader {
    /// The sequence number the next read starts at.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Reads up to about `max_records` records (whole frames of a plain segment; at least one
    /// frame or record if any is there).
    pub fn read(&mut self, max_records: usize) -> Result<Vec<LogRecord>, LogError> {
        let end = self.log.durable_end();
        let mut out = Vec::new();
        while self.next_seq < end.next_seq && out.len() < max_records {
            let seg = self.log.segment_at(self.next_seq)?;
            match &seg.body {
                Body::Packed(p) => {
                    let idx = self.next_seq - seg.first_seq;
                    let n = (max_records - out.len()) as u64;
                    let n = n
                        .min(u64::from(p.header.count).saturating_sub(idx))
                        .min(end.next_seq - self.next_seq);
                    if n == 0 {
                        return Err(corrupt_at(
                            &seg,
                            0,
                            "packed segment ends before its successor",
                        ));
                    }
                    for (i, (time_ms, json)) in p
                        .read(&seg.file, &seg.path, idx, n)?
                        .into_iter()
                        .enumerate()
                    {
                        out.push(LogRecord {
                            seq: self.next_seq + i as u64,
                            time_ms,
                            json,
                        });
                    }
                    self.next_seq += n;
                    self.pos = None;
                }
                Body::Plain(lock) => {
                    let offset = match self.pos {
                        Some((s, o)) if s == seg.first_seq => o,
                        // Start at the frame holding the next record, not at the segment's start.
                        _ => plain_positions(&seg, lock, |p| p.frame_of(self.next_seq))?
                            .unwrap_or(HEADER_LEN),
                    };
                    let seg_end = if seg.first_seq == end.segment {
                        end.offset
                    } else {
                        seg.file.metadata().map_err(io_err(&seg.path))?.len()
                    };
                    let (frame_end, payload) = read_frame(&seg.file, offset, seg_end)
                        .map_err(io_err(&seg.path))?
                        .ok_or_else(|| {
                            corrupt_at(&seg, offset, "unreadable frame below the durable end")
                        })?;
                    let (ph, records) = decode_payload(&payload).ok_or_else(|| {
                        corrupt_at(&seg, offset, "frame contradicts its own header")
                    })?;
                    for (i, r) in records.iter().enumerate() {
                        let seq = ph.first_seq + i as u64;
                        if seq < self.next_seq {
                            continue;
                        }
                        out.push(LogRecord {
                            seq,
                            time_ms: r.time_ms,
                            json: payload[r.start..r.start + r.len].to_vec(),
                        });
                    }
                    self.next_seq = self.next_seq.max(ph.first_seq + u64::from(ph.count));
                    self.pos = Some((seg.first_seq, frame_end));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
