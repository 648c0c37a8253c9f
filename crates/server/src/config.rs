//! Settings, in one struct. Each setting has one name in TOML and, upper-cased with the
//! `OPENTRAIL_` prefix, in the environment (`history_retention` ⇔ `OPENTRAIL_HISTORY_RETENTION`).
//! Precedence: built-in defaults < TOML file (`--config`) < environment < command-line flags.
//! Durations are written like `500ms`, `1s`, `5m`, `1h`, `90d`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Everything `opentrail serve` can be told.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the event log, the history index and everything else live. Default `./opentrail-data`.
    pub data_dir: PathBuf,
    /// Address to listen on. Default `127.0.0.1:7433`.
    pub listen: String,
    /// The default account (12 digits): events without `recipientAccountId` belong to it, and
    /// unsigned calls act as its root. Default `123456789012`.
    pub account_id: String,
    /// The default region, used when a call carries no SigV4 credential scope. Default `us-east-1`.
    pub region: String,
    /// How long events stay in event history. Default 90 days.
    pub history_retention: Duration,
    /// Size at which the event log starts a new segment. Default 128 MiB.
    pub log_segment_bytes: u64,
    /// How often retention (expired history days, passed log segments) runs. Default 1 minute.
    pub maintenance_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./opentrail-data"),
            listen: "127.0.0.1:7433".to_owned(),
            account_id: "123456789012".to_owned(),
            region: "us-east-1".to_owned(),
            history_retention: Duration::from_secs(90 * 86_400),
            log_segment_bytes: 128 * 1024 * 1024,
            maintenance_interval: Duration::from_secs(60),
        }
    }
}

/// A setting that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("setting {name}: {message}")]
    Invalid { name: String, message: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    account_id: Option<String>,
    region: Option<String>,
    history_retention: Option<String>,
    log_segment_bytes: Option<u64>,
    maintenance_interval: Option<String>,
}

fn invalid(name: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name: name.to_owned(),
        message: message.into(),
    }
}

fn duration(name: &str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s.trim())
        .map_err(|e| invalid(name, format!("{s:?} is not a duration like 5m or 90d: {e}")))
}

impl Settings {
    /// Builds settings from the defaults, an optional TOML file and the environment given.
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut s = Settings::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let f: FileSettings = toml::from_str(&text).map_err(|e| ConfigError::Toml {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            if let Some(v) = f.data_dir {
                s.data_dir = v;
            }
            if let Some(v) = f.listen {
                s.listen = v;
            }
            if let Some(v) = f.account_id {
                s.account_id = v;
            }
            if let Some(v) = f.region {
                s.region = v;
            }
            if let Some(v) = f.history_retention {
                s.history_retention = duration("history_retention", &v)?;
            }
            if let Some(v) = f.log_segment_bytes {
                s.log_segment_bytes = v;
            }
            if let Some(v) = f.maintenance_interval {
                s.maintenance_interval = duration("maintenance_interval", &v)?;
            }
        }
        let get = |name: &str| {
            env.get(&format!("OPENTRAIL_{}", name.to_ascii_uppercase()))
                .filter(|v| !v.is_empty())
        };
        if let Some(v) = get("data_dir") {
            s.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("listen") {
            s.listen = v.clone();
        }
        if let Some(v) = get("account_id") {
            s.account_id = v.clone();
        }
        if let Some(v) = get("region") {
            s.region = v.clone();
        }
        if let Some(v) = get("history_retention") {
            s.history_retention = duration("OPENTRAIL_HISTORY_RETENTION", v)?;
        }
        if let Some(v) = get("log_segment_bytes") {
            s.log_segment_bytes = v.parse().map_err(|_| {
                invalid(
                    "OPENTRAIL_LOG_SEGMENT_BYTES",
                    "must be a whole number of bytes",
                )
            })?;
        }
        if let Some(v) = get("maintenance_interval") {
            s.maintenance_interval = duration("OPENTRAIL_MAINTENANCE_INTERVAL", v)?;
        }
        Ok(s)
    }

    /// Checks the settings hang together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !opentrail_model::ingest::is_valid_account(&self.account_id) {
            return Err(invalid(
                "account_id",
                format!("{:?} is not a 12-digit account id", self.account_id),
            ));
        }
        if !opentrail_model::ingest::is_valid_region(&self.region) {
            return Err(invalid(
                "region",
                format!("{:?} is not a region name", self.region),
            ));
        }
        if self.history_retention < Duration::from_secs(60) {
            return Err(invalid("history_retention", "must be at least 1m"));
        }
        if self.log_segment_bytes < 4096 {
            return Err(invalid("log_segment_bytes", "must be at least 4096"));
        }
        if self.maintenance_interval.is_zero() {
            return Err(invalid("maintenance_interval", "must be more than zero"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_file_then_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "region = \"eu-west-1\"\nhistory_retention = \"30d\"\naccount_id = \"111111111111\"\n",
        )
        .expect("write");
        let env: HashMap<String, String> =
            [("OPENTRAIL_ACCOUNT_ID".to_owned(), "222222222222".to_owned())]
                .into_iter()
                .collect();
        let s = Settings::load(Some(&file), &env).expect("load");
        assert_eq!(s.region, "eu-west-1");
        assert_eq!(s.account_id, "222222222222");
        assert_eq!(s.history_retention, Duration::from_secs(30 * 86_400));
        assert_eq!(s.listen, "127.0.0.1:7433");
        s.validate().expect("valid");
    }

    #[test]
    fn bad_settings_are_named() {
        let env: HashMap<String, String> = [(
            "OPENTRAIL_HISTORY_RETENTION".to_owned(),
            "forever".to_owned(),
        )]
        .into_iter()
        .collect();
        let e = Settings::load(None, &env).expect_err("bad duration");
        assert!(e.to_string().contains("OPENTRAIL_HISTORY_RETENTION"), "{e}");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "regoin = \"x\"\n").expect("write");
        assert!(matches!(
            Settings::load(Some(&file), &HashMap::new()),
            Err(ConfigError::Toml { .. })
        ));
        let s = Settings {
            account_id: "12".into(),
            ..Settings::default()
        };
        assert!(s.validate().is_err());
    }
}
