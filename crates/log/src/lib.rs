//! The durable event log: every accepted event is appended here first, and every other view
//! (event history, trail delivery, digests, Insights) is derived from it by reading forward from
//! its own persisted cursor.
//!
//! - Segment files (`<first_seq:020>.seg`) of checksummed frames; see [`format`].
//! - One writer thread does group commit: it takes every append waiting in its queue, writes them
//!   with one `write` and one `fdatasync`, then acknowledges them all. An append's future resolves
//!   only after its bytes are durable.
//! - A failed write or sync poisons the log: later appends fail, nothing pretends to succeed.
//! - Recovery on open verifies the last segment frame by frame and truncates only a torn tail (an
//!   incomplete or garbled last frame, or zero fill). Damage with valid data after it is refused.
//! - Readers never see bytes that are not yet durable.

pub mod format;

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

use format::{
    FRAME_HEADER_LEN, HEADER_LEN, MAX_FRAME_LEN, PAYLOAD_HEADER_LEN, check_header, decode_payload,
    decode_payload_header, encode_frame, encode_header, parse_segment_file_name, segment_file_name,
};
pub use format::{Location, NewRecord};

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
    #[error("record at {0:?} is not in the log")]
    BadLocation(Location),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
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
}

impl LogConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: 128 * 1024 * 1024,
            group_bytes: 16 * 1024 * 1024,
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
}

/// The durable end of the log: the next sequence number, and where the last segment ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurableEnd {
    pub next_seq: u64,
    pub segment: u64,
    pub offset: u64,
}

/// The answer to an append: the first assigned sequence number and each record's location.
#[derive(Debug, Clone)]
pub struct Appended {
    pub first_seq: u64,
    pub locations: Vec<Location>,
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
    pub location: Location,
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

/// Verifies the last segment frame by frame and cuts a torn tail. Returns (next_seq, end offset,
/// newest time, bytes truncated).
fn recover_last(seg: &Segment) -> Result<(u64, u64, i64, u64), LogError> {
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
        return Ok((seg.first_seq, HEADER_LEN, i64::MIN, file_len));
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
        return Ok((seg.first_seq, HEADER_LEN, i64::MIN, file_len - HEADER_LEN));
    }
    let mut at = HEADER_LEN;
    let mut next = seg.first_seq;
    let mut max_time = i64::MIN;
    while at < file_len {
        match read_frame(&seg.file, at, file_len).map_err(io_err(&seg.path))? {
            Some((frame_end, payload)) => {
                let (ph, _) = decode_payload(&payload)
                    .ok_or_else(|| corrupt_at(seg, at, "frame contradicts its own header"))?;
                if ph.first_seq != next {
                    return Err(corrupt_at(
                        seg,
                        at,
                        &format!("expected sequence {next}, frame starts at {}", ph.first_seq),
                    ));
                }
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
                return Ok((next, at, max_time, cut));
            }
        }
    }
    Ok((next, at, max_time, 0))
}

impl EventLog {
    /// Opens (creating if needed) the log in `config.dir`, recovers it, and starts the writer.
    pub fn open(config: LogConfig) -> Result<(Self, RecoveryReport), LogError> {
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut firsts: Vec<u64> = std::fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| parse_segment_file_name(&e.file_name().to_string_lossy()))
            .collect();
        firsts.sort_unstable();
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
            let (file, path) = open_segment(&dir, first, false)?;
            let seg = Segment {
                first_seq: first,
                path,
                file,
                max_time_ms: AtomicI64::new(i64::MIN),
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
            let (next, max_time) = if first == last_first {
                let (next, offset, max_time, cut) = recover_last(&seg)?;
                end = DurableEnd {
                    next_seq: next,
                    segment: first,
                    offset,
                };
                report.truncated_bytes = cut;
                (next, max_time)
            } else {
                scan_sealed(&seg)?
            };
            seg.max_time_ms.store(max_time, Ordering::Relaxed);
            expected_next = Some(next);
            segments.insert(first, Arc::new(seg));
        }
        report.next_seq = end.next_seq;
        let (durable, _) = watch::channel(end);
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            config,
            segments: RwLock::new(segments),
            durable,
            poisoned: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
            appends: AtomicU64::new(0),
            queue: Mutex::new(Some(tx)),
            writer: Mutex::new(None),
        });
        let writer_inner = Arc::clone(&inner);
        let handle = std::thread::Builder::new()
            .name("opentrail-log-writer".into())
            .spawn(move || writer_loop(&writer_inner, &rx, end))
            .map_err(io_err(&dir))?;
        if let Ok(mut w) = inner.writer.lock() {
            *w = Some(handle);
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
                locations: Vec::new(),
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

    /// Reads one record's JSON by location (a positioned read; blocking IO).
    pub fn read_at(&self, loc: Location) -> Result<Vec<u8>, LogError> {
        let seg = self
            .segment(loc.segment)
            .ok_or(LogError::BadLocation(loc))?;
        let mut buf = vec![0u8; loc.len as usize];
        seg.file
            .read_exact_at(&mut buf, loc.offset)
            .map_err(io_err(&seg.path))?;
        Ok(buf)
    }

    fn segment(&self, first_seq: u64) -> Option<Arc<Segment>> {
        self.inner.segments.read().ok()?.get(&first_seq).cloned()
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

    /// Stops the writer after it has answered everything queued. Every acknowledged append was
    /// already synced, so nothing more needs flushing.
    pub fn close(&self) {
        if let Ok(mut q) = self.inner.queue.lock() {
            q.take();
        }
        let handle = self.inner.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(h) = handle
            && h.join().is_err()
        {
            tracing::error!("event log writer thread panicked");
        }
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
    for req in group {
        let base = state.end.offset + buf.len() as u64;
        let locations = encode_frame(buf, base, state.end.segment, next_seq, &req.records);
        results.push(Appended {
            first_seq: next_seq,
            locations,
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
    let seg = Arc::new(Segment {
        first_seq: first,
        path,
        file,
        max_time_ms: AtomicI64::new(i64::MIN),
    });
    inner
        .segments
        .write()
        .map_err(|_| LogError::Poisoned)?
        .insert(first, Arc::clone(&seg));
    state.file = seg;
    state.end.segment = first;
    state.end.offset = HEADER_LEN;
    Ok(())
}

/// Reads the log forward from a sequence number, never past the durable end. Blocking IO: use it
/// from a blocking thread.
pub struct LogReader {
    log: EventLog,
    next_seq: u64,
    /// (segment, offset of the next frame) once known.
    pos: Option<(u64, u64)>,
}

impl LogReader {
    /// The sequence number the next read starts at.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Reads up to about `max_records` records (whole frames; at least one frame if any is there).
    pub fn read(&mut self, max_records: usize) -> Result<Vec<LogRecord>, LogError> {
        let end = self.log.durable_end();
        let mut out = Vec::new();
        while self.next_seq < end.next_seq && out.len() < max_records {
            let (segment, offset) = match self.pos {
                Some(p) => p,
                None => (self.segment_for(self.next_seq)?, HEADER_LEN),
            };
            let seg = self
                .log
                .segment(segment)
                .ok_or(LogError::Truncated(self.next_seq))?;
            let seg_end = if segment == end.segment {
                end.offset
            } else {
                seg.file.metadata().map_err(io_err(&seg.path))?.len()
            };
            if offset >= seg_end {
                // Past the end of a sealed segment: move to the one that follows.
                let next_first = self
                    .log
                    .inner
                    .segments
                    .read()
                    .map_err(|_| LogError::Poisoned)?
                    .range(segment + 1..)
                    .next()
                    .map(|(k, _)| *k);
                match next_first {
                    Some(n) => {
                        self.pos = Some((n, HEADER_LEN));
                        continue;
                    }
                    None => break,
                }
            }
            let (frame_end, payload) = read_frame(&seg.file, offset, seg_end)
                .map_err(io_err(&seg.path))?
                .ok_or_else(|| {
                    corrupt_at(&seg, offset, "unreadable frame below the durable end")
                })?;
            let (ph, records) = decode_payload(&payload)
                .ok_or_else(|| corrupt_at(&seg, offset, "frame contradicts its own header"))?;
            let payload_base = offset + FRAME_HEADER_LEN;
            for (i, r) in records.iter().enumerate() {
                let seq = ph.first_seq + i as u64;
                if seq < self.next_seq {
                    continue;
                }
                out.push(LogRecord {
                    seq,
                    time_ms: r.time_ms,
                    location: Location {
                        segment,
                        offset: payload_base + r.start as u64,
                        len: r.len as u32,
                    },
                    json: payload[r.start..r.start + r.len].to_vec(),
                });
            }
            self.next_seq = self.next_seq.max(ph.first_seq + u64::from(ph.count));
            self.pos = Some((segment, frame_end));
        }
        Ok(out)
    }

    fn segment_for(&self, seq: u64) -> Result<u64, LogError> {
        let segs = self
            .log
            .inner
            .segments
            .read()
            .map_err(|_| LogError::Poisoned)?;
        let first = segs.keys().next().copied().unwrap_or(0);
        if seq < first {
            return Err(LogError::Truncated(seq));
        }
        segs.range(..=seq)
            .next_back()
            .map(|(k, _)| *k)
            .ok_or(LogError::Truncated(seq))
    }
}

#[cfg(test)]
mod tests;
