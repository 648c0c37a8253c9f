//! The real `opentrail serve` as a child process, so the server's own memory (peak RSS) can be
//! read apart from the bench's, and what is measured is the binary users run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{OpenTrail, ROOT_ID, ROOT_SECRET};

pub(crate) struct Served {
    pub(crate) child: Child,
    pub(crate) ot: OpenTrail,
}

pub(crate) fn opentrail_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("OPENTRAIL_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let p = exe
        .parent()
        .map(|d| d.join("opentrail"))
        .context("no directory for the opentrail binary")?;
    if !p.is_file() {
        bail!(
            "no opentrail binary at {} (build it: cargo build --release -p opentrail)",
            p.display()
        );
    }
    Ok(p)
}

/// Starts `opentrail serve` on `dir` and waits for `/health`; gives the time that took.
pub(crate) fn start(bin: &Path, dir: &Path) -> anyhow::Result<(Served, Duration)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let started = Instant::now();
    let child = Command::new(bin)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("OPENTRAIL_DATA_DIR", dir)
        .env("OPENTRAIL_ACCOUNT_ID", crate::ACCOUNT)
        .env("OPENTRAIL_ROOT_ACCESS_KEY_ID", ROOT_ID)
        .env("OPENTRAIL_ROOT_SECRET_ACCESS_KEY", ROOT_SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting opentrail serve")?;
    let ot = OpenTrail::remote(&format!("http://127.0.0.1:{port}"));
    let deadline = started + Duration::from_secs(600);
    loop {
        if ot.healthy() {
            return Ok((Served { child, ot }, started.elapsed()));
        }
        if Instant::now() > deadline {
            bail!("opentrail serve did not become healthy in 600 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Served {
    /// Peak resident memory since start or the last [`Served::reset_peak`] (`VmHWM`), in MB.
    pub(crate) fn peak_rss_mb(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }

    /// Starts a new peak-RSS measurement (Linux: writing 5 to `clear_refs`).
    pub(crate) fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5");
    }

    /// SIGKILL, as a crash.
    pub(crate) fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().context("SIGKILL")?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM and wait for the graceful shutdown.
    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?
            .success();
        if !ok {
            bail!("could not signal opentrail serve");
        }
        self.child.wait()?;
        Ok(())
    }
}

/// The peak RSS cell of a table.
pub(crate) fn rss_cell(mb: Option<f64>) -> String {
    mb.map_or("unknown".to_owned(), |m| format!("{m:.0} MB"))
}
