//! `opentrail tail`: follows the server's live tail (`GET /v1/tail`, Server-Sent Events) and
//! prints each event as it is recorded. When the connection drops (a server restart, a network
//! blip) it reconnects and resumes after the last event it printed, so nothing is skipped and
//! nothing is printed twice.

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde_json::Value;

use crate::client::{Connection, Refused};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    /// Each record's JSON on one line, exactly as recorded.
    Json,
    /// One readable line per event: time, source, name, who, from where, error.
    Text,
}

#[derive(Args, Debug)]
pub struct TailArgs {
    #[command(flatten)]
    conn: Connection,
    #[arg(long)]
    event_id: Option<String>,
    #[arg(long)]
    event_name: Option<String>,
    /// `true` or `false`.
    #[arg(long)]
    read_only: Option<String>,
    #[arg(long)]
    username: Option<String>,
    #[arg(long)]
    resource_type: Option<String>,
    #[arg(long)]
    resource_name: Option<String>,
    #[arg(long)]
    event_source: Option<String>,
    #[arg(long)]
    access_key_id: Option<String>,
    /// An EventBridge event pattern the event's envelope must match.
    #[arg(long)]
    event_pattern: Option<String>,
    /// Start after this event id (a log sequence number, as printed with `--ids`); by default
    /// the tail starts with the next event recorded.
    #[arg(long)]
    after: Option<u64>,
    /// Stop after this many events.
    #[arg(long)]
    max_events: Option<u64>,
    /// Print each event's id (its log sequence number) before it, tab-separated.
    #[arg(long)]
    ids: bool,
    #[arg(long, value_enum, default_value = "json")]
    output: Output,
}

/// RFC 3986 percent-encoding of a query value (everything but unreserved characters).
fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl TailArgs {
    fn query(&self) -> String {
        let pairs = [
            ("EventId", &self.event_id),
            ("EventName", &self.event_name),
            ("ReadOnly", &self.read_only),
            ("Username", &self.username),
            ("ResourceType", &self.resource_type),
            ("ResourceName", &self.resource_name),
            ("EventSource", &self.event_source),
            ("AccessKeyId", &self.access_key_id),
            ("EventPattern", &self.event_pattern),
        ];
        let mut q: Vec<String> = pairs
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
            .collect();
        if let Some(a) = self.after {
            q.push(format!("after={a}"));
        }
        q.sort();
        q.join("&")
    }
}

fn text_line(record: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let who = record["userIdentity"]["userName"]
        .as_str()
        .or(record["userIdentity"]["arn"].as_str())
        .or(record["userIdentity"]["type"].as_str())
        .unwrap_or("-");
    let mut line = format!(
        "{}  {}  {}  {}  {}",
        s(&record["eventTime"]),
        s(&record["eventSource"]),
        s(&record["eventName"]),
        who,
        s(&record["sourceIPAddress"]),
    );
    if let Some(code) = record["errorCode"].as_str() {
        line.push_str("  ");
        line.push_str(code);
    }
    line
}

/// What one connection ended with.
enum Ended {
    /// `--max-events` reached.
    Done,
    /// The server closed the stream (shutting down) or the connection broke.
    Dropped(String),
}

pub fn run(args: TailArgs) -> anyhow::Result<()> {
    let client = args.conn.streaming_client()?;
    let query = args.query();
    let mut last: Option<u64> = None;
    let mut printed = 0u64;
    let mut failures = 0u32;
    let stdout = std::io::stdout();
    loop {
        let last_header = last.map(|l| l.to_string());
        let mut extra = vec![("accept", "text/event-stream")];
        if let Some(l) = &last_header {
            extra.push(("last-event-id", l.as_str()));
        }
        let path = if query.is_empty() {
            "v1/tail".to_owned()
        } else {
            format!("v1/tail?{query}")
        };
        let ended = match client.get_stream("opentrail", &path, &extra) {
            Err(e) => {
                // A refusal (a bad filter, no permission) does not change by retrying; a
                // server that is busy or restarting does.
                if let Some(r) = e.downcast_ref::<Refused>()
                    && (400..500).contains(&r.status)
                    && r.status != 429
                {
                    return Err(e);
                }
                Ended::Dropped(format!("{e:#}"))
            }
            Ok(resp) => {
                failures = 0;
                let mut out = stdout.lock();
                read_events(resp, &args, &mut last, &mut printed, &mut out)?
            }
        };
        match ended {
            Ended::Done => return Ok(()),
            Ended::Dropped(why) => {
                failures += 1;
                let wait = Duration::from_millis(250 * u64::from(failures.min(20)));
                eprintln!("opentrail tail: {why}; reconnecting in {wait:?}");
                std::thread::sleep(wait);
            }
        }
    }
}

fn read_events(
    resp: ureq::http::Response<ureq::Body>,
    args: &TailArgs,
    last: &mut Option<u64>,
    printed: &mut u64,
    out: &mut impl Write,
) -> anyhow::Result<Ended> {
    let reader = BufReader::new(resp.into_body().into_reader());
    let (mut id, mut event, mut data) = (None::<u64>, String::new(), String::new());
    for line in reader.lines() {
        let line = match line {
            Ok(l) => l,
            Err(e) => return Ok(Ended::Dropped(format!("the stream broke: {e}"))),
        };
        if line.is_empty() {
            // End of one event.
            match event.as_str() {
                "record" => {
                    if args.ids {
                        write!(out, "{}\t", id.unwrap_or_default())?;
                    }
                    match args.output {
                        Output::Json => writeln!(out, "{data}")?,
                        Output::Text => {
                            let v: Value = serde_json::from_str(&data)
                                .context("the server sent a record that is not JSON")?;
                            writeln!(out, "{}", text_line(&v))?;
                        }
                    }
                    out.flush()?;
                    *last = id.or(*last);
                    *printed += 1;
                    if args.max_events.is_some_and(|m| *printed >= m) {
                        return Ok(Ended::Done);
                    }
                }
                "gap" => eprintln!("opentrail tail: events were skipped: {data}"),
                "error" => eprintln!("opentrail tail: the server reported: {data}"),
                _ => {}
            }
            (id, event, data) = (None, String::new(), String::new());
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = value.parse().ok(),
            "event" => event = value.to_owned(),
            "data" => {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            _ => {}
        }
    }
    Ok(Ended::Dropped("the server closed the stream".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_encoded_and_sorted() {
        let args = TailArgs {
            conn: Connection::default(),
            event_id: None,
            event_name: Some("Stop Logging".into()),
            read_only: Some("false".into()),
            username: None,
            resource_type: None,
            resource_name: None,
            event_source: None,
            access_key_id: None,
            event_pattern: Some(r#"{"source":["aws.iam"]}"#.into()),
            after: Some(7),
            max_events: None,
            ids: false,
            output: Output::Json,
        };
        assert_eq!(
            args.query(),
            "EventName=Stop%20Logging&EventPattern=%7B%22source%22%3A%5B%22aws.iam%22%5D%7D&ReadOnly=false&after=7"
        );
    }

    #[test]
    fn text_lines_name_who_did_what() {
        let v: Value = serde_json::from_str(
            r#"{"eventTime":"2026-11-21T10:00:00Z","eventSource":"iam.amazonaws.com","eventName":"DeleteUser","userIdentity":{"type":"IAMUser","userName":"bob"},"sourceIPAddress":"10.1.2.3","errorCode":"AccessDenied"}"#,
        )
        .expect("json");
        assert_eq!(
            text_line(&v),
            "2026-11-21T10:00:00Z  iam.amazonaws.com  DeleteUser  bob  10.1.2.3  AccessDenied"
        );
    }
}
