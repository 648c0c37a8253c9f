use std::path::Path;

use super::*;

fn rec(i: u64) -> NewRecord {
    NewRecord {
        time_ms: 1_000 + i as i64,
        json: format!("{{\"n\":{i}}}").into_bytes(),
    }
}

fn open(dir: &Path) -> (EventLog, RecoveryReport) {
    EventLog::open(LogConfig::new(dir)).expect("open")
}

fn read_all(log: &EventLog) -> Vec<LogRecord> {
    let mut r = log.reader(log.first_seq());
    let mut out = Vec::new();
    loop {
        let batch = r.read(1000).expect("read");
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

fn numbers(records: &[LogRecord]) -> Vec<u64> {
    records
        .iter()
        .map(|r| {
            let v: std::collections::HashMap<String, u64> = serde_json_lite(&r.json);
            v["n"]
        })
        .collect()
}

/// Parses `{"n":123}` without pulling a JSON crate into the log's tests.
fn serde_json_lite(b: &[u8]) -> std::collections::HashMap<String, u64> {
    let s = std::str::from_utf8(b).expect("utf8");
    let n: u64 = s
        .trim_start_matches("{\"n\":")
        .trim_end_matches('}')
        .parse()
        .expect("number");
    std::iter::once(("n".to_owned(), n)).collect()
}

#[tokio::test]
async fn appends_are_dense_readable_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, report) = open(dir.path());
    assert_eq!(report.next_seq, 0);
    let a = log
        .append(vec![rec(0), rec(1), rec(2)])
        .await
        .expect("append");
    let b = log.append(vec![rec(3)]).await.expect("append");
    assert_eq!((a.first_seq, b.first_seq), (0, 3));
    assert_eq!(log.read_seq(a.first_seq + 1).expect("read"), b"{\"n\":1}");
    assert_eq!(numbers(&read_all(&log)), vec![0, 1, 2, 3]);
    log.close();
    let (log, report) = open(dir.path());
    assert_eq!(
        report,
        RecoveryReport {
            segments: 1,
            next_seq: 4,
            truncated_bytes: 0
        }
    );
    assert_eq!(log.read_seq(b.first_seq).expect("read"), b"{\"n\":3}");
    let c = log.append(vec![rec(4)]).await.expect("append");
    assert_eq!(c.first_seq, 4);
    let all = read_all(&log);
    assert_eq!(numbers(&all), vec![0, 1, 2, 3, 4]);
    assert_eq!(
        all.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert_eq!(all[4].time_ms, 1_004);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_syncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path());
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20u64 {
                log.append(vec![rec(t * 1000 + i)]).await.expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let (syncs, appends) = log.stats();
    assert_eq!(appends, 64 * 20);
    assert!(
        syncs < appends,
        "group commit must share syncs: {syncs} syncs for {appends} appends"
    );
    let all = read_all(&log);
    assert_eq!(all.len(), 1280);
    let mut ns = numbers(&all);
    ns.sort_unstable();
    ns.dedup();
    assert_eq!(ns.len(), 1280);
}

#[tokio::test]
async fn reader_follows_the_durable_end_and_resumes_mid_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path());
    let mut reader = log.reader(0);
    assert!(reader.read(10).expect("read").is_empty());
    log.append(vec![rec(0), rec(1)]).await.expect("append");
    assert_eq!(numbers(&reader.read(10).expect("read")), vec![0, 1]);
    log.append(vec![rec(2), rec(3), rec(4)])
        .await
        .expect("append");
    assert_eq!(numbers(&reader.read(10).expect("read")), vec![2, 3, 4]);
    // A new reader from the middle of a frame skips what lies before it.
    let mut mid = log.reader(3);
    assert_eq!(numbers(&mid.read(10).expect("read")), vec![3, 4]);
    assert_eq!(mid.next_seq(), 5);
}

#[tokio::test]
async fn segments_roll_and_retention_deletes_only_what_is_passed_and_old() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = LogConfig::new(dir.path());
    config.segment_bytes = 200;
    let (log, _) = EventLog::open(config.clone()).expect("open");
    for i in 0..10u64 {
        log.append(vec![rec(i), rec(100 + i)])
            .await
            .expect("append");
    }
    let segs = std::fs::read_dir(dir.path()).expect("dir").count();
    assert!(segs > 2, "expected several segments, got {segs}");
    assert_eq!(numbers(&read_all(&log)).len(), 20);
    // Views have passed nothing: nothing may go.
    assert_eq!(log.delete_segments(0, i64::MAX).expect("retain"), 0);
    // Everything is old but views have passed only seq < 6.
    let deleted = log.delete_segments(6, i64::MAX).expect("retain");
    assert!(deleted >= 1);
    assert!(log.first_seq() <= 6 && log.first_seq() > 0);
    assert!(matches!(log.reader(0).read(1), Err(LogError::Truncated(0))));
    // Nothing is older than the cutoff: nothing goes.
    assert_eq!(log.delete_segments(u64::MAX, 0).expect("retain"), 0);
    let first = log.first_seq();
    log.close();
    let (log, report) = EventLog::open(config).expect("reopen");
    assert_eq!(report.next_seq, 20);
    assert_eq!(read_all(&log).first().map(|r| r.seq), Some(first));
}

fn seg_path(dir: &Path) -> PathBuf {
    dir.join(format::segment_file_name(0))
}

async fn write_three_frames(dir: &Path) -> u64 {
    let (log, _) = open(dir);
    log.append(vec![rec(0), rec(1)]).await.expect("append");
    log.append(vec![rec(2)]).await.expect("append");
    log.append(vec![rec(3), rec(4)]).await.expect("append");
    log.close();
    std::fs::metadata(seg_path(dir)).expect("meta").len()
}

#[tokio::test]
async fn torn_tail_is_cut_and_everything_before_it_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let len = write_three_frames(dir.path()).await;
    // Half of the last frame is missing.
    let f = OpenOptions::new()
        .write(true)
        .open(seg_path(dir.path()))
        .expect("open");
    f.set_len(len - 10).expect("truncate");
    let (log, report) = open(dir.path());
    assert_eq!(report.next_seq, 3);
    assert!(report.truncated_bytes > 0);
    assert_eq!(numbers(&read_all(&log)), vec![0, 1, 2]);
    // The log goes on from there.
    assert_eq!(log.append(vec![rec(9)]).await.expect("append").first_seq, 3);
}

#[tokio::test]
async fn zero_fill_tail_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let len = write_three_frames(dir.path()).await;
    let f = OpenOptions::new()
        .write(true)
        .open(seg_path(dir.path()))
        .expect("open");
    f.set_len(len + 4096).expect("extend");
    let (log, report) = open(dir.path());
    assert_eq!((report.next_seq, report.truncated_bytes), (5, 4096));
    assert_eq!(numbers(&read_all(&log)), vec![0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn garbled_last_frame_is_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let len = write_three_frames(dir.path()).await;
    let f = OpenOptions::new()
        .write(true)
        .open(seg_path(dir.path()))
        .expect("open");
    f.write_all_at(b"X", len - 2).expect("flip");
    let (log, report) = open(dir.path());
    assert_eq!(report.next_seq, 3);
    assert_eq!(numbers(&read_all(&log)), vec![0, 1, 2]);
}

#[tokio::test]
async fn damage_before_the_tail_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_three_frames(dir.path()).await;
    let f = OpenOptions::new()
        .write(true)
        .open(seg_path(dir.path()))
        .expect("open");
    // Inside the first record of the first frame.
    f.write_all_at(b"X", HEADER_LEN + 8 + 28 + 12 + 2)
        .expect("flip");
    match EventLog::open(LogConfig::new(dir.path())) {
        Err(LogError::Corrupt { offset, .. }) => assert_eq!(offset, HEADER_LEN),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("corrupt log must not open"),
    }
}

#[tokio::test]
async fn a_bad_header_on_a_sealed_segment_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = LogConfig::new(dir.path());
    config.segment_bytes = 100;
    config.pack_level = None;
    let (log, _) = EventLog::open(config.clone()).expect("open");
    for i in 0..5 {
        log.append(vec![rec(i)]).await.expect("append");
    }
    log.close();
    let f = OpenOptions::new()
        .write(true)
        .open(seg_path(dir.path()))
        .expect("open");
    f.write_all_at(b"NOTALOG!", 0).expect("clobber");
    assert!(matches!(
        EventLog::open(config),
        Err(LogError::Corrupt { offset: 0, .. })
    ));
}

/// A record shaped like an audit event, so that packing has something to learn.
fn event(i: u64) -> NewRecord {
    let names = [
        "DescribeInstances",
        "GetObject",
        "PutObject",
        "AssumeRole",
        "ListBuckets",
    ];
    let name = names[(i % 5) as usize];
    NewRecord {
        time_ms: 1_700_000_000_000 + i as i64 * 1_000,
        json: format!(
            "{{\"eventVersion\":\"1.08\",\"eventID\":\"{:032x}\",\"eventName\":\"{name}\",\
             \"eventSource\":\"ec2.amazonaws.com\",\"userIdentity\":{{\"type\":\"IAMUser\",\
             \"userName\":\"user{}\"}},\"sourceIPAddress\":\"10.0.{}.{}\",\"seq\":{i}}}",
            i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            i % 7,
            i % 13,
            i % 251
        )
        .into_bytes(),
    }
}

fn packed_config(dir: &Path) -> LogConfig {
    let mut config = LogConfig::new(dir);
    config.segment_bytes = 16 * 1024;
    config
}

/// A log with small segments and packing off, holding events `0..n`.
async fn unpacked_with_events(dir: &Path, n: u64) -> (LogConfig, EventLog) {
    let mut config = packed_config(dir);
    config.pack_level = None;
    let (log, _) = EventLog::open(config.clone()).expect("open");
    write_events(&log, n).await;
    (config, log)
}

fn files_with(dir: &Path, ext: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(ext))
        .collect();
    v.sort();
    v
}

async fn write_events(log: &EventLog, n: u64) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(7) {
        log.append(chunk.iter().map(|&i| event(i)).collect())
            .await
            .expect("append");
    }
}

fn assert_events(log: &EventLog, n: u64) {
    let all = read_all(log);
    assert_eq!(all.len() as u64, n);
    for (i, r) in all.iter().enumerate() {
        let want = event(i as u64);
        assert_eq!((r.seq, r.time_ms), (i as u64, want.time_ms));
        assert_eq!(r.json, want.json, "record {i}");
    }
    for i in (0..n).step_by(13) {
        assert_eq!(log.read_seq(i).expect("read_seq"), event(i).json);
    }
    // A reader that starts inside a packed segment.
    let mut mid = log.reader(n / 2 + 1);
    let got = mid.read(3).expect("read");
    assert_eq!(got.first().map(|r| r.seq), Some(n / 2 + 1));
    assert!(matches!(log.read_seq(n), Err(LogError::NotYet(s)) if s == n));
}

#[tokio::test]
async fn sealed_segments_are_packed_smaller_and_read_back_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = packed_config(dir.path());
    let (log, _) = EventLog::open(config.clone()).expect("open");
    write_events(&log, 600).await;
    let plain_bytes: u64 = 600 * (event(300).json.len() as u64 + 12);
    assert!(log.wait_packed(std::time::Duration::from_secs(30)));
    let packed = files_with(dir.path(), ".zseg");
    let plain = files_with(dir.path(), ".seg");
    assert!(packed.len() >= 3, "{packed:?}");
    assert_eq!(
        plain.len(),
        1,
        "only the segment being written stays plain: {plain:?}"
    );
    assert_eq!(log.packed_segments(), packed.len() as u64);
    let on_disk: u64 = packed
        .iter()
        .chain(&plain)
        .map(|n| std::fs::metadata(dir.path().join(n)).expect("meta").len())
        .sum();
    assert!(
        on_disk * 2 < plain_bytes,
        "packed log {on_disk} B is not under half of {plain_bytes} B"
    );
    assert_events(&log, 600);
    log.close();
    let (log, report) = EventLog::open(config).expect("reopen");
    assert_eq!(report.next_seq, 600);
    assert_events(&log, 600);
    // Appending goes on where it stopped.
    write_events(&log, 0).await;
    let a = log.append(vec![rec(9)]).await.expect("append");
    assert_eq!(a.first_seq, 600);
    log.close();
}

#[tokio::test]
async fn packing_left_half_done_by_a_crash_is_finished_or_undone_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut config, log) = unpacked_with_events(dir.path(), 300).await;
    log.close();
    let plain = files_with(dir.path(), ".seg");
    assert!(plain.len() >= 3);
    let first_plain = std::fs::read(dir.path().join(&plain[0])).expect("read");
    // Crash before the rename: a partial packed file is left beside the plain one.
    std::fs::write(
        dir.path().join(format!("{}.tmp", packed::file_name(0))),
        b"partial",
    )
    .expect("write");
    config.pack_level = Some(3);
    let (log, _) = EventLog::open(config.clone()).expect("open");
    assert!(log.wait_packed(std::time::Duration::from_secs(30)));
    assert!(files_with(dir.path(), ".tmp").is_empty());
    log.close();
    // Crash after the rename, before the plain file was deleted: both are there.
    std::fs::write(dir.path().join(&plain[0]), &first_plain).expect("write");
    let (log, report) = EventLog::open(config).expect("open");
    assert_eq!(report.next_seq, 300);
    assert!(!dir.path().join(&plain[0]).exists());
    assert_events(&log, 300);
    log.close();
}

#[tokio::test]
async fn damage_in_a_packed_segment_is_reported_never_returned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = packed_config(dir.path());
    let (log, _) = EventLog::open(config.clone()).expect("open");
    write_events(&log, 300).await;
    assert!(log.wait_packed(std::time::Duration::from_secs(30)));
    log.close();
    let path = dir.path().join(packed::file_name(0));
    let bytes = std::fs::read(&path).expect("read");
    let mut h = [0u8; packed::HEADER_LEN as usize];
    h.copy_from_slice(&bytes[..packed::HEADER_LEN as usize]);
    let header = packed::Header::decode(&h, 0).expect("header");
    assert!(header.dict_len > 0, "a dictionary was trained");
    // Flip a byte in the middle of the data: exactly the record there fails its checksum.
    let mut damaged = bytes.clone();
    let at = (header.data_offset() + header.data_len / 2) as usize;
    damaged[at] ^= 0x40;
    std::fs::write(&path, &damaged).expect("write");
    let (log, _) = EventLog::open(config.clone()).expect("damage in data is found on read");
    let results: Vec<_> = (0..u64::from(header.count))
        .map(|i| log.read_seq(i))
        .collect();
    let bad: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_err())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(bad.len(), 1, "one damaged record: {bad:?}");
    assert!(matches!(
        &results[bad[0]],
        Err(LogError::Corrupt { detail, .. }) if detail.contains("checksum")
    ));
    for (i, r) in results.iter().enumerate() {
        if let Ok(json) = r {
            assert_eq!(json, &event(i as u64).json);
        }
    }
    assert!(log.reader(0).read(1000).is_err());
    log.close();
    // A damaged header refuses the open.
    let mut damaged = bytes.clone();
    damaged[26] ^= 1;
    std::fs::write(&path, &damaged).expect("write");
    assert!(matches!(
        EventLog::open(config.clone()),
        Err(LogError::Corrupt { offset: 0, .. })
    ));
    // So does a truncated file.
    std::fs::write(&path, &bytes[..bytes.len() - 3]).expect("write");
    assert!(matches!(
        EventLog::open(config),
        Err(LogError::Corrupt { offset: 0, .. })
    ));
}

#[tokio::test]
async fn retention_deletes_packed_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = packed_config(dir.path());
    let (log, _) = EventLog::open(config).expect("open");
    write_events(&log, 300).await;
    assert!(log.wait_packed(std::time::Duration::from_secs(30)));
    let before = files_with(dir.path(), ".zseg").len();
    let deleted = log.delete_segments(200, i64::MAX).expect("retain");
    assert!(deleted >= 1);
    assert_eq!(files_with(dir.path(), ".zseg").len(), before - deleted);
    let first = log.first_seq();
    assert!(first > 0 && first <= 200);
    assert!(matches!(log.read_seq(0), Err(LogError::Truncated(0))));
    assert_eq!(log.read_seq(first).expect("read"), event(first).json);
    log.close();
}

// Fixtures of the version-1 format, committed under tests/fixtures/v1. They were made by
// `make_fixtures` below (run with `cargo test -p opentrail-log -- --ignored make_fixtures`) and
// must never be regenerated for v1: they pin what today's reader makes of yesterday's files.

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/v1")
        .join(name)
}

fn open_fixture(
    name: &str,
) -> (
    tempfile::TempDir,
    Result<(EventLog, RecoveryReport), LogError>,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(fixture(name), seg_path(dir.path())).expect("copy fixture");
    let opened = EventLog::open(LogConfig::new(dir.path()));
    (dir, opened)
}

#[test]
fn fixture_clean_segment() {
    let (_dir, opened) = open_fixture("clean.seg");
    let (log, report) = opened.expect("opens");
    assert_eq!(
        report,
        RecoveryReport {
            segments: 1,
            next_seq: 5,
            truncated_bytes: 0
        }
    );
    let all = read_all(&log);
    assert_eq!(numbers(&all), vec![0, 1, 2, 3, 4]);
    assert_eq!(
        all.iter().map(|r| r.time_ms).collect::<Vec<_>>(),
        vec![1000, 1001, 1002, 1003, 1004]
    );
    log.close();
}

#[test]
fn fixture_torn_tail() {
    let (_dir, opened) = open_fixture("torn-tail.seg");
    let (log, report) = opened.expect("opens");
    assert_eq!((report.next_seq, report.truncated_bytes), (3, 17));
    assert_eq!(numbers(&read_all(&log)), vec![0, 1, 2]);
    log.close();
}

#[test]
fn fixture_bad_checksum_is_refused() {
    let (_dir, opened) = open_fixture("bad-crc.seg");
    match opened {
        Err(LogError::Corrupt { offset, detail, .. }) => {
            assert_eq!(offset, HEADER_LEN);
            assert!(detail.contains("checksum"), "{detail}");
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("must be refused"),
    }
}

// The version-2 fixture: a packed segment of 40 events (with a dictionary), made by
// `make_fixture_v2` below; never regenerated.
#[test]
fn fixture_packed_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = packed::file_name(0);
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/v2")
            .join(&name),
        dir.path().join(&name),
    )
    .expect("copy fixture");
    let (log, report) = EventLog::open(LogConfig::new(dir.path())).expect("opens");
    // A new plain segment is started where the packed one ends.
    assert_eq!((report.segments, report.next_seq), (2, 40));
    assert_events(&log, 40);
    log.close();
}

#[tokio::test]
#[ignore = "writes the committed v2 fixture; never rerun for v2"]
async fn make_fixture_v2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = LogConfig::new(dir.path());
    config.segment_bytes = 1;
    let (log, _) = EventLog::open(config).expect("open");
    log.append((0..40).map(event).collect())
        .await
        .expect("append");
    log.append(vec![event(40)]).await.expect("append");
    assert!(log.wait_packed(std::time::Duration::from_secs(30)));
    log.close();
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v2");
    std::fs::create_dir_all(&out).expect("mkdir");
    let name = packed::file_name(0);
    std::fs::copy(dir.path().join(&name), out.join(&name)).expect("copy");
}

#[test]
#[ignore = "writes the committed v1 fixtures; never rerun for v1"]
fn make_fixtures() {
    let mut clean = encode_header(0).to_vec();
    let frames: [&[u64]; 3] = [&[0, 1], &[2], &[3, 4]];
    let mut first = 0;
    for f in frames {
        let records: Vec<NewRecord> = f.iter().map(|&i| rec(i)).collect();
        let base = clean.len() as u64;
        let mut buf = Vec::new();
        encode_frame(&mut buf, base, first, &records, &mut Vec::new());
        clean.extend_from_slice(&buf);
        first += f.len() as u64;
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    std::fs::create_dir_all(&out).expect("mkdir");
    std::fs::write(out.join("clean.seg"), &clean).expect("write");
    let torn = &clean[..clean.len() - (clean.len() - torn_cut(&clean))];
    std::fs::write(out.join("torn-tail.seg"), torn).expect("write");
    let mut bad = clean.clone();
    bad[HEADER_LEN as usize + 8 + 28 + 12 + 2] ^= 0x20;
    std::fs::write(out.join("bad-crc.seg"), bad).expect("write");
}

/// Where the torn fixture ends: 17 bytes into the last frame.
fn torn_cut(clean: &[u8]) -> usize {
    let mut at = HEADER_LEN as usize;
    let mut starts = Vec::new();
    while at < clean.len() {
        starts.push(at);
        let len = u32::from_le_bytes(clean[at..at + 4].try_into().expect("4")) as usize;
        at += 8 + len;
    }
    starts[2] + 17
}

#[tokio::test]
async fn readers_start_at_the_frame_holding_their_sequence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, log) = unpacked_with_events(dir.path(), 300).await;
    let check = |log: &EventLog| {
        for start in [0, 1, 6, 7, 8, 100, 150, 299] {
            let got = log.reader(start).read(3).expect("read");
            assert_eq!(got.first().map(|r| r.seq), Some(start), "reader at {start}");
            assert!(got.iter().all(|r| r.json == event(r.seq).json));
            // Whole frames are read: at most the rest of the frame holding `start` plus more.
            assert!(got.len() <= 7 + 2, "{} records", got.len());
        }
    };
    // The segment being written (positions kept by the writer) and sealed plain ones.
    check(&log);
    log.close();
    // After a restart: sealed plain segments build their positions on first use.
    let (log, _) = EventLog::open(config).expect("open");
    check(&log);
    log.close();
}
