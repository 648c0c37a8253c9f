//! Packed segments, log format version 2: a sealed segment rewritten so that every record is
//! compressed alone with zstd, using a dictionary trained on that segment's own records. A
//! lookup still reads exactly one record (two positioned reads and one small decompression),
//! while the dictionary recovers most of what compressing the whole stream would save.
//!
//! ```text
//! file  <first_seq:020>.zseg
//!   header   64 bytes, little-endian:
//!              0 magic "OTRLLOG\0"     8 version u32 (= 2)     12 zstd level i32
//!             16 first_seq u64         24 count u32            28 dict_len u32
//!             32 data_len u64          40 max_time_ms i64      48 dict_crc u32 (crc32c)
//!             52 reserved 8 bytes (= 0)                        60 header_crc u32 (of bytes 0..60)
//!   dict     dict_len bytes: a zstd dictionary (dict_len = 0: records compressed without one)
//!   data     data_len bytes: one zstd frame per record, in sequence order
//!   table    count × 16 bytes: end u32 (where the record's frame ends in data; it starts where
//!            the previous one ends) | crc u32 (crc32c of the frame, extended by the time
//!            bytes) | time_ms i64
//! ```
//! The file's length is exactly `64 + dict_len + data_len + 16 × count`. A packed segment is
//! written to `<name>.tmp`, synced, and renamed into place; the plain segment it replaces is
//! deleted after the rename. Every record is checked against its own checksum when read.

use std::cell::RefCell;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::OnceLock;

use zstd::zstd_safe::{CCtx, CDict, DCtx, DDict};

use crate::LogError;
use crate::format::MAGIC;

pub const VERSION: u32 = 2;
pub const HEADER_LEN: u64 = 64;
pub const ENTRY_LEN: u64 = 16;
/// The largest dictionary trained for a segment.
pub const DICT_MAX: usize = 112 * 1024;
/// About this many bytes of a segment's records are sampled to train its dictionary.
pub const SAMPLE_BUDGET: u64 = 8 * 1024 * 1024;
/// A record longer than this when decompressed is treated as damage, never allocated.
const MAX_RECORD: u64 = 256 * 1024 * 1024;

pub fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.zseg")
}

pub fn parse_file_name(name: &str) -> Option<u64> {
    crate::format::parse_numbered(name, ".zseg")
}

/// The fixed header of a packed segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub level: i32,
    pub first_seq: u64,
    pub count: u32,
    pub dict_len: u32,
    pub data_len: u64,
    pub max_time_ms: i64,
    pub dict_crc: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut h = [0u8; HEADER_LEN as usize];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&self.level.to_le_bytes());
        h[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        h[24..28].copy_from_slice(&self.count.to_le_bytes());
        h[28..32].copy_from_slice(&self.dict_len.to_le_bytes());
        h[32..40].copy_from_slice(&self.data_len.to_le_bytes());
        h[40..48].copy_from_slice(&self.max_time_ms.to_le_bytes());
        h[48..52].copy_from_slice(&self.dict_crc.to_le_bytes());
        let crc = crc32c::crc32c(&h[..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decodes and checks a header read from a file expected to start at `first_seq`.
    pub fn decode(h: &[u8; HEADER_LEN as usize], first_seq: u64) -> Result<Self, String> {
        if h[0..8] != MAGIC {
            return Err("not a segment file (bad magic)".into());
        }
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[i..i + 8]);
            u64::from_le_bytes(b)
        };
        if crc32c::crc32c(&h[..60]) != u32_at(60) {
            return Err("header checksum mismatch".into());
        }
        let version = u32_at(8);
        if version != VERSION {
            return Err(format!("packed segment of unknown version {version}"));
        }
        let header = Self {
            level: i32::from_le_bytes([h[12], h[13], h[14], h[15]]),
            first_seq: u64_at(16),
            count: u32_at(24),
            dict_len: u32_at(28),
            data_len: u64_at(32),
            max_time_ms: i64::from_le_bytes(h[40..48].try_into().map_err(|_| "short header")?),
            dict_crc: u32_at(48),
        };
        if header.first_seq != first_seq {
            return Err(format!(
                "header says first sequence {}, file name says {first_seq}",
                header.first_seq
            ));
        }
        if header.data_len > u64::from(u32::MAX) {
            return Err("data section too long".into());
        }
        Ok(header)
    }

    pub fn data_offset(&self) -> u64 {
        HEADER_LEN + u64::from(self.dict_len)
    }

    pub fn table_offset(&self) -> u64 {
        self.data_offset() + self.data_len
    }

    pub fn file_len(&self) -> u64 {
        self.table_offset() + ENTRY_LEN * u64::from(self.count)
    }
}

/// Reads and checks the header of an opened packed segment, and that the file is whole.
pub fn read_header(file: &File, path: &Path, first_seq: u64) -> Result<Header, LogError> {
    let corrupt = |detail: String| LogError::Corrupt {
        path: path.to_owned(),
        offset: 0,
        detail,
    };
    let len = file.metadata().map_err(crate::io_err(path))?.len();
    if len < HEADER_LEN {
        return Err(corrupt(format!("packed segment is only {len} bytes long")));
    }
    let mut h = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut h, 0).map_err(crate::io_err(path))?;
    let header = Header::decode(&h, first_seq).map_err(corrupt)?;
    if header.file_len() != len {
        return Err(corrupt(format!(
            "packed segment is {len} bytes long, its header says {}",
            header.file_len()
        )));
    }
    Ok(header)
}

/// A packed segment open for reading.
pub struct Packed {
    pub header: Header,
    dict: OnceLock<Option<DDict<'static>>>,
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packed")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

thread_local! {
    static DCTX: RefCell<DCtx<'static>> = RefCell::new(DCtx::create());
}

fn corrupt(path: &Path, offset: u64, detail: impl Into<String>) -> LogError {
    LogError::Corrupt {
        path: path.to_owned(),
        offset,
        detail: detail.into(),
    }
}

impl Packed {
    pub fn new(header: Header) -> Self {
        Self {
            header,
            dict: OnceLock::new(),
        }
    }

    fn dict(&self, file: &File, path: &Path) -> Result<Option<&DDict<'static>>, LogError> {
        if let Some(d) = self.dict.get() {
            return Ok(d.as_ref());
        }
        let loaded = if self.header.dict_len == 0 {
            None
        } else {
            let mut bytes = vec![0u8; self.header.dict_len as usize];
            file.read_exact_at(&mut bytes, HEADER_LEN)
                .map_err(crate::io_err(path))?;
            if crc32c::crc32c(&bytes) != self.header.dict_crc {
                return Err(corrupt(path, HEADER_LEN, "dictionary checksum mismatch"));
            }
            Some(DDict::create(&bytes))
        };
        // Another thread may have loaded it meanwhile; either copy is the same dictionary.
        let _ = self.dict.set(loaded);
        Ok(self.dict.get().and_then(Option::as_ref))
    }

    /// Reads `n` records from the `idx`-th on: (time, JSON) each.
    pub fn read(
        &self,
        file: &File,
        path: &Path,
        idx: u64,
        n: u64,
    ) -> Result<Vec<(i64, Vec<u8>)>, LogError> {
        let count = u64::from(self.header.count);
        if n == 0 || idx + n > count {
            return if n == 0 {
                Ok(Vec::new())
            } else {
                Err(corrupt(
                    path,
                    0,
                    format!("records {idx}..{} asked of a segment of {count}", idx + n),
                ))
            };
        }
        // The entries from the one before `idx` (for the first frame's start) to the last.
        let first_entry = idx.saturating_sub(1);
        let entries_len = usize::try_from((idx + n - first_entry) * ENTRY_LEN)
            .map_err(|_| corrupt(path, 0, "read too large"))?;
        let table_at = self.header.table_offset() + first_entry * ENTRY_LEN;
        let mut table = vec![0u8; entries_len];
        file.read_exact_at(&mut table, table_at)
            .map_err(crate::io_err(path))?;
        let entry = |k: usize| -> (u64, u32, i64) {
            let e = &table[k * ENTRY_LEN as usize..(k + 1) * ENTRY_LEN as usize];
            let end = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
            let crc = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
            let mut t = [0u8; 8];
            t.copy_from_slice(&e[8..16]);
            (u64::from(end), crc, i64::from_le_bytes(t))
        };
        let (mut start, skip) = if idx == 0 { (0, 0) } else { (entry(0).0, 1) };
        let (last_end, _, _) = entry(table.len() / ENTRY_LEN as usize - 1);
        if last_end < start || last_end > self.header.data_len {
            return Err(corrupt(path, table_at, "table entries out of order"));
        }
        let data_len = usize::try_from(last_end - start)
            .map_err(|_| corrupt(path, table_at, "read too large"))?;
        let mut data = vec![0u8; data_len];
        let data_at = self.header.data_offset() + start;
        file.read_exact_at(&mut data, data_at)
            .map_err(crate::io_err(path))?;
        let dict = self.dict(file, path)?;
        let base = start;
        let mut out = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
        for k in skip..skip + usize::try_from(n).unwrap_or(0) {
            let (end, crc, time_ms) = entry(k);
            let offset = self.header.data_offset() + start;
            if end < start || end > last_end {
                return Err(corrupt(path, offset, "table entries out of order"));
            }
            let frame = &data[(start - base) as usize..(end - base) as usize];
            let actual = crc32c::crc32c_append(crc32c::crc32c(frame), &time_ms.to_le_bytes());
            if actual != crc {
                return Err(corrupt(path, offset, "record checksum mismatch"));
            }
            out.push((time_ms, decompress(frame, dict, path, offset)?));
            start = end;
        }
        Ok(out)
    }
}

fn decompress(
    frame: &[u8],
    dict: Option<&DDict<'static>>,
    path: &Path,
    offset: u64,
) -> Result<Vec<u8>, LogError> {
    let size = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(s)) if s <= MAX_RECORD => s,
        _ => return Err(corrupt(path, offset, "record frame has no valid size")),
    };
    let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    let result = DCTX.with(|c| {
        let mut dctx = c.borrow_mut();
        match dict {
            Some(d) => dctx.decompress_using_ddict(&mut out, frame, d),
            None => dctx.decompress(&mut out, frame),
        }
    });
    match result {
        Ok(n) if n as u64 == size => Ok(out),
        Ok(_) => Err(corrupt(
            path,
            offset,
            "record is shorter than its frame says",
        )),
        Err(code) => Err(corrupt(
            path,
            offset,
            format!(
                "record does not decompress: {}",
                zstd::zstd_safe::get_error_name(code)
            ),
        )),
    }
}

/// Trains a dictionary for a segment of `segment_bytes` on sampled records: at most
/// [`DICT_MAX`] and a sixteenth of the segment, so a small segment does not carry a dictionary
/// larger than what it saves. Empty when there is too little to learn from.
pub fn train(samples: &[u8], sizes: &[usize], segment_bytes: u64) -> Vec<u8> {
    let max = usize::try_from(segment_bytes / 16)
        .unwrap_or(DICT_MAX)
        .min(DICT_MAX);
    if sizes.len() < 16 || max < 256 {
        return Vec::new();
    }
    zstd::dict::from_continuous(samples, sizes, max).unwrap_or_default()
}

/// Writes a packed segment record by record.
pub struct Builder<'p> {
    out: BufWriter<File>,
    path: &'p Path,
    cctx: CCtx<'static>,
    cdict: Option<CDict<'static>>,
    frame: Vec<u8>,
    table: Vec<u8>,
    header: Header,
}

impl<'p> Builder<'p> {
    /// Starts `file` (new and empty) with a dictionary (possibly empty) and a zstd level.
    pub fn new(
        file: File,
        path: &'p Path,
        first_seq: u64,
        dict: &[u8],
        level: i32,
    ) -> Result<Self, LogError> {
        let io = crate::io_err(path);
        let dict_len =
            u32::try_from(dict.len()).map_err(|_| corrupt(path, 0, "dictionary too large"))?;
        let cdict = if dict.is_empty() {
            None
        } else {
            Some(
                CDict::try_create(dict, level)
                    .ok_or_else(|| corrupt(path, HEADER_LEN, "zstd refused the dictionary"))?,
            )
        };
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&[0u8; HEADER_LEN as usize]).map_err(io)?;
        out.write_all(dict).map_err(crate::io_err(path))?;
        Ok(Self {
            out,
            path,
            cctx: CCtx::create(),
            cdict,
            frame: Vec::new(),
            table: Vec::new(),
            header: Header {
                level,
                first_seq,
                count: 0,
                dict_len,
                data_len: 0,
                max_time_ms: i64::MIN,
                dict_crc: crc32c::crc32c(dict),
            },
        })
    }

    pub fn push(&mut self, time_ms: i64, json: &[u8]) -> Result<(), LogError> {
        let path = self.path;
        self.frame.clear();
        self.frame
            .reserve(zstd::zstd_safe::compress_bound(json.len()));
        let r = match &self.cdict {
            Some(d) => self.cctx.compress_using_cdict(&mut self.frame, json, d),
            None => self.cctx.compress(&mut self.frame, json, self.header.level),
        };
        r.map_err(|code| {
            corrupt(
                path,
                0,
                format!(
                    "zstd failed to compress a record: {}",
                    zstd::zstd_safe::get_error_name(code)
                ),
            )
        })?;
        let end = self.header.data_len + self.frame.len() as u64;
        let end32 = u32::try_from(end).map_err(|_| corrupt(path, 0, "packed data over 4 GiB"))?;
        self.header.count = self
            .header
            .count
            .checked_add(1)
            .ok_or_else(|| corrupt(path, 0, "too many records"))?;
        self.out
            .write_all(&self.frame)
            .map_err(crate::io_err(path))?;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&self.frame), &time_ms.to_le_bytes());
        self.table.extend_from_slice(&end32.to_le_bytes());
        self.table.extend_from_slice(&crc.to_le_bytes());
        self.table.extend_from_slice(&time_ms.to_le_bytes());
        self.header.data_len = end;
        self.header.max_time_ms = self.header.max_time_ms.max(time_ms);
        Ok(())
    }

    /// Writes the table and the header and syncs the file.
    pub fn finish(mut self) -> Result<Header, LogError> {
        let path = self.path;
        self.out
            .write_all(&self.table)
            .map_err(crate::io_err(path))?;
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| crate::io_err(path)(e.into_error()))?;
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(&self.header.encode()))
            .and_then(|()| file.sync_all())
            .map_err(crate::io_err(path))?;
        Ok(self.header)
    }
}
