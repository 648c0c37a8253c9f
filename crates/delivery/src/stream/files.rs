//! A JSON-lines file set: one record per line, appended to the active file of the trail's
//! directory, rotated by size and age.
//!
//! Exactly once, across crashes:
//! - the active file's name and committed length are part of the stream state; before each
//!   write the file is cut back to that length (bytes from a step that never committed);
//! - a rotation commits the new file's name (and the cursor up to the old file's last record,
//!   already synced) before the new file is created, so there is never an uncommitted file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use opentrail_catalog::{StreamFile, StreamState};

use super::groups::FileSetConfig;

/// A file set failure.
#[derive(Debug, thiserror::Error)]
pub enum FileSetError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("storing the stream state: {0}")]
    Commit(String),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> FileSetError + '_ {
    move |source| FileSetError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One trail's files in a file-set destination.
pub struct FileSet {
    dir: PathBuf,
    config: FileSetConfig,
    /// The active file was cut back to its committed length in this process.
    recovered: bool,
}

/// A line to append: the record's sequence number and its JSON.
pub struct Line<'a> {
    pub seq: u64,
    pub json: &'a [u8],
}

fn file_name(now_ms: i64, seq: u64) -> String {
    let t = jiff::Timestamp::from_millisecond(now_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    format!("{}-{seq:020}.jsonl", t.strftime("%Y%m%dT%H%M%S%.3fZ"))
}

fn sync_dir(dir: &Path) -> Result<(), FileSetError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

impl FileSet {
    /// `subdir` names the trail's directory inside the destination.
    pub fn new(config: FileSetConfig, subdir: &str) -> Self {
        Self {
            dir: config.dir.join(subdir),
            config,
            recovered: false,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// After a failure the next write checks the active file again.
    pub fn forget_recovery(&mut self) {
        self.recovered = false;
    }

    /// Cuts the active file back to its committed length (once per process, and after a
    /// failure). A file that is shorter than recorded, or gone, was changed by someone else: it
    /// is taken as it is (and made again if gone) and the state follows it.
    fn recover(&mut self, state: &mut StreamState) -> Result<(), FileSetError> {
        if self.recovered {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(io_at(&self.dir))?;
        if let Some(active) = &mut state.file {
            let path = self.dir.join(&active.name);
            match std::fs::metadata(&path) {
                Ok(m) if m.len() > active.len => {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_at(&path))?;
                    f.set_len(active.len).map_err(io_at(&path))?;
                    f.sync_all().map_err(io_at(&path))?;
                    tracing::info!(file = %path.display(), cut = m.len() - active.len, "log stream file cut back to its committed length");
                }
                Ok(m) if m.len() < active.len => {
                    tracing::warn!(file = %path.display(), recorded = active.len, found = m.len(), "log stream file is shorter than recorded; continuing after what is there");
                    active.len = m.len();
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if active.len > 0 {
                        tracing::warn!(file = %path.display(), "log stream file is gone; starting it again");
                    }
                    active.len = 0;
                }
                Err(e) => return Err(io_at(&path)(e)),
            }
        }
        self.recovered = true;
        Ok(())
    }

    /// A name for a new file holding records from `seq`, not taken yet.
    fn fresh_name(&self, now_ms: i64, seq: u64) -> String {
        let base = file_name(now_ms, seq);
        if !self.dir.join(&base).exists() {
            return base;
        }
        let stem = base.trim_end_matches(".jsonl");
        (1u32..)
            .map(|n| format!("{stem}-{n}.jsonl"))
            .find(|n| !self.dir.join(n).exists())
            .unwrap_or(base)
    }

    /// Keeps at most `max_files` files (the active one included), deleting the oldest.
    fn prune(&self, active: &str) -> Result<(), FileSetError> {
        if self.config.max_files == 0 {
            return Ok(());
        }
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .map_err(io_at(&self.dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".jsonl") && n != active)
            .collect();
        names.sort();
        let excess = (names.len() + 1).saturating_sub(self.config.max_files);
        for n in names.iter().take(excess) {
            let path = self.dir.join(n);
            std::fs::remove_file(&path).map_err(io_at(&path))?;
        }
        Ok(())
    }

    /// Appends `lines` (in order), rotating as needed; `commit` stores the state at each
    /// rotation. On return every line is synced and `state` says where the active file ends;
    /// the caller commits it with the batch's cursor.
    pub fn write(
        &mut self,
        state: &mut StreamState,
        lines: &[Line<'_>],
        now_ms: i64,
        commit: &mut dyn FnMut(&StreamState) -> Result<(), String>,
    ) -> Result<(), FileSetError> {
        self.recover(state)?;
        let max_age_ms = i64::try_from(self.config.max_age.as_millis()).unwrap_or(i64::MAX);
        let mut open: Option<(File, PathBuf)> = None;
        for line in lines {
            let needed = line.json.len() as u64 + 1;
            let rotate = match &state.file {
                None => true,
                Some(f) => {
                    f.len > 0
                        && (f.len + needed > self.config.max_bytes
                            || now_ms.saturating_sub(f.opened_ms) >= max_age_ms)
                }
            };
            if rotate {
                if let Some((f, path)) = open.take() {
                    f.sync_data().map_err(io_at(&path))?;
                }
                let name = self.fresh_name(now_ms, line.seq);
                state.file = Some(StreamFile {
                    name: name.clone(),
                    len: 0,
                    opened_ms: now_ms,
                });
                state.cursor = line.seq;
                commit(state).map_err(FileSetError::Commit)?;
                let path = self.dir.join(&name);
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io_at(&path))?;
                sync_dir(&self.dir)?;
                self.prune(&name)?;
                open = Some((f, path));
            }
            let Some(active) = state.file.as_mut() else {
                continue;
            };
            if open.is_none() {
                let path = self.dir.join(&active.name);
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io_at(&path))?;
                if active.len == 0 {
                    sync_dir(&self.dir)?;
                }
                open = Some((f, path));
            }
            if let Some((f, path)) = open.as_mut() {
                f.write_all(line.json).map_err(io_at(path))?;
                f.write_all(b"\n").map_err(io_at(path))?;
            }
            active.len += needed;
            state.records += 1;
        }
        if let Some((f, path)) = open {
            f.sync_data().map_err(io_at(&path))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(dir: &Path, max_bytes: u64, max_files: usize) -> FileSetConfig {
        FileSetConfig {
            dir: dir.to_owned(),
            max_bytes,
            max_age: Duration::from_secs(3600),
            max_files,
        }
    }

    fn lines_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
            .collect();
        names.sort();
        names
            .iter()
            .flat_map(|n| {
                std::fs::read_to_string(dir.join(n))
                    .expect("read")
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Line `i` holds record `i`.
    fn lines_of(recs: &[Vec<u8>]) -> Vec<Line<'_>> {
        recs.iter()
            .enumerate()
            .map(|(i, json)| Line {
                seq: i as u64,
                json,
            })
            .collect()
    }

    fn texts(recs: &[Vec<u8>]) -> Vec<String> {
        recs.iter()
            .map(|r| String::from_utf8(r.clone()).expect("utf8"))
            .collect()
    }

    fn record(i: u64) -> Vec<u8> {
        format!("{{\"eventID\":\"e{i}\",\"pad\":\"{}\"}}", "x".repeat(200)).into_bytes()
    }

    #[test]
    fn rotation_by_size_and_age_keeps_every_line_once() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut set = FileSet::new(config(tmp.path(), 1024, 0), "t");
        let mut state = StreamState::new("g".into(), 0);
        let mut commits = Vec::new();
        let recs: Vec<Vec<u8>> = (0..20).map(record).collect();
        let lines = lines_of(&recs);
        let mut commit = |s: &StreamState| {
            commits.push(s.clone());
            Ok(())
        };
        set.write(&mut state, &lines[..10], 1_000, &mut commit)
            .expect("write");
        // Past the age: the next write starts a new file even though it is small.
        set.config.max_age = Duration::from_millis(500);
        set.write(&mut state, &lines[10..], 2_000, &mut commit)
            .expect("write");
        let files = std::fs::read_dir(set.dir()).expect("dir").count();
        // 240-byte lines, 1024 bytes a file: 4 per file; 10 lines → 3 files, then a new one.
        assert_eq!(files, 3 + 3);
        assert_eq!(commits.len(), files);
        // Each rotation's cursor is its first line's sequence number.
        let firsts: Vec<u64> = commits.iter().map(|s| s.cursor).collect();
        assert_eq!(firsts, vec![0, 4, 8, 10, 14, 18]);
        let want = texts(&recs);
        assert_eq!(lines_in(set.dir()), want);
        assert_eq!(state.records, 20);
    }

    #[test]
    fn uncommitted_bytes_are_cut_off_before_the_next_write() {
        let tmp = tempfile::tempdir().expect("tmp");
        let recs: Vec<Vec<u8>> = (0..6).map(record).collect();
        let lines = lines_of(&recs);
        let mut state = StreamState::new("g".into(), 0);
        let committed = {
            let mut set = FileSet::new(config(tmp.path(), 1 << 20, 0), "t");
            set.write(&mut state, &lines[..3], 1_000, &mut |_| Ok(()))
                .expect("write");
            let committed = StreamState {
                cursor: 3,
                ..state.clone()
            };
            // A second step writes but "crashes" before its commit.
            set.write(&mut state, &lines[3..5], 1_000, &mut |_| Ok(()))
                .expect("write");
            committed
        };
        let mut set = FileSet::new(config(tmp.path(), 1 << 20, 0), "t");
        let mut state = committed;
        set.write(&mut state, &lines[3..], 1_000, &mut |_| Ok(()))
            .expect("replay");
        let want = texts(&recs);
        assert_eq!(lines_in(set.dir()), want);
    }

    #[test]
    fn a_crash_after_a_rotation_commit_leaves_no_stray_file() {
        let tmp = tempfile::tempdir().expect("tmp");
        let recs: Vec<Vec<u8>> = (0..8).map(record).collect();
        let lines = lines_of(&recs);
        let mut state = StreamState::new("g".into(), 0);
        let mut last = None;
        {
            let mut set = FileSet::new(config(tmp.path(), 1024, 0), "t");
            // Fails right after the second rotation is committed.
            let mut n = 0;
            let r = set.write(&mut state, &lines, 1_000, &mut |s| {
                n += 1;
                last = Some(s.clone());
                if n == 2 {
                    Err("disk full".into())
                } else {
                    Ok(())
                }
            });
            assert!(matches!(r, Err(FileSetError::Commit(_))));
        }
        // The first rotation's state is what the catalog holds.
        let mut state = StreamState::new("g".into(), 0);
        state.file = Some(StreamFile {
            name: std::fs::read_dir(tmp.path().join("t"))
                .expect("dir")
                .next()
                .expect("one file")
                .expect("entry")
                .file_name()
                .into_string()
                .expect("utf8"),
            len: 0,
            opened_ms: 1_000,
        });
        assert_eq!(last.map(|s| s.cursor), Some(4));
        let mut set = FileSet::new(config(tmp.path(), 1024, 0), "t");
        set.write(&mut state, &lines, 1_000, &mut |_| Ok(()))
            .expect("replay");
        let want = texts(&recs);
        assert_eq!(lines_in(set.dir()), want);
    }

    #[test]
    fn max_files_keeps_the_newest() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut set = FileSet::new(config(tmp.path(), 1024, 2), "t");
        let mut state = StreamState::new("g".into(), 0);
        let recs: Vec<Vec<u8>> = (0..20).map(record).collect();
        let lines = lines_of(&recs);
        set.write(&mut state, &lines, 1_000, &mut |_| Ok(()))
            .expect("write");
        let kept = lines_in(set.dir());
        let want = texts(&recs[16..]);
        // Files hold 4 lines; 2 files are kept: lines 12..16 and 16..20.
        assert_eq!(kept.len(), 8);
        assert_eq!(kept[4..], want[..]);
    }
}
