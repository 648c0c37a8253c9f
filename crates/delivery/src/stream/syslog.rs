//! RFC 5424 syslog over TCP or TLS, octet-counted (RFC 6587 §3.4.1, RFC 5425).
//!
//! One message per record:
//! `<110>1 EVENTTIME HOSTNAME APPNAME - EVENTNAME [opentrail@32473 trail="…" seq="…" eventID="…"] RECORD`
//! — facility 13 (log audit), severity 6 (informational); MSGID is the event name (cut to 32
//! characters); the structured data carries the log sequence number and event ID, which
//! receivers can deduplicate on; MSG is the record's JSON exactly as stored.
//!
//! Syslog has no acknowledgements. A batch counts as sent once it is written and flushed and
//! the receiver has not closed the connection; the connection is checked before each batch too,
//! so a receiver that went away while the stream was idle gets a new connection, not lost
//! writes. What a receiver took in but did not keep before it crashed is beyond the protocol.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::groups::SyslogConfig;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// `log audit` (13) × 8 + informational (6).
const PRI: u8 = 110;
/// The enterprise number of the structured-data ID (RFC 5612's number for examples and private
/// use; OpenTrail has none of its own).
pub const SD_ID: &str = "opentrail@32473";

trait Connection: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Connection for T {}

/// A syslog receiver and the connection to it, made when needed.
pub struct Syslog {
    config: SyslogConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    conn: Option<Box<dyn Connection>>,
}

fn sd_escape(v: &str, out: &mut Vec<u8>) {
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push(b'\\');
        }
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }
}

/// The parts of a record a message header needs.
#[derive(serde::Deserialize)]
struct Head {
    #[serde(rename = "eventTime")]
    event_time: Option<String>,
    #[serde(rename = "eventName")]
    event_name: Option<String>,
    #[serde(rename = "eventID")]
    event_id: Option<String>,
}

/// Appends one framed message for a record to `out`.
pub fn frame(config: &SyslogConfig, trail: &str, seq: u64, json: &[u8], out: &mut Vec<u8>) {
    let head: Head = serde_json::from_slice(json).unwrap_or(Head {
        event_time: None,
        event_name: None,
        event_id: None,
    });
    let printable = |s: &str, max: usize| -> String {
        let v: String = s
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(max)
            .collect();
        if v.is_empty() { "-".into() } else { v }
    };
    let time = head
        .event_time
        .as_deref()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        // RFC 5424 allows at most six fractional digits.
        .and_then(|t| jiff::Timestamp::from_microsecond(t.as_microsecond()).ok())
        .map_or_else(|| "-".to_owned(), |t| t.to_string());
    let mut msg = format!(
        "<{PRI}>1 {time} {} {} - {} [{SD_ID} trail=\"",
        config.hostname,
        config.app_name,
        printable(head.event_name.as_deref().unwrap_or(""), 32),
    )
    .into_bytes();
    sd_escape(trail, &mut msg);
    msg.extend_from_slice(format!("\" seq=\"{seq}\" eventID=\"").as_bytes());
    sd_escape(head.event_id.as_deref().unwrap_or(""), &mut msg);
    msg.extend_from_slice(b"\"] ");
    msg.extend_from_slice(json);
    out.extend_from_slice(format!("{} ", msg.len()).as_bytes());
    out.extend_from_slice(&msg);
}

fn tls_config(config: &SyslogConfig) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &config.ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("ca_file {} holds no certificate", path.display()));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

impl Syslog {
    pub fn new(config: SyslogConfig) -> Result<Self, String> {
        let tls = if config.tls {
            Some(tls_config(&config)?)
        } else {
            None
        };
        Ok(Self {
            config,
            tls,
            conn: None,
        })
    }

    pub fn config(&self) -> &SyslogConfig {
        &self.config
    }

    async fn connect(&self) -> Result<Box<dyn Connection>, String> {
        let addr = (self.config.host.as_str(), self.config.port);
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                format!(
                    "connecting to {}:{} timed out",
                    self.config.host, self.config.port
                )
            })?
            .map_err(|e| {
                format!(
                    "connecting to {}:{}: {e}",
                    self.config.host, self.config.port
                )
            })?;
        tcp.set_nodelay(true).ok();
        let Some(tls) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let name = self
            .config
            .server_name
            .clone()
            .unwrap_or_else(|| self.config.host.clone());
        let server_name = rustls::pki_types::ServerName::try_from(name.clone())
            .map_err(|e| format!("TLS server name {name:?}: {e}"))?;
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_rustls::TlsConnector::from(Arc::clone(tls)).connect(server_name, tcp),
        )
        .await
        .map_err(|_| format!("TLS handshake with {name} timed out"))?
        .map_err(|e| format!("TLS handshake with {name}: {e}"))?;
        Ok(Box::new(stream))
    }

    /// Whether the receiver has closed (or broken) the connection. Receivers send nothing, so
    /// anything readable at once is an end.
    fn closed_by_peer(conn: &mut Box<dyn Connection>) -> bool {
        let mut buf = [0u8; 256];
        match conn.read(&mut buf).now_or_never() {
            None => false,
            Some(Ok(0) | Err(_)) => true,
            Some(Ok(_)) => false,
        }
    }

    /// Sends framed messages; on any failure the connection is dropped (the next call makes a
    /// new one) and the batch is to be sent again.
    pub async fn send(&mut self, frames: &[u8]) -> Result<(), String> {
        if let Some(c) = self.conn.as_mut()
            && Self::closed_by_peer(c)
        {
            self.conn = None;
        }
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.connect().await?,
        };
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            conn.write_all(frames).await?;
            conn.flush().await
        })
        .await;
        match written {
            Err(_) => return Err("writing to the syslog receiver timed out".into()),
            Ok(Err(e)) => return Err(format!("writing to the syslog receiver: {e}")),
            Ok(Ok(())) => {}
        }
        if Self::closed_by_peer(&mut conn) {
            return Err("the syslog receiver closed the connection".into());
        }
        self.conn = Some(conn);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SyslogConfig {
        SyslogConfig {
            host: "h".into(),
            port: 514,
            tls: false,
            ca_file: None,
            server_name: None,
            hostname: "ot1".into(),
            app_name: "cloudtrail".into(),
        }
    }

    #[test]
    fn a_record_becomes_one_octet_counted_rfc5424_message() {
        let json = br#"{"eventVersion":"1.11","eventTime":"2026-11-21T10:15:00Z","eventName":"StopLogging","eventID":"a\"b]c"}"#;
        let mut out = Vec::new();
        frame(&config(), "main", 42, json, &mut out);
        let text = String::from_utf8(out).expect("utf8");
        let (len, msg) = text.split_once(' ').expect("length prefix");
        assert_eq!(len.parse::<usize>().expect("number"), msg.len());
        assert_eq!(
            msg,
            format!(
                "<110>1 2026-11-21T10:15:00Z ot1 cloudtrail - StopLogging [opentrail@32473 trail=\"main\" seq=\"42\" eventID=\"a\\\"b\\]c\"] {}",
                std::str::from_utf8(json).expect("utf8")
            )
        );
    }

    #[test]
    fn missing_or_odd_header_fields_become_nil_values() {
        let mut out = Vec::new();
        frame(&config(), "t", 1, br#"{"eventName":"a b\u00e9"}"#, &mut out);
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("<110>1 - ot1 cloudtrail - ab ["), "{text}");
        assert!(text.contains("eventID=\"\"]"), "{text}");
    }
}
