//! Turns a plan's routed records into log files: `{"Records":[...]}` in one gzip member, one
//! file per (account, region, kind), split so that no file is over CloudTrail's 50 MB.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, OnceLock, mpsc};

use flate2::write::GzEncoder;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};

use crate::filter::Route;
use crate::layout::{FileIdentity, object_key};

/// Largest JSON text put into one file. Compressed output is never larger than its input by
/// more than a few bytes per 64 KiB block, so files stay under CloudTrail's 50 MB.
pub const MAX_FILE_JSON: usize = 49_000_000;

/// A log file ready to publish.
#[derive(Debug, Clone)]
pub struct LogFile {
    pub key: String,
    pub route: Route,
    /// The gzip bytes (cheap to clone for a write and its retries).
    pub body: bytes::Bytes,
    pub records: usize,
    /// Size of the JSON inside.
    pub json_bytes: usize,
    /// Lowercase hex SHA-256 of the JSON inside (what a digest lists).
    pub sha256: String,
    /// Oldest and newest event time of the records (ms).
    pub oldest_event_ms: Option<i64>,
    pub newest_event_ms: Option<i64>,
}

/// What names a plan's files.
#[derive(Debug, Clone, Copy)]
pub struct Naming<'a> {
    pub trail_arn: &'a str,
    pub key_prefix: Option<&'a str>,
    pub org_id: Option<&'a str>,
    pub from: u64,
    pub to: u64,
    pub time_ms: i64,
}

struct Part {
    json: Vec<u8>,
    records: usize,
    oldest: Option<i64>,
    newest: Option<i64>,
    /// Its gzip, under way.
    member: Member,
}

const HEAD: &[u8] = b"{\"Records\":[";
const TAIL: &[u8] = b"]}";

/// Collects routed records into files, and compresses each file's full chunks while records are
/// still coming. Records are kept in log order within a file.
pub struct FileBuilder {
    groups: BTreeMap<Route, Vec<Part>>,
    threads: usize,
    /// Taken with the first full chunk: small plans never touch the compression threads.
    workers: Option<Arc<Workers>>,
}

impl Default for FileBuilder {
    fn default() -> Self {
        Self {
            groups: BTreeMap::new(),
            threads: cores(),
            workers: None,
        }
    }
}

impl FileBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a record (its JSON and event time) to its route's current file. Fails only if the
    /// compression threads cannot be started or have stopped.
    pub fn push(&mut self, route: Route, record_json: &[u8], event_ms: i64) -> std::io::Result<()> {
        let parts = self.groups.entry(route).or_default();
        let fits = parts.last().is_some_and(|p| {
            p.records == 0 || p.json.len() + record_json.len() + 1 + TAIL.len() <= MAX_FILE_JSON
        });
        if !fits {
            let mut json = Vec::with_capacity(64 * 1024);
            json.extend_from_slice(HEAD);
            parts.push(Part {
                json,
                records: 0,
                oldest: None,
                newest: None,
                member: Member::default(),
            });
        }
        let Some(p) = parts.last_mut() else {
            return Ok(());
        };
        if p.records > 0 {
            p.json.push(b',');
        }
        p.json.extend_from_slice(record_json);
        p.records += 1;
        p.oldest = Some(p.oldest.map_or(event_ms, |o| o.min(event_ms)));
        p.newest = Some(p.newest.map_or(event_ms, |n| n.max(event_ms)));
        if self.threads >= 2 && p.json.len() - p.member.sent > CHUNK {
            let workers = match &mut self.workers {
                Some(w) => w,
                slot => slot.insert(pool(self.threads)?),
            };
            p.member.feed(workers, &p.json)?;
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Compresses every file and names it. Every file's last chunk is queued before any file
    /// is joined, so the threads are not left idle between files.
    pub fn finish(mut self, naming: &Naming<'_>) -> std::io::Result<Vec<LogFile>> {
        for part in self.groups.values_mut().flatten() {
            part.json.extend_from_slice(TAIL);
            if let Some(w) = &self.workers
                && !part.member.pieces.is_empty()
            {
                part.member.close(w, &part.json)?;
            }
        }
        let mut out = Vec::new();
        for (route, parts) in self.groups {
            for (i, part) in parts.into_iter().enumerate() {
                let body = if part.member.pieces.is_empty() {
                    gzip_on(&part.json, self.threads)?
                } else {
                    part.member.join(&part.json)?
                };
                let id = FileIdentity {
                    trail_arn: naming.trail_arn,
                    account: &route.account,
                    region: &route.region,
                    kind: route.kind,
                    from: naming.from,
                    to: naming.to,
                    part: u32::try_from(i).unwrap_or(u32::MAX),
                };
                let key = object_key(naming.key_prefix, naming.org_id, &id, naming.time_ms);
                out.push(LogFile {
                    key,
                    body: body.into(),
                    records: part.records,
                    json_bytes: part.json.len(),
                    sha256: crate::digest::sha256_hex(&part.json),
                    oldest_event_ms: part.oldest,
                    newest_event_ms: part.newest,
                    route: route.clone(),
                });
            }
        }
        Ok(out)
    }
}

/// The gzip level of log and digest files (`gzip -6`'s).
const LEVEL: u32 = 6;
/// Input compressed per task when a file is compressed on several threads.
const CHUNK: usize = 1 << 20;
/// Deflate's window: each chunk is primed with this much of the input before it.
const WINDOW: usize = 32 * 1024;

/// One gzip member at level 6 (what `gzip -6` writes, and what CloudTrail's validator expects:
/// it inflates one member only). Input of two chunks or more is compressed on a thread per core
/// (see [`Member`]).
pub fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    gzip_on(data, cores())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn gzip_on(data: &[u8], threads: usize) -> std::io::Result<Vec<u8>> {
    if threads < 2 || data.len() < 2 * CHUNK {
        return gzip_serial(data);
    }
    let workers = pool(threads)?;
    let mut member = Member::default();
    member.feed(&workers, data)?;
    member.close(&workers, data)?;
    member.join(data)
}

/// The compression threads: the process's one pool of a thread per core, shared by every
/// trail's delivery, or (tests) a pool of its own for another thread count.
fn pool(threads: usize) -> std::io::Result<Arc<Workers>> {
    static SHARED: OnceLock<Arc<Workers>> = OnceLock::new();
    if threads != cores() {
        return Ok(Arc::new(Workers::new(threads)?));
    }
    if let Some(w) = SHARED.get() {
        return Ok(Arc::clone(w));
    }
    // Two first callers may both start a pool; the one not kept ends when dropped.
    let started = Arc::new(Workers::new(threads)?);
    Ok(Arc::clone(SHARED.get_or_init(|| started)))
}

fn gzip_serial(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = GzEncoder::new(
        Vec::with_capacity(data.len() / 8 + 64),
        Compression::new(LEVEL),
    );
    enc.write_all(data)?;
    enc.finish()
}

/// A gzip member compressed pigz's way while its input is still being written: each full 1 MiB
/// chunk goes to the compression threads as soon as it exists, as raw deflate primed with the
/// 32 KiB before it and ended by a sync flush (the last chunk finishes the stream), so the
/// pieces join into one deflate stream; the chunks' CRC-32s are combined. Compressing a file
/// thus overlaps reading and routing its records.
#[derive(Default)]
struct Member {
    /// Input bytes handed to the workers so far.
    sent: usize,
    /// The pieces, in input order.
    pieces: Vec<mpsc::Receiver<std::io::Result<Piece>>>,
}

impl Member {
    /// Hands out every full chunk of `data` (the input so far) not yet sent. The bytes after
    /// the last full chunk wait: more input may follow.
    fn feed(&mut self, workers: &Workers, data: &[u8]) -> std::io::Result<()> {
        while data.len() - self.sent > CHUNK {
            self.pieces
                .push(workers.submit(data, self.sent, self.sent + CHUNK, false)?);
            self.sent += CHUNK;
        }
        Ok(())
    }

    /// Sends the rest of `data` (the whole input) as the last chunk.
    fn close(&mut self, workers: &Workers, data: &[u8]) -> std::io::Result<()> {
        self.pieces
            .push(workers.submit(data, self.sent, data.len(), true)?);
        self.sent = data.len();
        Ok(())
    }

    /// Joins the pieces of a closed member (`data` is the whole input) into the gzip file.
    fn join(self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        // Header: deflate, no flags, no time, no extra flags, unknown OS (as flate2 writes it).
        let mut out = Vec::with_capacity(data.len() / 6 + 64);
        out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
        let mut crc = Crc::new();
        for piece in self.pieces {
            let (deflated, piece_crc) = piece
                .recv()
                .map_err(|_| std::io::Error::other("a compression thread failed"))??;
            out.extend_from_slice(&deflated);
            crc.combine(&piece_crc);
        }
        out.extend_from_slice(&crc.sum().to_le_bytes());
        // ISIZE: the input length modulo 2^32.
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        Ok(out)
    }
}

/// A chunk to compress: its input with the window before it in front, and where its answer goes.
struct Job {
    input: Vec<u8>,
    dict_len: usize,
    last: bool,
    done: mpsc::Sender<std::io::Result<Piece>>,
}

/// Compression threads fed through a bounded queue: when they fall behind, the thread
/// producing the input waits instead of piling up chunks. Dropping it ends the threads after
/// the work queued.
struct Workers {
    jobs: Option<mpsc::SyncSender<Job>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    fn new(threads: usize) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Job>(threads * 2);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let mut handles = Vec::with_capacity(threads);
        for _ in 0..threads {
            let rx = std::sync::Arc::clone(&rx);
            handles.push(
                std::thread::Builder::new()
                    .name("opentrail-gzip".into())
                    .spawn(move || {
                        loop {
                            let job = match rx.lock() {
                                Ok(queue) => queue.recv(),
                                Err(_) => return,
                            };
                            let Ok(job) = job else { return };
                            let (dict, chunk) = job.input.split_at(job.dict_len);
                            // A panic fails this chunk's file, not the shared thread.
                            let piece =
                                std::panic::catch_unwind(|| deflate_chunk(chunk, dict, job.last))
                                    .unwrap_or_else(|_| {
                                        Err(std::io::Error::other("compressing a chunk panicked"))
                                    });
                            // The producer may have given up; its answer is then not wanted.
                            let _ = job.done.send(piece);
                        }
                    })?,
            );
        }
        Ok(Self {
            jobs: Some(tx),
            threads: handles,
        })
    }

    /// Queues `data[start..end]` (primed with the window before `start`); the receiver gets
    /// its piece.
    fn submit(
        &self,
        data: &[u8],
        start: usize,
        end: usize,
        last: bool,
    ) -> std::io::Result<mpsc::Receiver<std::io::Result<Piece>>> {
        let from = start.saturating_sub(WINDOW);
        let (done, piece) = mpsc::channel();
        let job = Job {
            input: data[from..end].to_vec(),
            dict_len: start - from,
            last,
            done,
        };
        self.jobs
            .as_ref()
            .ok_or_else(|| std::io::Error::other("compression threads stopped"))?
            .send(job)
            .map_err(|_| std::io::Error::other("compression threads stopped"))?;
        Ok(piece)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.jobs.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One compressed chunk: its deflate bytes and the CRC-32 of its input.
type Piece = (Vec<u8>, Crc);

/// Raw deflate of one chunk, primed with `dict`; sync-flushed, or finished if `last`.
fn deflate_chunk(chunk: &[u8], dict: &[u8], last: bool) -> std::io::Result<Piece> {
    let mut c = Compress::new(Compression::new(LEVEL), false);
    if !dict.is_empty() {
        c.set_dictionary(dict).map_err(std::io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(chunk.len() / 4 + 1024);
    loop {
        let consumed = usize::try_from(c.total_in()).unwrap_or(chunk.len());
        let status = c
            .compress_vec(&chunk[consumed.min(chunk.len())..], &mut out, flush)
            .map_err(std::io::Error::other)?;
        let all_in = usize::try_from(c.total_in()).is_ok_and(|n| n == chunk.len());
        // A flush is complete when it returns with output space left over.
        let finished = if last {
            status == Status::StreamEnd
        } else {
            all_in && out.len() < out.capacity()
        };
        if finished {
            break;
        }
        out.reserve(64 * 1024);
    }
    let mut crc = Crc::new();
    crc.update(chunk);
    Ok((out, crc))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Log-like bytes of `n` records: repetitive structure with varying ids.
    fn sample(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        let mut x: u64 = 7;
        for i in 0..n {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            v.extend_from_slice(
                format!(
                    "{{\"eventID\":\"{x:016x}\",\"eventName\":\"Op{}\",\"n\":{i}}},",
                    x % 37
                )
                .as_bytes(),
            );
        }
        v
    }

    #[test]
    fn parallel_gzip_is_one_member_that_inflates_to_the_input() {
        for len in [0, 10, 2 * CHUNK - 1, 2 * CHUNK, 5 * CHUNK + 12_345] {
            let data: Vec<u8> = sample(len / 40 + 1).into_iter().take(len).collect();
            assert_eq!(data.len(), len);
            for threads in [1, 2, 3] {
                let gz = gzip_on(&data, threads).expect("gzip");
                // GzDecoder reads exactly one member, as CloudTrail's validator does.
                let mut back = Vec::new();
                flate2::read::GzDecoder::new(&gz[..])
                    .read_to_end(&mut back)
                    .expect("inflate");
                assert!(back == data, "len {len}, {threads} threads");
                // Nothing after the member (a `&[u8]` is its own buffer, so what the decoder
                // leaves is exactly what follows the member).
                let mut dec = flate2::bufread::GzDecoder::new(&gz[..]);
                std::io::copy(&mut dec, &mut std::io::sink()).expect("inflate");
                assert!(
                    dec.into_inner().is_empty(),
                    "trailing bytes after the member"
                );
            }
        }
        // Priming each chunk with the window keeps the ratio near the serial one.
        let data = sample(100_000);
        let serial = gzip_on(&data, 1).expect("gzip").len();
        let parallel = gzip_on(&data, 2).expect("gzip").len();
        assert!(
            parallel as f64 <= serial as f64 * 1.01,
            "parallel {parallel} B against serial {serial} B"
        );
    }
    use crate::layout::FileKind;
    use std::io::Read;

    fn route(region: &str) -> Route {
        Route {
            account: "111122223333".into(),
            region: region.into(),
            kind: FileKind::Log,
        }
    }

    fn naming() -> Naming<'static> {
        Naming {
            trail_arn: "arn:aws:cloudtrail:us-east-1:111122223333:trail/t",
            key_prefix: None,
            org_id: None,
            from: 0,
            to: 3,
            time_ms: 1_438_395_037_000,
        }
    }

    #[test]
    fn one_file_per_region_with_the_records_verbatim() {
        let mut b = FileBuilder::new();
        b.push(route("us-east-1"), br#"{"a":1}"#, 5).expect("push");
        b.push(route("eu-west-1"), br#"{"b":2}"#, 1).expect("push");
        b.push(route("us-east-1"), br#"{"c": [3]}"#, 3)
            .expect("push");
        let files = b.finish(&naming()).expect("finish");
        assert_eq!(files.len(), 2);
        let east = files
            .iter()
            .find(|f| f.route.region == "us-east-1")
            .expect("east");
        assert_eq!(east.records, 2);
        let mut text = String::new();
        flate2::read::GzDecoder::new(&east.body[..])
            .read_to_string(&mut text)
            .expect("gunzip");
        assert_eq!(text, r#"{"Records":[{"a":1},{"c": [3]}]}"#);
        assert_eq!(east.sha256, crate::digest::sha256_hex(text.as_bytes()));
        assert_eq!(
            (east.oldest_event_ms, east.newest_event_ms),
            (Some(3), Some(5))
        );
        assert!(east.key.contains("/CloudTrail/us-east-1/2015/08/01/"));
        // Replaying the same plan names the same files.
        let mut again = FileBuilder::new();
        again
            .push(route("us-east-1"), br#"{"a":1}"#, 5)
            .expect("push");
        let again = again.finish(&naming()).expect("finish");
        assert_eq!(again[0].key, east.key);
    }

    /// Files compressed chunk by chunk while records arrive, interleaved between two routes,
    /// are each one gzip member holding exactly the records' JSON, on any number of threads.
    #[test]
    fn files_compressed_while_records_arrive_are_one_member_each() {
        let records: Vec<Vec<u8>> = (0..60_000)
            .map(|i| {
                let mut r = sample(1 + i % 5);
                r.pop();
                r
            })
            .collect();
        for threads in [1, 2, 3] {
            let mut b = FileBuilder {
                threads,
                ..FileBuilder::default()
            };
            let mut want: BTreeMap<String, Vec<&[u8]>> = BTreeMap::new();
            for (i, r) in records.iter().enumerate() {
                let region = if i % 3 == 0 { "eu-west-1" } else { "us-east-1" };
                b.push(route(region), r, 0).expect("push");
                want.entry(region.to_owned()).or_default().push(r);
            }
            assert_eq!(b.workers.is_some(), threads > 1, "{threads} threads");
            let files = b.finish(&naming()).expect("finish");
            assert_eq!(files.len(), 2);
            for f in files {
                let mut json = HEAD.to_vec();
                json.extend_from_slice(&want[&f.route.region].join(&b',')[..]);
                json.extend_from_slice(TAIL);
                assert!(json.len() > 2 * CHUNK, "files span several chunks");
                let mut dec = flate2::bufread::GzDecoder::new(&f.body[..]);
                let mut back = Vec::new();
                dec.read_to_end(&mut back).expect("inflate");
                assert!(back == json, "{} on {threads} threads", f.route.region);
                assert!(dec.into_inner().is_empty(), "one member, nothing after it");
                assert_eq!(f.sha256, crate::digest::sha256_hex(&json));
                assert_eq!(f.json_bytes, json.len());
            }
        }
    }

    /// A member fed while its input grows, with the input ending just below, at and just
    /// past chunk boundaries, joins into exactly its input.
    #[test]
    fn a_member_fed_as_it_grows_holds_its_input_exactly() {
        let all = sample(3 * CHUNK / 40 + 100);
        for len in [
            CHUNK + 1,
            2 * CHUNK - 1,
            2 * CHUNK,
            2 * CHUNK + 1,
            3 * CHUNK,
        ] {
            let data = &all[..len];
            let workers = Workers::new(2).expect("threads");
            let mut m = Member::default();
            let mut at = 0;
            while at < len {
                at = (at + 77_777).min(len);
                m.feed(&workers, &data[..at]).expect("feed");
                assert!(m.sent < at, "bytes are held back for the last chunk");
            }
            m.close(&workers, data).expect("close");
            let gz = m.join(data).expect("join");
            let mut dec = flate2::bufread::GzDecoder::new(&gz[..]);
            let mut back = Vec::new();
            dec.read_to_end(&mut back).expect("inflate");
            assert!(back == data, "len {len}");
            assert!(dec.into_inner().is_empty(), "len {len}: one member");
        }
    }

    #[test]
    fn large_groups_split_into_parts_under_the_limit() {
        let mut b = FileBuilder::new();
        let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(10_000_000)).into_bytes();
        for _ in 0..6 {
            b.push(route("us-east-1"), &big, 0).expect("push");
        }
        let files = b.finish(&naming()).expect("finish");
        assert_eq!(files.len(), 2);
        assert!(files.iter().all(|f| f.json_bytes <= MAX_FILE_JSON));
        assert_eq!(files.iter().map(|f| f.records).sum::<usize>(), 6);
        assert_ne!(files[0].key, files[1].key);
    }
}
