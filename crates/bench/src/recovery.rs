//! Start-up, recovery after SIGKILL, and the server's memory: the real `opentrail serve` as a
//! child process takes a backlog of durable ingest (8 clients, batches of 1000) with its event
//! history index left behind, is killed with SIGKILL right after the last acknowledgement, and is
//! started again. Reported: the peak RSS under that load, the time until `/health` answers (the
//! log's recovery), the time until the history index has caught up with every acknowledged
//! event, and that none was lost (a count by lookup of the last acknowledged ones).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::child::{opentrail_binary, rss_cell, start};
use crate::{make_batches, run_clients};

pub(crate) fn run(seed: u64, events: usize, root: &Path, now_s: i64) -> anyhow::Result<()> {
    println!("\n## Start-up, recovery after SIGKILL, memory ({events} events)\n");
    let bin = opentrail_binary()?;
    let dir = root.join("recovery");
    std::fs::create_dir_all(&dir)?;
    let (first, empty_start) = start(&bin, &dir)?;
    let batches = Arc::new(make_batches(seed ^ 0x5eed, 30_000_000, events, 1000, now_s));
    let last_ids: Vec<String> = batches
        .last()
        .map(|(evs, _)| evs.iter().map(|e| e.event_id.clone()).collect())
        .unwrap_or_default();
    let ot = Arc::new(first.ot.handle());
    let client = Arc::clone(&ot);
    let t = Instant::now();
    let ingest = run_clients(Arc::clone(&batches), 8, move |_, _, body| {
        client.ingest(body)
    })?;
    let ingest_s = t.elapsed().as_secs_f64();
    let lag = ot.lag().unwrap_or(0);
    drop(ot);
    let rss = first.peak_rss_mb();
    first.kill()?;

    let (second, restart) = start(&bin, &dir)?;
    let t = Instant::now();
    let deadline = t + Duration::from_secs(600);
    while second.ot.lag()? > 0 {
        if Instant::now() > deadline {
            bail!("the index did not catch up in 600 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let caught_up = t.elapsed();
    let mut found = 0;
    for id in &last_ids {
        found += usize::from(second.ot.lookup("EventId", id)? > 0);
    }
    let rss_after = second.peak_rss_mb();
    second.kill()?;

    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| start-up on an empty data directory | {:.0} ms |",
        empty_start.as_secs_f64() * 1e3
    );
    println!(
        "| durable ingest, 8 clients × batches of 1000 | {:.0} events/s ({ingest_s:.1} s) |",
        ingest.events_per_s
    );
    println!(
        "| peak RSS of the server under that load | {} |",
        rss_cell(rss)
    );
    println!("| index lag at SIGKILL (acknowledged events not yet in history) | {lag} |");
    println!(
        "| restart after SIGKILL until /health answers (log recovery) | {:.0} ms |",
        restart.as_secs_f64() * 1e3
    );
    println!(
        "| then until the history index has every acknowledged event | {:.0} ms |",
        caught_up.as_secs_f64() * 1e3
    );
    println!(
        "| peak RSS of the restarted server through recovery | {} |",
        rss_cell(rss_after)
    );
    println!(
        "| the last acknowledged batch, found by EventId after recovery | {found}/{} |",
        last_ids.len()
    );
    if found != last_ids.len() {
        bail!("acknowledged events were lost across SIGKILL");
    }
    Ok(())
}
