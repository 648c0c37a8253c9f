//! PostgreSQL as the peer a competent engineer would set up for an audit table: a throwaway
//! cluster from the machine's own PostgreSQL (Debian's packages), `synchronous_commit = on` and
//! `fsync = on` (an acknowledged event is on disk), a tuned `shared_buffers`, a `jsonb` column
//! for the record, and an index on (attribute, event time) for each of the eight lookup
//! attributes. Events go in by `COPY`, one transaction per batch.
//!
//! PostgreSQL refuses to run as root; when the bench runs as root, the cluster is made and run
//! as the `postgres` user in a directory that user owns.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use postgres::{Client, NoTls, Statement};

use crate::{COLUMNS, Generated};

/// A running throwaway cluster.
pub(crate) struct Pg {
    dir: PathBuf,
    port: u16,
    user: Option<&'static str>,
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A free TCP port number (the cluster listens on a Unix socket named by it).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Pg {
    fn command(&self, program: &str) -> Command {
        match self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--", program]);
                c
            }
            None => Command::new(program),
        }
    }

    /// Makes and starts a cluster, or `None` (with the reason printed) when this machine has
    /// no PostgreSQL server (`initdb` not on the path).
    pub(crate) fn start() -> anyhow::Result<Option<Self>> {
        if Command::new("initdb").arg("--version").output().is_err() {
            println!(
                "(PostgreSQL is not installed: `apt-get install postgresql` adds it to these tables)"
            );
            return Ok(None);
        }
        let user = running_as_root().then_some("postgres");
        // Not under the bench's private temporary directory: the postgres user must reach it.
        let dir = std::env::temp_dir().join(format!("opentrail-bench-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let pg = Self {
            dir,
            port: free_port()?,
            user,
        };
        if let Some(u) = user {
            let ok = Command::new("chown")
                .args([&format!("{u}:{u}"), &pg.dir.display().to_string()])
                .status()?
                .success();
            if !ok {
                bail!("cannot give {} to the {u} user", pg.dir.display());
            }
        }
        let data = pg.dir.join("data");
        let out = pg
            .command("initdb")
            .args([
                "-D",
                &data.display().to_string(),
                "-U",
                "bench",
                "--auth=trust",
            ])
            .args(["--encoding=UTF8", "--no-instructions"])
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let options = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -p {} \
             -c shared_buffers=2GB -c synchronous_commit=on -c fsync=on \
             -c max_wal_size=8GB -c checkpoint_timeout=30min -c wal_buffers=64MB \
             -c max_connections=100",
            pg.dir.display(),
            pg.port
        );
        let out = pg
            .command("pg_ctl")
            .args(["-D", &data.display().to_string(), "-w", "-t", "60"])
            .args(["-l", &pg.dir.join("server.log").display().to_string()])
            .args(["-o", &options, "start"])
            .output()
            .context("running pg_ctl start")?;
        if !out.status.success() {
            bail!(
                "pg_ctl start failed: {}{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(pg.dir.join("server.log")).unwrap_or_default()
            );
        }
        let mut c = pg.connect()?;
        let version: String = c.query_one("SHOW server_version", &[])?.get(0);
        println!("PostgreSQL {version}: shared_buffers 2GB, synchronous_commit on, fsync on");
        Ok(Some(pg))
    }

    /// A new connection to the cluster.
    pub(crate) fn connect(&self) -> anyhow::Result<Client> {
        let mut tries = 0;
        loop {
            let r = postgres::Config::new()
                .host_path(&self.dir)
                .port(self.port)
                .user("bench")
                .dbname("postgres")
                .connect_timeout(Duration::from_secs(10))
                .connect(NoTls);
            match r {
                Ok(c) => return Ok(c),
                Err(e) if tries < 20 => {
                    tries += 1;
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e).context("connecting to PostgreSQL"),
            }
        }
    }

    /// Stops the cluster and removes its files.
    pub(crate) fn stop(self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", &self.dir.join("data").display().to_string()])
            .args(["-m", "fast", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Creates the table `name` with its eight lookup indexes (dropping an older one).
pub(crate) fn create_table(c: &mut Client, name: &str) -> anyhow::Result<()> {
    c.batch_execute(&format!(
        "DROP TABLE IF EXISTS {name};
         CREATE TABLE {name} (
            seq bigserial PRIMARY KEY, event_id text NOT NULL, event_time bigint NOT NULL,
            event_name text, read_only text, username text, resource_type text,
            resource_name text, event_source text, access_key_id text, record jsonb NOT NULL);"
    ))?;
    for col in COLUMNS {
        c.batch_execute(&format!(
            "CREATE INDEX {name}_{col} ON {name} ({col}, event_time, seq);"
        ))?;
    }
    Ok(())
}

/// One field of COPY's text format.
fn field(out: &mut String, s: &str) {
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// Inserts a batch with one `COPY` (one transaction, committed durably).
pub(crate) fn insert(c: &mut Client, table: &str, batch: &[Generated]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut text = String::with_capacity(batch.iter().map(|e| e.json.len() + 200).sum());
    for e in batch {
        let time = e.time_s.to_string();
        let read_only = e.read_only.to_string();
        let cols: [&str; 10] = [
            &e.event_id,
            &time,
            &e.name,
            &read_only,
            &e.user,
            &e.resource_type,
            &e.resource,
            &e.source,
            &e.key,
            &e.json,
        ];
        for (i, v) in cols.iter().enumerate() {
            if i > 0 {
                text.push('\t');
            }
            field(&mut text, v);
        }
        text.push('\n');
    }
    let mut w = c.copy_in(&format!(
        "COPY {table} (event_id, event_time, event_name, read_only, username, resource_type, \
         resource_name, event_source, access_key_id, record) FROM STDIN"
    ))?;
    w.write_all(text.as_bytes())?;
    w.finish()?;
    Ok(())
}

/// The table's bytes on disk, with its indexes and TOAST.
pub(crate) fn table_bytes(c: &mut Client, table: &str) -> anyhow::Result<u64> {
    let n: i64 = c
        .query_one(&format!("SELECT pg_total_relation_size('{table}')"), &[])?
        .get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Lookups with their statements prepared once per attribute (as SQLite's are cached).
pub(crate) struct Lookups {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl Lookups {
    pub(crate) fn new(mut client: Client, table: &str) -> anyhow::Result<Self> {
        let mut statements = HashMap::new();
        for col in COLUMNS {
            let st = client.prepare(&format!(
                "SELECT seq, event_time, record::text FROM {table} WHERE {col} = $1 \
                 AND event_time >= $2 AND event_time <= $3 AND (event_time, seq) < ($4, $5) \
                 ORDER BY event_time DESC, seq DESC LIMIT 50"
            ))?;
            statements.insert(col.to_owned(), st);
        }
        Ok(Self { client, statements })
    }

    /// A page of the newest 50 records with `col = v` in the window, after the keyset cursor
    /// `time:seq` of the previous page; gives the count and the next page's cursor.
    pub(crate) fn lookup(
        &mut self,
        col: &str,
        v: &str,
        start_s: i64,
        end_s: i64,
        after: Option<&str>,
    ) -> anyhow::Result<(usize, Option<String>)> {
        let st = self
            .statements
            .get(col)
            .with_context(|| format!("no lookup on {col}"))?;
        let (t, s) = match after {
            Some(a) => crate::history::parse_key(a)?,
            None => (i64::MAX, i64::MAX),
        };
        let rows = self.client.query(st, &[&v, &start_s, &end_s, &t, &s])?;
        let next = (rows.len() == 50)
            .then(|| {
                rows.last().map(|r| {
                    let seq: i64 = r.get(0);
                    let time: i64 = r.get(1);
                    format!("{time}:{seq}")
                })
            })
            .flatten();
        Ok((rows.len(), next))
    }
}
