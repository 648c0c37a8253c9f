//! The on-disk format of plain log segments, version 1 (the segment being written, and sealed
//! ones not yet packed; packed segments are version 2, see [`crate::packed`]).
//!
//! ```text
//! segment file  <first_seq:020>.seg
//!   header   24 bytes: magic "OTRLLOG\0" | version u32 LE (= 1) | reserved u32 (= 0) | first_seq u64 LE
//!   frame*   len u32 LE | crc32c u32 LE (of payload) | payload (len bytes)
//! payload
//!   first_seq u64 | count u32 | min_time_ms i64 | max_time_ms i64      (28 bytes)
//!   count × ( time_ms i64 | json_len u32 | json bytes )
//! ```
//! One frame is one group-committed batch from one append call. All integers are little-endian.
//! Sequence numbers are dense: the frame after `first_seq, count` starts at `first_seq + count`.

/// The magic bytes that open every segment file.
pub const MAGIC: [u8; 8] = *b"OTRLLOG\0";
/// The format version this code writes. Readers accept exactly the versions listed in
/// [`SUPPORTED_VERSIONS`].
pub const VERSION: u32 = 1;
pub const SUPPORTED_VERSIONS: [u32; 1] = [1];
pub const HEADER_LEN: u64 = 24;
pub const FRAME_HEADER_LEN: u64 = 8;
pub const PAYLOAD_HEADER_LEN: usize = 28;
pub const RECORD_HEADER_LEN: usize = 12;
/// A frame longer than this is treated as damage, never allocated.
pub const MAX_FRAME_LEN: u32 = 256 * 1024 * 1024;

pub fn segment_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    parse_numbered(name, ".seg")
}

/// The first sequence number in a segment file's name: 20 digits, then `ext`.
pub fn parse_numbered(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?;
    if stem.len() != 20 || !stem.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

pub fn encode_header(first_seq: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&first_seq.to_le_bytes());
    h
}

/// What is wrong with a segment header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderProblem {
    Magic,
    Version(u32),
    FirstSeq { expected: u64, found: u64 },
}

pub fn check_header(h: &[u8], expected_first_seq: u64) -> Result<(), HeaderProblem> {
    if h.len() < HEADER_LEN as usize || h[0..8] != MAGIC {
        return Err(HeaderProblem::Magic);
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(HeaderProblem::Version(version));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&h[16..24]);
    let found = u64::from_le_bytes(seq);
    if found != expected_first_seq {
        return Err(HeaderProblem::FirstSeq {
            expected: expected_first_seq,
            found,
        });
    }
    Ok(())
}

/// A record to append: its event time (for retention) and its JSON.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub time_ms: i64,
    pub json: Vec<u8>,
}

/// Appends one frame holding `records` (sequence numbers from `first_seq`) to `buf`, whose first
/// byte will sit at file offset `base`, and each record's position (file offset of its JSON,
/// length) to `positions`.
pub fn encode_frame(
    buf: &mut Vec<u8>,
    base: u64,
    first_seq: u64,
    records: &[NewRecord],
    positions: &mut Vec<(u64, u32)>,
) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_HEADER_LEN as usize]);
    let payload_start = buf.len();
    let min = records.iter().map(|r| r.time_ms).min().unwrap_or(0);
    let max = records.iter().map(|r| r.time_ms).max().unwrap_or(0);
    buf.extend_from_slice(&first_seq.to_le_bytes());
    buf.extend_from_slice(&(records.len() as u32).to_le_bytes());
    buf.extend_from_slice(&min.to_le_bytes());
    buf.extend_from_slice(&max.to_le_bytes());
    for r in records {
        buf.extend_from_slice(&r.time_ms.to_le_bytes());
        buf.extend_from_slice(&(r.json.len() as u32).to_le_bytes());
        positions.push((base + (buf.len() - start) as u64, r.json.len() as u32));
        buf.extend_from_slice(&r.json);
    }
    let payload_len = (buf.len() - payload_start) as u32;
    let crc = crc32c::crc32c(&buf[payload_start..]);
    buf[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The fixed part of a decoded payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadHeader {
    pub first_seq: u64,
    pub count: u32,
    pub min_time_ms: i64,
    pub max_time_ms: i64,
}

pub fn decode_payload_header(p: &[u8]) -> Option<PayloadHeader> {
    if p.len() < PAYLOAD_HEADER_LEN {
        return None;
    }
    Some(PayloadHeader {
        first_seq: u64::from_le_bytes(p[0..8].try_into().ok()?),
        count: u32::from_le_bytes(p[8..12].try_into().ok()?),
        min_time_ms: i64::from_le_bytes(p[12..20].try_into().ok()?),
        max_time_ms: i64::from_le_bytes(p[20..28].try_into().ok()?),
    })
}

/// One record decoded from a payload: time, and the byte range of its JSON within the payload.
#[derive(Debug, Clone, Copy)]
pub struct DecodedRecord {
    pub time_ms: i64,
    pub start: usize,
    pub len: usize,
}

/// Decodes a payload whose checksum already matched. `None` means the payload contradicts its own
/// header (count or lengths), which is damage, not a torn write.
pub fn decode_payload(p: &[u8]) -> Option<(PayloadHeader, Vec<DecodedRecord>)> {
    let header = decode_payload_header(p)?;
    let mut at = PAYLOAD_HEADER_LEN;
    let mut out = Vec::with_capacity(header.count as usize);
    for _ in 0..header.count {
        let rh = p.get(at..at + RECORD_HEADER_LEN)?;
        let time_ms = i64::from_le_bytes(rh[0..8].try_into().ok()?);
        let len = u32::from_le_bytes(rh[8..12].try_into().ok()?) as usize;
        let start = at + RECORD_HEADER_LEN;
        p.get(start..start + len)?;
        out.push(DecodedRecord {
            time_ms,
            start,
            len,
        });
        at = start + len;
    }
    (at == p.len()).then_some((header, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let records = vec![
            NewRecord {
                time_ms: 5,
                json: b"{\"a\":1}".to_vec(),
            },
            NewRecord {
                time_ms: -3,
                json: b"{}".to_vec(),
            },
        ];
        let mut buf = vec![9u8; 10];
        let mut locs = Vec::new();
        encode_frame(&mut buf, 100, 42, &records, &mut locs);
        let len = u32::from_le_bytes(buf[10..14].try_into().expect("4")) as usize;
        let crc = u32::from_le_bytes(buf[14..18].try_into().expect("4"));
        let payload = &buf[18..18 + len];
        assert_eq!(crc32c::crc32c(payload), crc);
        let (h, recs) = decode_payload(payload).expect("decodes");
        assert_eq!(
            h,
            PayloadHeader {
                first_seq: 42,
                count: 2,
                min_time_ms: -3,
                max_time_ms: 5
            }
        );
        assert_eq!(
            &payload[recs[0].start..recs[0].start + recs[0].len],
            b"{\"a\":1}"
        );
        assert_eq!(recs[1].time_ms, -3);
        // Positions are file offsets: base + position within the buffer past `buf`'s prefix.
        assert_eq!(locs[0], (100 + 8 + 28 + 12, 7));
        assert_eq!(locs[1], (100 + 8 + 28 + 12 + 7 + 12, 2));
    }

    #[test]
    fn names_and_headers() {
        assert_eq!(segment_file_name(12), "00000000000000000012.seg");
        assert_eq!(
            parse_segment_file_name("00000000000000000012.seg"),
            Some(12)
        );
        assert_eq!(parse_segment_file_name("12.seg"), None);
        let h = encode_header(99);
        assert_eq!(check_header(&h, 99), Ok(()));
        assert_eq!(
            check_header(&h, 98),
            Err(HeaderProblem::FirstSeq {
                expected: 98,
                found: 99
            })
        );
        let mut v2 = h;
        v2[8] = 2;
        assert_eq!(check_header(&v2, 99), Err(HeaderProblem::Version(2)));
    }
}
