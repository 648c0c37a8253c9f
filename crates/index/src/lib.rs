//! Event history: an index over the event log that answers LookupEvents.
//!
//! The index is a derived view. A worker reads the log forward from the index's own cursor and
//! writes, in one atomic fjall batch, the index entries of a run of records together with the new
//! cursor; so after a crash it resumes from exactly where its last batch ended, and a replayed
//! record rewrites the same keys (no duplicates). It can be rebuilt from the log at any time.
//!
//! Layout (index format 2): one fjall keyspace per UTC day of `eventTime` (`d<day>`), so
//! retention drops whole keyspaces. Inside a day, for scope = (account, category, region):
//!
//! ```text
//! all events   scope | 0x00                                  | inv_time u64 BE | inv_seq u64 BE  -> (empty)
//! attribute    scope | code u8 (1..=8) | len u16 BE | value  | inv_time u64 BE | inv_seq u64 BE  -> (empty)
//! ```
//! `inv_x = u64::MAX - x`, so a forward scan is newest first, and ties in time go newest
//! sequence first. Several attributes are ANDed by a zig-zag join over their (sorted) entries.
//! A hit's record is read from the log by its sequence number. (Format 1 stored each record's
//! file location as the value; the log's packed segments move records, so format 2 does not.)
//! Data blocks are LZ4-compressed at every level: keys sharing a prefix sit together, and
//! the inverted times of neighbouring entries share their high bytes.

mod token;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, RwLock};

use fjall::config::{CompressionPolicy, FilterPolicy};
use fjall::{CompressionType, Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use opentrail_log::{EventLog, LogError};
use opentrail_model::Category;
use opentrail_model::lookup::{AttributeKey, LookupKeys};
use opentrail_model::time::day_of;

pub use token::{PageToken, TokenError};

/// The version of the index layout; a different stored version means rebuild from the log.
pub const INDEX_FORMAT: u32 = 2;
const META: &str = "meta";
const CURSOR_KEY: &[u8] = b"cursor";
const FORMAT_KEY: &[u8] = b"format";
const SUFFIX_LEN: usize = 16;

/// Errors of the history index, by meaning.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("history index storage error: {0}")]
    Store(#[from] fjall::Error),
    #[error("event log error: {0}")]
    Log(#[from] LogError),
    #[error("history index entry is damaged: {0}")]
    Damaged(&'static str),
    #[error("history index lock poisoned")]
    Lock,
}

/// The scope one lookup runs in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    pub account: String,
    pub region: String,
    /// `Management` for plain lookups, `Insight` for `EventCategory: insight`.
    pub category: Category,
}

impl Scope {
    fn prefix(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(14 + self.region.len());
        p.extend_from_slice(self.account.as_bytes());
        p.push(match self.category {
            Category::Insight => b'I',
            _ => b'M',
        });
        // Regions are validated short ASCII names (at most 32 bytes).
        p.push(u8::try_from(self.region.len()).unwrap_or(u8::MAX));
        p.extend_from_slice(self.region.as_bytes());
        p
    }
}

/// One lookup: filters, a time window (inclusive, milliseconds), a page size and a position.
#[derive(Debug, Clone)]
pub struct Query {
    pub scope: Scope,
    pub attributes: Vec<(AttributeKey, String)>,
    pub start_ms: i64,
    pub end_ms: i64,
    pub max_results: usize,
    pub token: Option<PageToken>,
    /// Fingerprint of the parameters a token must be reused with.
    pub params_hash: u32,
}

/// A record found by a lookup.
#[derive(Debug, Clone)]
pub struct Hit {
    pub seq: u64,
    pub time_ms: i64,
    pub json: Vec<u8>,
}

/// One page of results.
#[derive(Debug, Clone)]
pub struct Page {
    pub hits: Vec<Hit>,
    pub next: Option<PageToken>,
}

/// The history index.
#[derive(Clone)]
pub struct HistoryIndex {
    db: Database,
    meta: Keyspace,
    days: Arc<RwLock<BTreeMap<i64, Keyspace>>>,
    log: EventLog,
}

/// Settings of a day's keyspace: LZ4 on every level's data blocks, and no bloom filters (the
/// index is read by range scans only, which filters cannot help).
fn day_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default()
        .data_block_compression_policy(CompressionPolicy::all(CompressionType::Lz4))
        .filter_policy(FilterPolicy::disabled())
}

fn day_name(day: i64) -> String {
    format!("d{day}")
}

fn inv(x: u64) -> [u8; 8] {
    (u64::MAX - x).to_be_bytes()
}

fn time_key(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

fn suffix(time_ms: i64, seq: u64) -> [u8; SUFFIX_LEN] {
    let mut s = [0u8; SUFFIX_LEN];
    s[..8].copy_from_slice(&inv(time_key(time_ms)));
    s[8..].copy_from_slice(&inv(seq));
    s
}

fn decode_suffix(s: &[u8]) -> Option<(i64, u64)> {
    let t = u64::MAX - u64::from_be_bytes(s.get(..8)?.try_into().ok()?);
    let seq = u64::MAX - u64::from_be_bytes(s.get(8..16)?.try_into().ok()?);
    Some((i64::try_from(t).ok()?, seq))
}

fn attr_prefix(scope: &[u8], key: AttributeKey, value: &str) -> Vec<u8> {
    let v = value.as_bytes();
    let mut p = Vec::with_capacity(scope.len() + 3 + v.len());
    p.extend_from_slice(scope);
    p.push(key.code());
    p.extend_from_slice(&u16::try_from(v.len()).unwrap_or(u16::MAX).to_be_bytes());
    p.extend_from_slice(v);
    p
}

fn all_prefix(scope: &[u8]) -> Vec<u8> {
    let mut p = scope.to_vec();
    p.push(0);
    p
}

/// The next 16-byte suffix in order (saturating at the end).
fn successor(s: &[u8; SUFFIX_LEN]) -> Option<[u8; SUFFIX_LEN]> {
    let mut out = *s;
    for i in (0..SUFFIX_LEN).rev() {
        if out[i] == 0xFF {
            out[i] = 0;
        } else {
            out[i] += 1;
            return Some(out);
        }
    }
    None
}

fn cat(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(a.len() + b.len());
    v.extend_from_slice(a);
    v.extend_from_slice(b);
    v
}

impl HistoryIndex {
    /// Opens the index in `dir`. A stored layout other than [`INDEX_FORMAT`], or a cursor beyond
    /// the end of the log, means the index is dropped and rebuilt from the log.
    pub fn open(dir: &Path, log: EventLog) -> Result<Self, IndexError> {
        // The journal is capped at fjall's smallest setting (64 MiB, against 512 by default): past
        // it, memtables are flushed to compressed tables and the journal is reclaimed.
        let db = Database::builder(dir)
            .max_journaling_size(64 * 1024 * 1024)
            .open()?;
        let meta = db.keyspace(META, KeyspaceCreateOptions::default)?;
        let index = Self {
            db,
            meta,
            days: Arc::new(RwLock::new(BTreeMap::new())),
            log,
        };
        let stored_format = index
            .meta
            .get(FORMAT_KEY)?
            .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
            .map(u32::from_be_bytes);
        let log_end = index.log.durable_end().next_seq;
        let rebuild = match stored_format {
            None => false,
            Some(f) if f != INDEX_FORMAT => {
                tracing::warn!(
                    stored = f,
                    current = INDEX_FORMAT,
                    "history index layout changed; rebuilding from the log"
                );
                true
            }
            Some(_) if index.cursor()? > log_end => {
                tracing::warn!(
                    log_end,
                    "history index is ahead of the event log; rebuilding from the log"
                );
                true
            }
            Some(_) => false,
        };
        let names: Vec<String> = index
            .db
            .list_keyspace_names()
            .iter()
            .map(|n| n.as_ref().to_owned())
            .collect();
        for name in names {
            let Some(day) = name.strip_prefix('d').and_then(|d| d.parse::<i64>().ok()) else {
                continue;
            };
            let ks = index.db.keyspace(&name, day_options)?;
            if rebuild {
                index.db.delete_keyspace(ks)?;
            } else {
                index
                    .days
                    .write()
                    .map_err(|_| IndexError::Lock)?
                    .insert(day, ks);
            }
        }
        if rebuild {
            index.meta.remove(CURSOR_KEY)?;
        }
        index.meta.insert(FORMAT_KEY, INDEX_FORMAT.to_be_bytes())?;
        index.db.persist(PersistMode::SyncAll)?;
        Ok(index)
    }

    /// The next log sequence number the index has not yet applied.
    pub fn cursor(&self) -> Result<u64, IndexError> {
        Ok(self
            .meta
            .get(CURSOR_KEY)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    fn day(&self, day: i64) -> Result<Keyspace, IndexError> {
        if let Some(ks) = self.days.read().map_err(|_| IndexError::Lock)?.get(&day) {
            return Ok(ks.clone());
        }
        let ks = self.db.keyspace(&day_name(day), day_options)?;
        self.days
            .write()
            .map_err(|_| IndexError::Lock)?
            .insert(day, ks.clone());
        Ok(ks)
    }

    /// Applies up to `max` records from the log, starting at the cursor, in one atomic batch with
    /// the new cursor. Records older than `cutoff_ms` and data or network-activity events are
    /// passed over. Returns how many log records were consumed. Blocking IO.
    pub fn apply_next(&self, max: usize, cutoff_ms: i64) -> Result<usize, IndexError> {
        let cursor = self.cursor()?;
        let mut reader = self.log.reader(cursor);
        let records = reader.read(max)?;
        if records.is_empty() {
            return Ok(0);
        }
        let mut batch = self.db.batch();
        for r in &records {
            let keys = match LookupKeys::from_json(&r.json) {
                Ok(k) => k,
                Err(e) => {
                    tracing::error!(seq = r.seq, error = %e, "record in the event log cannot be indexed; skipped");
                    continue;
                }
            };
            if !matches!(keys.category, Category::Management | Category::Insight)
                || keys.time_ms < cutoff_ms
            {
                continue;
            }
            let ks = self.day(day_of(keys.time_ms))?;
            let scope = Scope {
                account: keys.account.clone(),
                region: keys.region.clone(),
                category: keys.category,
            }
            .prefix();
            let sfx = suffix(keys.time_ms, r.seq);
            batch.insert(&ks, cat(&all_prefix(&scope), &sfx), []);
            for (key, value) in keys.attribute_values() {
                if value.len() > usize::from(u16::MAX) {
                    continue;
                }
                batch.insert(&ks, cat(&attr_prefix(&scope, key, &value), &sfx), []);
            }
        }
        batch.insert(&self.meta, CURSOR_KEY, reader.next_seq().to_be_bytes());
        batch.commit()?;
        Ok(records.len())
    }

    /// Drops the days wholly older than `cutoff_ms`. Returns how many were dropped.
    pub fn expire(&self, cutoff_ms: i64) -> Result<usize, IndexError> {
        let first_kept = day_of(cutoff_ms);
        let doomed: Vec<(i64, Keyspace)> = {
            let mut days = self.days.write().map_err(|_| IndexError::Lock)?;
            let old: Vec<i64> = days.range(..first_kept).map(|(d, _)| *d).collect();
            old.into_iter()
                .filter_map(|d| days.remove(&d).map(|ks| (d, ks)))
                .collect()
        };
        let n = doomed.len();
        for (day, ks) in doomed {
            self.db.delete_keyspace(ks)?;
            tracing::info!(day, "dropped a day of event history past retention");
        }
        Ok(n)
    }

    /// Makes everything applied so far durable (used at shutdown; a crash without it only means
    /// replay from the log).
    pub fn persist(&self) -> Result<(), IndexError> {
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// Answers one page of a lookup. Blocking IO.
    pub fn lookup(&self, q: &Query) -> Result<Page, IndexError> {
        let snapshot = match &q.token {
            Some(t) => t.snapshot,
            None => self.cursor()?,
        };
        let scope = q.scope.prefix();
        let mut prefixes: Vec<Vec<u8>> = if q.attributes.is_empty() {
            vec![all_prefix(&scope)]
        } else {
            q.attributes
                .iter()
                .map(|(k, v)| attr_prefix(&scope, *k, v))
                .collect()
        };
        prefixes.sort();
        prefixes.dedup();
        let upper = suffix(q.start_ms, 0);
        let mut lower = suffix(q.end_ms, u64::MAX);
        let mut lower_inclusive = true;
        if let Some(t) = &q.token {
            if t.position > lower {
                lower = t.position;
            }
            lower_inclusive = false;
        }
        let days: Vec<(i64, Keyspace)> = {
            let map = self.days.read().map_err(|_| IndexError::Lock)?;
            map.range(day_of(q.start_ms)..=day_of(q.end_ms))
                .rev()
                .map(|(d, k)| (*d, k.clone()))
                .collect()
        };
        let want = q.max_results;
        let mut found: Vec<[u8; SUFFIX_LEN]> = Vec::with_capacity(want + 1);
        for (_, ks) in days {
            let from = if lower_inclusive {
                Some(lower)
            } else {
                successor(&lower)
            };
            let Some(from) = from else { break };
            join_day(
                &ks,
                &prefixes,
                from,
                upper,
                snapshot,
                want + 1 - found.len(),
                &mut found,
            )?;
            if found.len() > want {
                break;
            }
        }
        let more = found.len() > want;
        found.truncate(want);
        let next = match (more, found.last()) {
            (true, Some(s)) => Some(PageToken {
                position: *s,
                snapshot,
                params_hash: q.params_hash,
            }),
            _ => None,
        };
        let mut hits = Vec::with_capacity(found.len());
        for s in found {
            let (time_ms, seq) = decode_suffix(&s).ok_or(IndexError::Damaged("suffix"))?;
            hits.push(Hit {
                seq,
                time_ms,
                json: self.log.read_seq(seq)?,
            });
        }
        Ok(Page { hits, next })
    }
}

/// The first entry under `prefix` with suffix in `[from, upper]`.
fn seek(
    ks: &Keyspace,
    prefix: &[u8],
    from: &[u8; SUFFIX_LEN],
    upper: &[u8; SUFFIX_LEN],
) -> Result<Option<[u8; SUFFIX_LEN]>, IndexError> {
    let lo = cat(prefix, from);
    let hi = cat(prefix, upper);
    let mut it = ks.range::<Vec<u8>, _>((Bound::Included(lo), Bound::Included(hi)));
    match it.next() {
        None => Ok(None),
        Some(g) => {
            let k = g.key()?;
            let s: [u8; SUFFIX_LEN] = k
                .get(prefix.len()..)
                .and_then(|s| s.try_into().ok())
                .ok_or(IndexError::Damaged("key"))?;
            Ok(Some(s))
        }
    }
}

/// Collects up to `limit` entries present under every prefix, newest first, from `from` on,
/// skipping sequence numbers at or past `snapshot`.
fn join_day(
    ks: &Keyspace,
    prefixes: &[Vec<u8>],
    from: [u8; SUFFIX_LEN],
    upper: [u8; SUFFIX_LEN],
    snapshot: u64,
    limit: usize,
    out: &mut Vec<[u8; SUFFIX_LEN]>,
) -> Result<(), IndexError> {
    let visible = |s: &[u8; SUFFIX_LEN]| decode_suffix(s).is_some_and(|(_, seq)| seq < snapshot);
    let mut taken = 0;
    if let [only] = prefixes {
        let lo = cat(only, &from);
        let hi = cat(only, &upper);
        for g in ks.range::<Vec<u8>, _>((Bound::Included(lo), Bound::Included(hi))) {
            let k = g.key()?;
            let s: [u8; SUFFIX_LEN] = k
                .get(only.len()..)
                .and_then(|s| s.try_into().ok())
                .ok_or(IndexError::Damaged("key"))?;
            if !visible(&s) {
                continue;
            }
            out.push(s);
            taken += 1;
            if taken >= limit {
                break;
            }
        }
        return Ok(());
    }
    let mut target = from;
    'outer: while taken < limit {
        let mut agreed: Option<[u8; SUFFIX_LEN]> = None;
        for p in prefixes {
            match seek(ks, p, &target, &upper)? {
                None => break 'outer,
                Some(s) if s == target => agreed = agreed.or(Some(s)),
                Some(s) => {
                    target = s;
                    continue 'outer;
                }
            }
        }
        let Some(s) = agreed else { break };
        if visible(&s) {
            out.push(s);
            taken += 1;
        }
        match successor(&s) {
            Some(n) => target = n,
            None => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
