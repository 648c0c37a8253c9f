//! The Insights counters: a view over the event log that counts, per minute of `eventTime`,
//! the calls of every API and the failures of every (API, error code), with the callers, user
//! agents and error codes behind them.
//!
//! Like the history index it reads the log forward from its own cursor and writes the changed
//! blocks **and the new cursor in one atomic fjall batch**, so after a crash it resumes exactly
//! where its last batch ended and nothing is counted twice or lost.
//!
//! Layout (counters format 1), keyspaces of one fjall database:
//!
//! ```text
//! meta     "format" -> u32 BE, "cursor" -> u64 BE, "state" -> the detector state (JSON)
//! series   id u32 BE                      -> SeriesInfo (JSON)
//! counts   id u32 BE | hour u32 BE        -> 60 LEB128 varints: calls in each minute of the hour
//! attrs    id u32 BE | minute u32 BE      -> for userIdentityArn, userAgent, errorCode: a count
//!                                            of entries, then (u16 BE length, bytes, varint
//!                                            count) each; at most 12 values per attribute
//! ```
//! Hours and minutes count from the Unix epoch. A quiet hour of a series costs no key; a busy
//! one costs one ~60-byte block.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, RwLock};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use opentrail_log::{EventLog, LogError};
use opentrail_model::time::parse_event_time;
use serde::{Deserialize, Serialize};

/// The version of the counters layout; another stored version means recount from the log.
pub const COUNTERS_FORMAT: u32 = 1;
const FORMAT_KEY: &[u8] = b"format";
const CURSOR_KEY: &[u8] = b"cursor";
const STATE_KEY: &[u8] = b"state";
/// Values kept per attribute per minute (space-saving summary beyond that).
const ATTR_CAP: usize = 12;
/// Attribute values longer than this are cut (user agents can be long).
const ATTR_VALUE_MAX: usize = 512;

/// Errors of the counters store.
#[derive(Debug, thiserror::Error)]
pub enum CountersError {
    #[error("insights counters storage error: {0}")]
    Store(#[from] fjall::Error),
    #[error("event log error: {0}")]
    Log(#[from] LogError),
    #[error("insights counters entry is damaged: {0}")]
    Damaged(&'static str),
    #[error("insights counters lock poisoned")]
    Lock,
    #[error("insights state: {0}")]
    Json(#[from] serde_json::Error),
}

/// Management or data events (Insights watch these two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SourceCategory {
    Management,
    Data,
}

impl SourceCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Management => "Management",
            Self::Data => "Data",
        }
    }
}

/// What a series counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeriesKey {
    pub account: String,
    pub region: String,
    pub category: SourceCategory,
    pub event_source: String,
    pub event_name: String,
    /// `None`: every call of the API; `Some(code)`: the calls that failed with `code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

/// A series and what has been learned about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeriesInfo {
    #[serde(flatten)]
    pub key: SeriesKey,
    /// A write call (`readOnly: false`) was counted.
    pub write: bool,
    /// The earliest minute counted.
    pub first_minute: i64,
}

/// The three attributions of an Insight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute {
    UserIdentityArn = 0,
    UserAgent = 1,
    ErrorCode = 2,
}

impl Attribute {
    pub const ALL: [Self; 3] = [Self::UserIdentityArn, Self::UserAgent, Self::ErrorCode];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserIdentityArn => "userIdentityArn",
            Self::UserAgent => "userAgent",
            Self::ErrorCode => "errorCode",
        }
    }
}

/// Summed attribution counts over some minutes, each list sorted by count, largest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributions {
    pub values: [Vec<(String, u64)>; 3],
}

#[derive(Deserialize)]
struct Ident<'a> {
    #[serde(default, borrow)]
    arn: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Slim<'a> {
    #[serde(default, borrow)]
    event_time: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    event_source: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    event_name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    aws_region: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    recipient_account_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    event_category: Option<Cow<'a, str>>,
    #[serde(default)]
    read_only: Option<bool>,
    #[serde(default, borrow)]
    error_code: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    user_agent: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    user_identity: Option<Ident<'a>>,
}

/// One counted call, as read from a record.
struct Call {
    minute: i64,
    calls: SeriesKey,
    write: bool,
    error: Option<String>,
    arn: String,
    agent: String,
}

fn read_call(json: &[u8]) -> Option<Call> {
    let s: Slim<'_> = serde_json::from_slice(json).ok()?;
    let category = match s.event_category.as_deref().unwrap_or("Management") {
        "Management" => SourceCategory::Management,
        "Data" => SourceCategory::Data,
        _ => return None,
    };
    let ms = parse_event_time(s.event_time.as_deref()?).ok()?;
    let cut = |v: Option<Cow<'_, str>>| -> String {
        let v = v.as_deref().unwrap_or("null");
        let mut end = v.len().min(ATTR_VALUE_MAX);
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        v[..end].to_owned()
    };
    Some(Call {
        minute: ms.div_euclid(60_000),
        calls: SeriesKey {
            account: s.recipient_account_id?.into_owned(),
            region: s.aws_region?.into_owned(),
            category,
            event_source: s.event_source?.into_owned(),
            event_name: s.event_name?.into_owned(),
            error_code: None,
        },
        write: s.read_only == Some(false),
        error: s.error_code.filter(|c| !c.is_empty()).map(|c| cut(Some(c))),
        arn: cut(s.user_identity.and_then(|i| i.arn)),
        agent: cut(s.user_agent),
    })
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

type Block = [u32; 60];

fn encode_block(b: &Block) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    for c in b {
        put_varint(&mut out, u64::from(*c));
    }
    out
}

fn decode_block(buf: &[u8]) -> Result<Block, CountersError> {
    let mut b = [0u32; 60];
    let mut pos = 0;
    for c in &mut b {
        let v = get_varint(buf, &mut pos).ok_or(CountersError::Damaged("count block"))?;
        *c = u32::try_from(v).unwrap_or(u32::MAX);
    }
    Ok(b)
}

/// Per-minute attribution lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct MinuteAttrs([Vec<(String, u32)>; 3]);

impl MinuteAttrs {
    /// Counts one value, keeping at most [`ATTR_CAP`] values: a new value past the cap takes the
    /// place of the smallest, inheriting its count (the space-saving summary, which never
    /// loses a frequent value).
    fn bump(&mut self, a: Attribute, value: &str) {
        let list = &mut self.0[a as usize];
        if let Some(e) = list.iter_mut().find(|(v, _)| v == value) {
            e.1 = e.1.saturating_add(1);
            return;
        }
        if list.len() < ATTR_CAP {
            list.push((value.to_owned(), 1));
            return;
        }
        if let Some(min) = list.iter_mut().min_by_key(|(_, c)| *c) {
            *min = (value.to_owned(), min.1.saturating_add(1));
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for list in &self.0 {
            out.push(u8::try_from(list.len()).unwrap_or(u8::MAX));
            for (v, c) in list {
                let bytes = v.as_bytes();
                out.extend_from_slice(&u16::try_from(bytes.len()).unwrap_or(0).to_be_bytes());
                out.extend_from_slice(bytes);
                put_varint(&mut out, u64::from(*c));
            }
        }
        out
    }

    fn decode(buf: &[u8]) -> Result<Self, CountersError> {
        let bad = || CountersError::Damaged("attribution block");
        let mut m = Self::default();
        let mut pos = 0;
        for list in &mut m.0 {
            let n = *buf.get(pos).ok_or_else(bad)?;
            pos += 1;
            for _ in 0..n {
                let len_bytes: [u8; 2] = buf
                    .get(pos..pos + 2)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(bad)?;
                pos += 2;
                let len = usize::from(u16::from_be_bytes(len_bytes));
                let v = buf.get(pos..pos + len).ok_or_else(bad)?;
                pos += len;
                let v = std::str::from_utf8(v).map_err(|_| bad())?.to_owned();
                let c = get_varint(buf, &mut pos).ok_or_else(bad)?;
                list.push((v, u32::try_from(c).unwrap_or(u32::MAX)));
            }
        }
        Ok(m)
    }
}

fn minute_u32(minute: i64) -> u32 {
    u32::try_from(minute.max(0)).unwrap_or(u32::MAX)
}

fn block_key(id: u32, unit: i64) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[..4].copy_from_slice(&id.to_be_bytes());
    k[4..].copy_from_slice(&minute_u32(unit).to_be_bytes());
    k
}

fn unit_of_key(k: &[u8]) -> Option<i64> {
    let b: [u8; 4] = k.get(4..8)?.try_into().ok()?;
    Some(i64::from(u32::from_be_bytes(b)))
}

#[derive(Default)]
struct Registry {
    ids: HashMap<SeriesKey, u32>,
    infos: Vec<SeriesInfo>,
}

/// The counters view.
#[derive(Clone)]
pub struct Counters {
    db: Database,
    meta: Keyspace,
    series: Keyspace,
    counts: Keyspace,
    attrs: Keyspace,
    registry: Arc<RwLock<Registry>>,
    log: EventLog,
}

impl Counters {
    /// Opens the counters in `dir`. A stored layout other than [`COUNTERS_FORMAT`], or a cursor
    /// beyond the end of the log, means recounting from the log (the detector state is kept).
    pub fn open(dir: &Path, log: EventLog) -> Result<Self, CountersError> {
        // The journal is capped at fjall's smallest setting (64 MiB, against 512 by default): past
        // it, memtables are flushed to compressed tables and the journal is reclaimed.
        let db = Database::builder(dir)
            .max_journaling_size(64 * 1024 * 1024)
            .open()?;
        let open = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        let c = Self {
            meta: open("meta")?,
            series: open("series")?,
            counts: open("counts")?,
            attrs: open("attrs")?,
            db: db.clone(),
            registry: Arc::new(RwLock::new(Registry::default())),
            log,
        };
        let stored = c
            .meta
            .get(FORMAT_KEY)?
            .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
            .map(u32::from_be_bytes);
        let log_end = c.log.durable_end().next_seq;
        let recount = match stored {
            Some(f) if f != COUNTERS_FORMAT => {
                tracing::warn!(
                    stored = f,
                    current = COUNTERS_FORMAT,
                    "insights counters layout changed; recounting from the log"
                );
                true
            }
            Some(_) if c.cursor()? > log_end => {
                tracing::warn!(
                    log_end,
                    "insights counters are ahead of the event log; recounting from the log"
                );
                true
            }
            _ => false,
        };
        if recount {
            for ks in [&c.series, &c.counts, &c.attrs] {
                let keys: Vec<Vec<u8>> = ks
                    .iter()
                    .map(|g| g.key().map(|k| k.to_vec()))
                    .collect::<Result<_, _>>()?;
                for k in keys {
                    ks.remove(k)?;
                }
            }
            c.meta.remove(CURSOR_KEY)?;
        }
        c.meta.insert(FORMAT_KEY, COUNTERS_FORMAT.to_be_bytes())?;
        c.db.persist(PersistMode::SyncAll)?;
        {
            let mut reg = c.registry.write().map_err(|_| CountersError::Lock)?;
            for g in c.series.iter() {
                let (k, v) = g.into_inner()?;
                let id = <[u8; 4]>::try_from(k.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| CountersError::Damaged("series id"))?;
                let info: SeriesInfo = serde_json::from_slice(&v)?;
                if usize::try_from(id).ok() != Some(reg.infos.len()) {
                    return Err(CountersError::Damaged("series ids are not dense"));
                }
                reg.ids.insert(info.key.clone(), id);
                reg.infos.push(info);
            }
        }
        Ok(c)
    }

    /// The next log sequence number not yet counted.
    pub fn cursor(&self) -> Result<u64, CountersError> {
        Ok(self
            .meta
            .get(CURSOR_KEY)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Counts up to `max` records from the cursor on, in one atomic batch with the new cursor.
    /// Insights and network-activity records are not counted. Returns how many log records
    /// were consumed. Blocking IO.
    pub fn apply_next(&self, max: usize) -> Result<usize, CountersError> {
        let cursor = self.cursor()?;
        let mut reader = self.log.reader(cursor);
        let records = reader.read(max)?;
        if records.is_empty() {
            return Ok(0);
        }
        let mut blocks: HashMap<(u32, i64), Block> = HashMap::new();
        let mut minutes: HashMap<(u32, i64), MinuteAttrs> = HashMap::new();
        // Series created or changed in this batch, applied to the registry after the commit.
        let mut changed: HashMap<u32, SeriesInfo> = HashMap::new();
        let (mut known, mut next_id) = {
            let reg = self.registry.read().map_err(|_| CountersError::Lock)?;
            (
                reg.ids.clone(),
                u32::try_from(reg.infos.len()).unwrap_or(u32::MAX),
            )
        };
        let mut infos_of_new: HashMap<u32, SeriesInfo> = HashMap::new();
        for r in &records {
            let Some(call) = read_call(&r.json) else {
                continue;
            };
            let mut keys = vec![call.calls.clone()];
            if let Some(code) = &call.error {
                let mut k = call.calls.clone();
                k.error_code = Some(code.clone());
                keys.push(k);
            }
            for key in keys {
                let id = match known.get(&key) {
                    Some(id) => *id,
                    None => {
                        let id = next_id;
                        next_id = next_id
                            .checked_add(1)
                            .ok_or(CountersError::Damaged("too many series"))?;
                        known.insert(key.clone(), id);
                        infos_of_new.insert(
                            id,
                            SeriesInfo {
                                key,
                                write: false,
                                first_minute: call.minute,
                            },
                        );
                        id
                    }
                };
                self.note_series(id, &call, &mut infos_of_new, &mut changed)?;
                let hour = call.minute.div_euclid(60);
                let block = match blocks.entry((id, hour)) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let stored = self.counts.get(block_key(id, hour))?;
                        e.insert(match stored {
                            Some(v) => decode_block(&v)?,
                            None => [0; 60],
                        })
                    }
                };
                let slot = &mut block[usize::try_from(call.minute.rem_euclid(60)).unwrap_or(0)];
                *slot = slot.saturating_add(1);
                let attrs = match minutes.entry((id, call.minute)) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let stored = self.attrs.get(block_key(id, call.minute))?;
                        e.insert(match stored {
                            Some(v) => MinuteAttrs::decode(&v)?,
                            None => MinuteAttrs::default(),
                        })
                    }
                };
                attrs.bump(Attribute::UserIdentityArn, &call.arn);
                attrs.bump(Attribute::UserAgent, &call.agent);
                attrs.bump(
                    Attribute::ErrorCode,
                    call.error.as_deref().unwrap_or("null"),
                );
            }
        }
        let mut batch = self.db.batch();
        for ((id, hour), b) in &blocks {
            batch.insert(&self.counts, block_key(*id, *hour), encode_block(b));
        }
        for ((id, minute), a) in &minutes {
            batch.insert(&self.attrs, block_key(*id, *minute), a.encode());
        }
        for (id, info) in infos_of_new.iter().chain(changed.iter()) {
            batch.insert(&self.series, id.to_be_bytes(), serde_json::to_vec(info)?);
        }
        batch.insert(&self.meta, CURSOR_KEY, reader.next_seq().to_be_bytes());
        batch.commit()?;
        let mut reg = self.registry.write().map_err(|_| CountersError::Lock)?;
        let mut fresh: Vec<(u32, SeriesInfo)> = infos_of_new.into_iter().collect();
        fresh.sort_by_key(|(id, _)| *id);
        for (id, info) in fresh {
            reg.ids.insert(info.key.clone(), id);
            reg.infos.push(info);
        }
        for (id, info) in changed {
            if let Some(slot) = usize::try_from(id).ok().and_then(|i| reg.infos.get_mut(i)) {
                *slot = info;
            }
        }
        Ok(records.len())
    }

    /// Folds one call into what is known of series `id` (write flag, first minute).
    fn note_series(
        &self,
        id: u32,
        call: &Call,
        new: &mut HashMap<u32, SeriesInfo>,
        changed: &mut HashMap<u32, SeriesInfo>,
    ) -> Result<(), CountersError> {
        let info = if let Some(i) = new.get_mut(&id) {
            i
        } else {
            match changed.entry(id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let reg = self.registry.read().map_err(|_| CountersError::Lock)?;
                    let cur = usize::try_from(id)
                        .ok()
                        .and_then(|i| reg.infos.get(i))
                        .ok_or(CountersError::Damaged("series id"))?;
                    if (cur.write || !call.write) && call.minute >= cur.first_minute {
                        return Ok(());
                    }
                    e.insert(cur.clone())
                }
            }
        };
        info.write |= call.write;
        info.first_minute = info.first_minute.min(call.minute);
        Ok(())
    }

    /// Every series, by id.
    pub fn series(&self) -> Result<Vec<SeriesInfo>, CountersError> {
        Ok(self
            .registry
            .read()
            .map_err(|_| CountersError::Lock)?
            .infos
            .clone())
    }

    /// The id of a series, if it was ever counted.
    pub fn find(&self, key: &SeriesKey) -> Result<Option<u32>, CountersError> {
        Ok(self
            .registry
            .read()
            .map_err(|_| CountersError::Lock)?
            .ids
            .get(key)
            .copied())
    }

    /// The per-minute counts of series `id` for minutes `[from, to)`.
    pub fn counts(&self, id: u32, from: i64, to: i64) -> Result<Vec<u32>, CountersError> {
        let len = usize::try_from(to - from).unwrap_or(0);
        let mut out = vec![0u32; len];
        if len == 0 {
            return Ok(out);
        }
        let lo = block_key(id, from.div_euclid(60));
        let hi = block_key(id, (to - 1).div_euclid(60));
        for g in self
            .counts
            .range::<[u8; 8], _>((Bound::Included(lo), Bound::Included(hi)))
        {
            let (k, v) = g.into_inner()?;
            let hour = unit_of_key(&k).ok_or(CountersError::Damaged("count key"))?;
            let block = decode_block(&v)?;
            for (i, c) in block.iter().enumerate() {
                let m = hour * 60 + i as i64;
                if (from..to).contains(&m) {
                    out[usize::try_from(m - from).unwrap_or(0)] = *c;
                }
            }
        }
        Ok(out)
    }

    /// The attributions of series `id` summed over minutes `[from, to)`.
    pub fn attributions(&self, id: u32, from: i64, to: i64) -> Result<Attributions, CountersError> {
        let mut sums: [HashMap<String, u64>; 3] = Default::default();
        if to > from {
            let lo = block_key(id, from);
            let hi = block_key(id, to - 1);
            for g in self
                .attrs
                .range::<[u8; 8], _>((Bound::Included(lo), Bound::Included(hi)))
            {
                let (_, v) = g.into_inner()?;
                let m = MinuteAttrs::decode(&v)?;
                for (sum, list) in sums.iter_mut().zip(m.0) {
                    for (value, c) in list {
                        *sum.entry(value).or_default() += u64::from(c);
                    }
                }
            }
        }
        let mut out = Attributions::default();
        for (slot, sum) in out.values.iter_mut().zip(sums) {
            let mut v: Vec<(String, u64)> = sum.into_iter().collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            *slot = v;
        }
        Ok(out)
    }

    /// Drops count blocks of hours wholly before `counts_cutoff` and attribution minutes before
    /// `attrs_cutoff` (minutes since the epoch). Returns how many entries were dropped.
    pub fn expire(&self, counts_cutoff: i64, attrs_cutoff: i64) -> Result<usize, CountersError> {
        let mut n = 0;
        for (ks, cutoff) in [
            (&self.counts, counts_cutoff.div_euclid(60)),
            (&self.attrs, attrs_cutoff),
        ] {
            let mut doomed = Vec::new();
            for g in ks.iter() {
                let k = g.key()?;
                if unit_of_key(&k).is_some_and(|u| u < cutoff) {
                    doomed.push(k.to_vec());
                }
            }
            n += doomed.len();
            for k in doomed {
                ks.remove(k)?;
            }
        }
        Ok(n)
    }

    /// The stored detector state, if any.
    pub fn state(&self) -> Result<Option<Vec<u8>>, CountersError> {
        Ok(self.meta.get(STATE_KEY)?.map(|v| v.to_vec()))
    }

    /// Stores the detector state durably (fsync) before returning.
    pub fn put_state(&self, state: &[u8]) -> Result<(), CountersError> {
        self.meta.insert(STATE_KEY, state)?;
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// Makes everything counted so far durable (shutdown; a crash without it means recounting
    /// the tail from the log).
    pub fn persist(&self) -> Result<(), CountersError> {
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// Bytes on disk (for benchmarks and the status of the view).
    pub fn disk_space(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_blocks_round_trip() {
        let mut b = [0u32; 60];
        b[0] = 1;
        b[59] = u32::MAX;
        b[30] = 300;
        let enc = encode_block(&b);
        assert_eq!(decode_block(&enc).expect("decodes"), b);
        assert!(decode_block(&enc[..enc.len() - 1]).is_err());
        assert_eq!(
            encode_block(&[0; 60]).len(),
            60,
            "a quiet minute costs one byte"
        );
    }

    #[test]
    fn format_1_bytes_are_stable() {
        // Counters format 1, byte for byte: a change here needs a new COUNTERS_FORMAT.
        let mut b = [0u32; 60];
        b[1] = 2;
        b[2] = 300;
        let enc = encode_block(&b);
        assert_eq!(&enc[..5], &[0x00, 0x02, 0xac, 0x02, 0x00]);
        assert_eq!(enc.len(), 61);
        let mut m = MinuteAttrs::default();
        m.bump(Attribute::UserAgent, "cli");
        m.bump(Attribute::ErrorCode, "null");
        m.bump(Attribute::ErrorCode, "null");
        assert_eq!(
            m.encode(),
            [
                0, 1, 0, 3, b'c', b'l', b'i', 1, 1, 0, 4, b'n', b'u', b'l', b'l', 2
            ]
        );
        assert_eq!(block_key(7, 1_000), [0, 0, 0, 7, 0, 0, 0x03, 0xe8]);
    }

    #[test]
    fn attributions_keep_the_frequent_values() {
        let mut m = MinuteAttrs::default();
        for _ in 0..50 {
            m.bump(Attribute::UserAgent, "heavy");
        }
        for i in 0..100 {
            m.bump(Attribute::UserAgent, &format!("one-off-{i}"));
        }
        let list = &m.0[Attribute::UserAgent as usize];
        assert_eq!(list.len(), ATTR_CAP);
        assert!(list.iter().any(|(v, c)| v == "heavy" && *c == 50));
        let total: u32 = list.iter().map(|(_, c)| *c).sum();
        assert_eq!(total, 150, "space-saving keeps the total");
        let back = MinuteAttrs::decode(&m.encode()).expect("decodes");
        assert_eq!(back, m);
        assert!(MinuteAttrs::decode(&[1, 0]).is_err());
    }

    #[test]
    fn calls_are_read_from_records() {
        let rec = serde_json::json!({
            "eventTime": "2026-11-21T10:05:30Z", "eventSource": "ec2.amazonaws.com",
            "eventName": "RunInstances", "awsRegion": "us-east-1", "recipientAccountId": "111122223333",
            "eventCategory": "Management", "readOnly": false, "errorCode": "AccessDenied",
            "userAgent": "aws-cli/2", "userIdentity": {"arn": "arn:aws:iam::111122223333:user/a"}
        });
        let c = read_call(&serde_json::to_vec(&rec).expect("json")).expect("a call");
        assert!(c.write);
        assert_eq!(c.error.as_deref(), Some("AccessDenied"));
        assert_eq!(c.minute * 60_000 % 3_600_000, 5 * 60_000);
        let mut insight = rec.clone();
        insight["eventCategory"] = "Insight".into();
        assert!(read_call(&serde_json::to_vec(&insight).expect("json")).is_none());
        let mut net = rec;
        net["eventCategory"] = "NetworkActivity".into();
        assert!(read_call(&serde_json::to_vec(&net).expect("json")).is_none());
    }
}
