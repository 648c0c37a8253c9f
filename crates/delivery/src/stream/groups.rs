//! The log groups trails may stream to, and where each one's records go.
//!
//! A group is declared as `ARN` or `ARN=DESTINATION` (setting `cloudwatch_log_groups`):
//! - no destination: a JSON-lines file set under `<data_dir>/log-groups/<group name>/`;
//! - `file:///DIR`: a JSON-lines file set under DIR;
//! - `syslog+tcp://HOST[:PORT]` (default 514) or `syslog+tls://HOST[:PORT]` (default 6514):
//!   RFC 5424 messages, octet-counted (RFC 6587 / RFC 5425);
//! - `http://…` or `https://…`: NDJSON batches POSTed to the URL as given.
//!
//! Options follow a `#`, as `name=value` pairs joined by `&` (a fragment is never sent, so an
//! HTTP collector's own query string stays its own):
//! - file sets: `max_bytes` (default 64 MiB), `max_age` (default `1h`), `max_files` (default 0:
//!   keep all);
//! - syslog: `hostname` (default `opentrail`), `app_name` (default `cloudtrail`), `ca_file`
//!   (PEM, trusted besides the public roots), `server_name` (TLS name, default the host);
//! - http: `authorization` (the `Authorization` header's value), `batch_records` (default
//!   10,000), `batch_bytes` (default 1 MiB), `timeout` (default `30s`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A file-set destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSetConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub max_age: Duration,
    pub max_files: usize,
}

/// A syslog destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogConfig {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    pub server_name: Option<String>,
    pub hostname: String,
    pub app_name: String,
}

/// An HTTP NDJSON destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub url: String,
    pub authorization: Option<String>,
    pub batch_records: usize,
    pub batch_bytes: usize,
    pub timeout: Duration,
}

/// Where a log group's records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Files(FileSetConfig),
    Syslog(SyslogConfig),
    Http(HttpConfig),
}

/// The declared log groups, by ARN (without a trailing `:*`).
#[derive(Debug, Clone, Default)]
pub struct LogGroups {
    groups: BTreeMap<String, Destination>,
}

/// A log group ARN as trails and the settings may write it: `:*` at the end is the same group.
pub fn normal_group_arn(arn: &str) -> &str {
    arn.strip_suffix(":*").unwrap_or(arn)
}

/// The group name of a log group ARN (`arn:aws:logs:REGION:ACCOUNT:log-group:NAME`).
fn group_name(arn: &str) -> Option<&str> {
    let parts: Vec<&str> = arn.splitn(7, ':').collect();
    match parts.as_slice() {
        ["arn", _, "logs", _, _, "log-group", name] if !name.is_empty() => Some(name),
        _ => None,
    }
}

/// Group names are `[A-Za-z0-9._/#-]`, 1 to 512 characters (CloudWatch Logs' rule).
fn valid_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 512
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '#' | '-'))
}

fn options(fragment: Option<&str>) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in fragment.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("option {pair:?} is not name=value"))?;
        let v = percent_decode(v).ok_or_else(|| format!("option {k} is not percent-encoded"))?;
        out.insert(k.to_owned(), v);
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn take_number<T: std::str::FromStr>(
    opts: &mut BTreeMap<String, String>,
    name: &str,
    default: T,
    ok: impl Fn(&T) -> bool,
) -> Result<T, String> {
    match opts.remove(name) {
        None => Ok(default),
        Some(v) => match v.parse::<T>() {
            Ok(n) if ok(&n) => Ok(n),
            _ => Err(format!("option {name}={v} is out of range or not a number")),
        },
    }
}

fn take_duration(
    opts: &mut BTreeMap<String, String>,
    name: &str,
    default: Duration,
) -> Result<Duration, String> {
    match opts.remove(name) {
        None => Ok(default),
        Some(v) => parse_duration(&v)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("option {name}={v} is not a duration like 30s, 5m or 1h")),
    }
}

/// `500ms`, `30s`, `5m`, `1h`, `1d`.
fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

fn no_leftovers(opts: BTreeMap<String, String>, kind: &str) -> Result<(), String> {
    match opts.keys().next() {
        None => Ok(()),
        Some(k) => Err(format!("{kind} destinations have no option {k:?}")),
    }
}

impl Destination {
    /// Parses a destination; `default_dir` is where a group without one keeps its files.
    fn parse(dest: Option<&str>, default_dir: PathBuf) -> Result<Self, String> {
        let Some(dest) = dest else {
            return Ok(Self::Files(FileSetConfig {
                dir: default_dir,
                max_bytes: 64 << 20,
                max_age: Duration::from_secs(3600),
                max_files: 0,
            }));
        };
        let (base, fragment) = match dest.split_once('#') {
            Some((b, f)) => (b, Some(f)),
            None => (dest, None),
        };
        let mut opts = options(fragment)?;
        let (scheme, rest) = base.split_once("://").ok_or_else(|| {
            format!(
                "{base:?} has no scheme (file://, syslog+tcp://, syslog+tls://, http://, https://)"
            )
        })?;
        match scheme {
            "file" => {
                if !rest.starts_with('/') {
                    return Err(format!(
                        "file destination {base:?} must be an absolute path (file:///dir)"
                    ));
                }
                let dir = PathBuf::from(
                    percent_decode(rest)
                        .ok_or_else(|| format!("{base:?} is not percent-encoded"))?,
                );
                let max_bytes = take_number(&mut opts, "max_bytes", 64u64 << 20, |n| *n >= 1024)?;
                let max_age = take_duration(&mut opts, "max_age", Duration::from_secs(3600))?;
                let max_files = take_number(&mut opts, "max_files", 0usize, |_| true)?;
                no_leftovers(opts, "file")?;
                Ok(Self::Files(FileSetConfig {
                    dir,
                    max_bytes,
                    max_age,
                    max_files,
                }))
            }
            "syslog+tcp" | "syslog+tls" => {
                let tls = scheme == "syslog+tls";
                let authority = rest.trim_end_matches('/');
                if authority.contains('/') || authority.contains('?') || authority.contains('@') {
                    return Err(format!(
                        "syslog destination {base:?} takes only host and port"
                    ));
                }
                let (host, port) = split_host_port(authority, if tls { 6514 } else { 514 })
                    .ok_or_else(|| {
                        format!("syslog destination {base:?} has no valid host and port")
                    })?;
                let ca_file = opts.remove("ca_file").map(PathBuf::from);
                let server_name = opts.remove("server_name");
                let hostname = opts
                    .remove("hostname")
                    .unwrap_or_else(|| "opentrail".into());
                let app_name = opts
                    .remove("app_name")
                    .unwrap_or_else(|| "cloudtrail".into());
                for (what, v, max) in [("hostname", &hostname, 255), ("app_name", &app_name, 48)] {
                    if v.is_empty() || v.len() > max || !v.bytes().all(|b| (33..=126).contains(&b))
                    {
                        return Err(format!(
                            "syslog {what} {v:?} must be 1 to {max} printable ASCII characters"
                        ));
                    }
                }
                if !tls && (ca_file.is_some() || server_name.is_some()) {
                    return Err("ca_file and server_name apply to syslog+tls only".into());
                }
                no_leftovers(opts, "syslog")?;
                Ok(Self::Syslog(SyslogConfig {
                    host,
                    port,
                    tls,
                    ca_file,
                    server_name,
                    hostname,
                    app_name,
                }))
            }
            "http" | "https" => {
                let url = reqwest::Url::parse(base).map_err(|e| format!("{base:?}: {e}"))?;
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(format!("{base:?} has no host"));
                }
                let authorization = opts.remove("authorization");
                let batch_records = take_number(&mut opts, "batch_records", 10_000usize, |n| {
                    (1..=10_000).contains(n)
                })?;
                let batch_bytes = take_number(&mut opts, "batch_bytes", 1usize << 20, |n| {
                    (1024..=(16 << 20)).contains(n)
                })?;
                let timeout = take_duration(&mut opts, "timeout", Duration::from_secs(30))?;
                no_leftovers(opts, "http")?;
                Ok(Self::Http(HttpConfig {
                    url: base.to_owned(),
                    authorization,
                    batch_records,
                    batch_bytes,
                    timeout,
                }))
            }
            other => Err(format!(
                "destination scheme {other:?} is not one of file, syslog+tcp, syslog+tls, http, https"
            )),
        }
    }

    /// A short description for logs and status: never includes credentials.
    pub fn describe(&self) -> String {
        match self {
            Self::Files(f) => format!("files in {}", f.dir.display()),
            Self::Syslog(s) => format!(
                "syslog over {} to {}:{}",
                if s.tls { "TLS" } else { "TCP" },
                s.host,
                s.port
            ),
            Self::Http(h) => match reqwest::Url::parse(&h.url) {
                Ok(mut u) => {
                    let _ = u.set_password(None);
                    let _ = u.set_username("");
                    u.set_query(None);
                    format!("HTTP NDJSON to {u}")
                }
                Err(_) => "HTTP NDJSON".into(),
            },
        }
    }
}

fn split_host_port(s: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.contains(':') => Some((h.to_owned(), p.parse().ok()?)),
        None if !s.is_empty() => Some((s.to_owned(), default_port)),
        _ => None,
    }
}

impl LogGroups {
    /// Parses the declared groups; `data_dir` holds the file sets of groups without a
    /// destination.
    pub fn parse(entries: &[String], data_dir: &Path) -> Result<Self, String> {
        let mut groups = BTreeMap::new();
        for entry in entries {
            let (arn, dest) = match entry.split_once('=') {
                Some((a, d)) => (a.trim(), Some(d.trim())),
                None => (entry.trim(), None),
            };
            let arn = normal_group_arn(arn);
            let name = group_name(arn)
                .filter(|n| valid_group_name(n))
                .ok_or_else(|| format!("{arn:?} is not a log group ARN (arn:aws:logs:REGION:ACCOUNT:log-group:NAME)"))?;
            let mut default_dir = data_dir.join("log-groups");
            for part in name
                .split('/')
                .filter(|p| !p.is_empty() && *p != "." && *p != "..")
            {
                default_dir.push(part);
            }
            let destination = Destination::parse(dest, default_dir)
                .map_err(|e| format!("log group {arn}: {e}"))?;
            if groups.insert(arn.to_owned(), destination).is_some() {
                return Err(format!("log group {arn} is declared twice"));
            }
        }
        Ok(Self { groups })
    }

    /// The destination of a group (its ARN with or without `:*`).
    pub fn get(&self, arn: &str) -> Option<&Destination> {
        self.groups.get(normal_group_arn(arn))
    }

    pub fn contains(&self, arn: &str) -> bool {
        self.get(arn).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Group ARNs and destinations, for the console.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Destination)> {
        self.groups.iter().map(|(a, d)| (a.as_str(), d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: &str = "arn:aws:logs:us-east-1:123456789012:log-group:";

    fn one(entry: &str) -> Result<Destination, String> {
        let groups = LogGroups::parse(&[entry.to_owned()], Path::new("/data"))?;
        let (_, d) = groups.iter().next().expect("one group");
        Ok(d.clone())
    }

    #[test]
    fn destinations_parse_with_their_defaults_and_options() {
        assert_eq!(
            one(&format!("{G}aws/cloudtrail/../audit:*")).expect("plain"),
            Destination::Files(FileSetConfig {
                dir: PathBuf::from("/data/log-groups/aws/cloudtrail/audit"),
                max_bytes: 64 << 20,
                max_age: Duration::from_secs(3600),
                max_files: 0,
            })
        );
        assert_eq!(
            one(&format!(
                "{G}a=file:///var/log/ot%20x#max_bytes=4096&max_age=2s&max_files=3"
            ))
            .expect("files"),
            Destination::Files(FileSetConfig {
                dir: PathBuf::from("/var/log/ot x"),
                max_bytes: 4096,
                max_age: Duration::from_secs(2),
                max_files: 3,
            })
        );
        assert_eq!(
            one(&format!(
                "{G}a=syslog+tls://siem.example#ca_file=/etc/ca.pem&hostname=h1"
            ))
            .expect("tls"),
            Destination::Syslog(SyslogConfig {
                host: "siem.example".into(),
                port: 6514,
                tls: true,
                ca_file: Some(PathBuf::from("/etc/ca.pem")),
                server_name: None,
                hostname: "h1".into(),
                app_name: "cloudtrail".into(),
            })
        );
        let Destination::Syslog(s) = one(&format!("{G}a=syslog+tcp://[::1]:1514")).expect("tcp")
        else {
            panic!("not syslog")
        };
        assert_eq!((s.host.as_str(), s.port, s.tls), ("::1", 1514, false));
        assert_eq!(
            one(&format!(
                "{G}a=https://u:p@collector.example/in?token=1#authorization=Splunk%20abc&batch_records=500"
            ))
            .expect("http"),
            Destination::Http(HttpConfig {
                url: "https://u:p@collector.example/in?token=1".into(),
                authorization: Some("Splunk abc".into()),
                batch_records: 500,
                batch_bytes: 1 << 20,
                timeout: Duration::from_secs(30),
            })
        );
        assert_eq!(
            one(&format!("{G}a=https://u:p@collector.example/in?token=1"))
                .expect("http")
                .describe(),
            "HTTP NDJSON to https://collector.example/in"
        );
    }

    #[test]
    fn bad_declarations_say_what_is_wrong() {
        for (entry, want) in [
            ("arn:aws:s3:::b", "is not a log group ARN"),
            (&format!("{G}bad name"), "is not a log group ARN"),
            (&format!("{G}a=ftp://x"), "scheme \"ftp\""),
            (&format!("{G}a=file://relative"), "absolute path"),
            (&format!("{G}a=file:///d#max_bytes=10"), "max_bytes=10"),
            (&format!("{G}a=file:///d#max_age=soon"), "max_age=soon"),
            (
                &format!("{G}a=file:///d#colour=red"),
                "no option \"colour\"",
            ),
            (
                &format!("{G}a=syslog+tcp://h:99999"),
                "no valid host and port",
            ),
            (
                &format!("{G}a=syslog+tcp://h#ca_file=/x"),
                "syslog+tls only",
            ),
            (&format!("{G}a=syslog+tls://h/path"), "only host and port"),
            (
                &format!("{G}a=https://h/#batch_records=0"),
                "batch_records=0",
            ),
            (&format!("{G}a=/var/log"), "has no scheme"),
        ] {
            let e = LogGroups::parse(&[entry.to_owned()], Path::new("/d")).expect_err(entry);
            assert!(e.contains(want), "{entry}: {e}");
        }
        let twice = [format!("{G}a"), format!("{G}a:*=file:///x")];
        let e = LogGroups::parse(&twice, Path::new("/d")).expect_err("twice");
        assert!(e.contains("declared twice"), "{e}");
    }

    #[test]
    fn lookups_ignore_the_star_suffix() {
        let groups = LogGroups::parse(&[format!("{G}a:*")], Path::new("/d")).expect("parse");
        assert!(groups.contains(&format!("{G}a")));
        assert!(groups.contains(&format!("{G}a:*")));
        assert!(!groups.contains(&format!("{G}b")));
    }
}
