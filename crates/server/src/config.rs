//! Settings, in one struct. Each setting has one name in TOML and, upper-cased with the
//! `OPENTRAIL_` prefix, in the environment (`history_retention` ⇔ `OPENTRAIL_HISTORY_RETENTION`).
//! Precedence: built-in defaults < TOML file (`--config`) < environment < command-line flags.
//! Durations are written like `500ms`, `1s`, `5m`, `1h`, `90d`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use opentrail_delivery::{Organization, S3Target, Target, Topic, Topics};
use serde::Deserialize;

/// Everything `opentrail serve` can be told.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the event log, the history index and everything else live. Default `./opentrail-data`.
    pub data_dir: PathBuf,
    /// Address to listen on. Default `127.0.0.1:7433`.
    pub listen: String,
    /// The account (12 digits) this server's principals belong to; events without
    /// `recipientAccountId` belong to it too. Default `123456789012`.
    pub account_id: String,
    /// The home region of the server (calls address the region of their SigV4 credential
    /// scope). Default `us-east-1`.
    pub region: String,
    /// How long events stay in event history. Default 90 days.
    pub history_retention: Duration,
    /// Size at which the event log starts a new segment. Default 128 MiB.
    pub log_segment_bytes: u64,
    /// How often retention (expired history days, passed log segments) runs. Default 1 minute.
    pub maintenance_interval: Duration,
    /// Where the local bucket store keeps bucket NAME (as `<buckets_dir>/NAME/`). Default
    /// `<data_dir>/buckets`.
    pub buckets_dir: Option<PathBuf>,
    /// Trails per region and account (a multi-region trail counts in every region). Default 5.
    pub max_trails_per_region: usize,
    /// SNS topic names trails may notify (declared here until topics are managed). Default none.
    pub sns_topics: Vec<String>,
    /// KMS keys trails may use: key ids (UUIDs), or `alias/Name=<key id>`. Default none.
    pub kms_keys: Vec<String>,
    /// The CloudWatch Logs log groups trails may stream to, each `ARN` or `ARN=DESTINATION`:
    /// `file:///dir`, `syslog+tcp://host:port`, `syslog+tls://host:port` or an
    /// `http(s)://` collector URL, with options after `#` (see
    /// `opentrail_delivery::stream::groups`). Without a destination a group is a JSON-lines file
    /// set under `<data_dir>/log-groups/<name>/`. Default none.
    pub cloudwatch_log_groups: Vec<String>,
    /// The organization (`o-` id) the default account belongs to, if any.
    pub organization_id: Option<String>,
    /// The organization's management account.
    pub organization_management_account: Option<String>,
    /// The organization's member accounts (besides the management account).
    pub organization_members: Vec<String>,
    /// How often each trail's new events are gathered into log files. Default 5 minutes.
    pub delivery_interval: Duration,
    /// Longest wait between retries of a failing delivery or notification. Default 1 minute.
    pub delivery_max_backoff: Duration,
    /// An S3-compatible endpoint (`http(s)://host:port`) holding every bucket not configured
    /// on its own; when absent, buckets are local directories.
    pub s3_endpoint: Option<String>,
    /// Region to sign S3 requests for. Default `us-east-1`.
    pub s3_region: String,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
    /// `bucket.host` addressing instead of path-style `host/bucket`. Default false.
    pub s3_virtual_hosted_style: bool,
    /// Server-side encryption to ask of S3 stores on every write: `AES256`, `aws:kms` or
    /// `aws:kms:dsse`. Default none (the store's own default).
    pub s3_server_side_encryption: Option<String>,
    /// The store's KMS key id for `aws:kms` server-side encryption.
    pub s3_sse_kms_key_id: Option<String>,
    /// Buckets configured on their own (TOML `[buckets.NAME]` tables only).
    pub buckets: BTreeMap<String, BucketSettings>,
    /// Webhook subscribers of SNS topics: `topic=https://host/path` entries.
    pub sns_subscriptions: Vec<String>,
    /// The secret each topic signs its notifications with: `topic=secret` entries.
    pub sns_topic_secrets: Vec<String>,
    /// Length of a digest window for trails with log file validation. Default 1 hour.
    pub digest_interval: Duration,
    /// How long a region's digest signing key signs before a new one replaces it. Default
    /// 30 days.
    pub signing_key_rotation: Duration,
    /// The master key sealing the signing keys, as 64 hex digits (environment only:
    /// `OPENTRAIL_MASTER_KEY`). Takes precedence over `master_key_file`.
    pub master_key: Option<String>,
    /// A file holding the master key (64 hex digits). Default `<data_dir>/master.key`, created
    /// at first start when absent.
    pub master_key_file: Option<PathBuf>,
    /// The root user's access key (environment only: `OPENTRAIL_ROOT_ACCESS_KEY_ID` and
    /// `OPENTRAIL_ROOT_SECRET_ACCESS_KEY`). When unset, a root key is generated at first start
    /// and written to `<data_dir>/root-credentials.json` (mode 0600).
    pub root_access_key_id: Option<String>,
    pub root_secret_access_key: Option<String>,
    /// Serve without authentication: every call acts as the account's root. For benchmarks and
    /// local experiments only; refused unless listening on a loopback address. Default false.
    pub insecure_no_auth: bool,
    /// How eager Insights are: `low`, `medium` or `high`. Default `medium`.
    pub insights_sensitivity: opentrail_insights::Sensitivity,
    /// History an account and region need before any Insight is reported. Default 24 hours.
    pub insights_min_history: Duration,
    /// How long after a minute ends it is evaluated (late events of that minute still count).
    /// Default 5 seconds.
    pub insights_settle: Duration,
    /// When Insights are first enabled, look for anomalies in the whole stored history instead
    /// of from then on. Default false.
    pub insights_backfill: bool,
    /// How long a console sign-in lasts. Default 12 hours.
    pub console_session_ttl: Duration,
    /// The SMTP server email subscriptions are sent through; none means email subscribers
    /// cannot be reached (their messages retry and then become dead letters).
    pub smtp_host: Option<String>,
    /// Default 587.
    pub smtp_port: u16,
    /// `starttls` (default), `tls` (SMTPS) or `none`.
    pub smtp_tls: String,
    pub smtp_username: Option<String>,
    pub smtp_password: Option<String>,
    /// The sender address of alert emails. Default `opentrail@localhost`.
    pub smtp_from: String,
    /// A PEM file of CA certificates to trust for the SMTP server (besides the public roots).
    pub smtp_ca_file: Option<PathBuf>,
    /// Attempts to deliver an alert message before it becomes a dead letter. Default 8.
    pub alert_max_attempts: u32,
    /// Wait before the first retry of an alert message; doubles each time. Default 1 second.
    pub alert_retry_base: Duration,
    /// Longest wait between retries of an alert message. Default 5 minutes.
    pub alert_max_backoff: Duration,
}

/// Where one bucket lives, when it is not where the global settings put buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketSettings {
    /// A local directory that is this bucket.
    pub dir: Option<PathBuf>,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
    pub s3_virtual_hosted_style: Option<bool>,
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
            buckets_dir: None,
            max_trails_per_region: 5,
            sns_topics: Vec::new(),
            kms_keys: Vec::new(),
            cloudwatch_log_groups: Vec::new(),
            organization_id: None,
            organization_management_account: None,
            organization_members: Vec::new(),
            delivery_interval: Duration::from_secs(300),
            delivery_max_backoff: Duration::from_secs(60),
            s3_endpoint: None,
            s3_region: "us-east-1".to_owned(),
            s3_access_key_id: None,
            s3_secret_access_key: None,
            s3_virtual_hosted_style: false,
            s3_server_side_encryption: None,
            s3_sse_kms_key_id: None,
            buckets: BTreeMap::new(),
            sns_subscriptions: Vec::new(),
            sns_topic_secrets: Vec::new(),
            digest_interval: Duration::from_secs(3600),
            signing_key_rotation: Duration::from_secs(30 * 86_400),
            master_key: None,
            master_key_file: None,
            root_access_key_id: None,
            root_secret_access_key: None,
            insecure_no_auth: false,
            insights_sensitivity: opentrail_insights::Sensitivity::Medium,
            insights_min_history: Duration::from_secs(86_400),
            insights_settle: Duration::from_secs(5),
            insights_backfill: false,
            console_session_ttl: Duration::from_secs(12 * 3600),
            smtp_host: None,
            smtp_port: 587,
            smtp_tls: "starttls".to_owned(),
            smtp_username: None,
            smtp_password: None,
            smtp_from: "opentrail@localhost".to_owned(),
            smtp_ca_file: None,
            alert_max_attempts: 8,
            alert_retry_base: Duration::from_secs(1),
            alert_max_backoff: Duration::from_secs(300),
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
    buckets_dir: Option<PathBuf>,
    max_trails_per_region: Option<usize>,
    sns_topics: Option<Vec<String>>,
    kms_keys: Option<Vec<String>>,
    cloudwatch_log_groups: Option<Vec<String>>,
    organization_id: Option<String>,
    organization_management_account: Option<String>,
    organization_members: Option<Vec<String>>,
    delivery_interval: Option<String>,
    delivery_max_backoff: Option<String>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    s3_access_key_id: Option<String>,
    s3_secret_access_key: Option<String>,
    s3_virtual_hosted_style: Option<bool>,
    s3_server_side_encryption: Option<String>,
    s3_sse_kms_key_id: Option<String>,
    buckets: Option<BTreeMap<String, BucketSettings>>,
    sns_subscriptions: Option<Vec<String>>,
    sns_topic_secrets: Option<Vec<String>>,
    digest_interval: Option<String>,
    signing_key_rotation: Option<String>,
    master_key_file: Option<PathBuf>,
    insecure_no_auth: Option<bool>,
    insights_sensitivity: Option<String>,
    insights_min_history: Option<String>,
    insights_settle: Option<String>,
    smtp_host: Option<String>,
    smtp_port: Option<u16>,
    smtp_tls: Option<String>,
    smtp_username: Option<String>,
    smtp_password: Option<String>,
    smtp_from: Option<String>,
    smtp_ca_file: Option<PathBuf>,
    alert_max_attempts: Option<u32>,
    alert_retry_base: Option<String>,
    alert_max_backoff: Option<String>,
    console_session_ttl: Option<String>,
    insights_backfill: Option<bool>,
}

fn sensitivity(name: &str, s: &str) -> Result<opentrail_insights::Sensitivity, ConfigError> {
    opentrail_insights::Sensitivity::parse(s)
        .ok_or_else(|| invalid(name, format!("{s:?} is not low, medium or high")))
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
            s.buckets_dir = f.buckets_dir.or(s.buckets_dir);
            s.max_trails_per_region = f.max_trails_per_region.unwrap_or(s.max_trails_per_region);
            s.sns_topics = f.sns_topics.unwrap_or(s.sns_topics);
            s.kms_keys = f.kms_keys.unwrap_or(s.kms_keys);
            s.cloudwatch_log_groups = f.cloudwatch_log_groups.unwrap_or(s.cloudwatch_log_groups);
            s.organization_id = f.organization_id.or(s.organization_id);
            s.organization_management_account = f
                .organization_management_account
                .or(s.organization_management_account);
            s.organization_members = f.organization_members.unwrap_or(s.organization_members);
            if let Some(v) = f.delivery_interval {
                s.delivery_interval = duration("delivery_interval", &v)?;
            }
            if let Some(v) = f.delivery_max_backoff {
                s.delivery_max_backoff = duration("delivery_max_backoff", &v)?;
            }
            s.s3_endpoint = f.s3_endpoint.or(s.s3_endpoint);
            s.s3_region = f.s3_region.unwrap_or(s.s3_region);
            s.s3_access_key_id = f.s3_access_key_id.or(s.s3_access_key_id);
            s.s3_secret_access_key = f.s3_secret_access_key.or(s.s3_secret_access_key);
            s.s3_virtual_hosted_style = f
                .s3_virtual_hosted_style
                .unwrap_or(s.s3_virtual_hosted_style);
            s.s3_server_side_encryption =
                f.s3_server_side_encryption.or(s.s3_server_side_encryption);
            s.s3_sse_kms_key_id = f.s3_sse_kms_key_id.or(s.s3_sse_kms_key_id);
            s.buckets = f.buckets.unwrap_or(s.buckets);
            s.sns_subscriptions = f.sns_subscriptions.unwrap_or(s.sns_subscriptions);
            s.sns_topic_secrets = f.sns_topic_secrets.unwrap_or(s.sns_topic_secrets);
            if let Some(v) = f.digest_interval {
                s.digest_interval = duration("digest_interval", &v)?;
            }
            if let Some(v) = f.signing_key_rotation {
                s.signing_key_rotation = duration("signing_key_rotation", &v)?;
            }
            s.master_key_file = f.master_key_file.or(s.master_key_file);
            if let Some(v) = f.insecure_no_auth {
                s.insecure_no_auth = v;
            }
            if let Some(v) = f.insights_sensitivity {
                s.insights_sensitivity = sensitivity("insights_sensitivity", &v)?;
            }
            if let Some(v) = f.insights_min_history {
                s.insights_min_history = duration("insights_min_history", &v)?;
            }
            if let Some(v) = f.console_session_ttl {
                s.console_session_ttl = duration("console_session_ttl", &v)?;
            }
            if let Some(v) = f.insights_settle {
                s.insights_settle = duration("insights_settle", &v)?;
            }
            if let Some(v) = f.insights_backfill {
                s.insights_backfill = v;
            }
            s.smtp_host = f.smtp_host.or(s.smtp_host);
            s.smtp_port = f.smtp_port.unwrap_or(s.smtp_port);
            s.smtp_tls = f.smtp_tls.unwrap_or(s.smtp_tls);
            s.smtp_username = f.smtp_username.or(s.smtp_username);
            s.smtp_password = f.smtp_password.or(s.smtp_password);
            s.smtp_from = f.smtp_from.unwrap_or(s.smtp_from);
            s.smtp_ca_file = f.smtp_ca_file.or(s.smtp_ca_file);
            s.alert_max_attempts = f.alert_max_attempts.unwrap_or(s.alert_max_attempts);
            if let Some(v) = f.alert_retry_base {
                s.alert_retry_base = duration("alert_retry_base", &v)?;
            }
            if let Some(v) = f.alert_max_backoff {
                s.alert_max_backoff = duration("alert_max_backoff", &v)?;
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
        // Lists in the environment are comma-separated.
        let list = |v: &String| {
            v.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect()
        };
        if let Some(v) = get("buckets_dir") {
            s.buckets_dir = Some(PathBuf::from(v));
        }
        if let Some(v) = get("max_trails_per_region") {
            s.max_trails_per_region = v.parse().map_err(|_| {
                invalid("OPENTRAIL_MAX_TRAILS_PER_REGION", "must be a whole number")
            })?;
        }
        if let Some(v) = get("sns_topics") {
            s.sns_topics = list(v);
        }
        if let Some(v) = get("kms_keys") {
            s.kms_keys = list(v);
        }
        if let Some(v) = get("cloudwatch_log_groups") {
            s.cloudwatch_log_groups = list(v);
        }
        if let Some(v) = get("organization_id") {
            s.organization_id = Some(v.clone());
        }
        if let Some(v) = get("organization_management_account") {
            s.organization_management_account = Some(v.clone());
        }
        if let Some(v) = get("organization_members") {
            s.organization_members = list(v);
        }
        if let Some(v) = get("delivery_interval") {
            s.delivery_interval = duration("OPENTRAIL_DELIVERY_INTERVAL", v)?;
        }
        if let Some(v) = get("delivery_max_backoff") {
            s.delivery_max_backoff = duration("OPENTRAIL_DELIVERY_MAX_BACKOFF", v)?;
        }
        if let Some(v) = get("s3_endpoint") {
            s.s3_endpoint = Some(v.clone());
        }
        if let Some(v) = get("s3_region") {
            s.s3_region = v.clone();
        }
        if let Some(v) = get("s3_access_key_id") {
            s.s3_access_key_id = Some(v.clone());
        }
        if let Some(v) = get("s3_secret_access_key") {
            s.s3_secret_access_key = Some(v.clone());
        }
        if let Some(v) = get("s3_virtual_hosted_style") {
            s.s3_virtual_hosted_style = v.parse().map_err(|_| {
                invalid("OPENTRAIL_S3_VIRTUAL_HOSTED_STYLE", "must be true or false")
            })?;
        }
        if let Some(v) = get("s3_server_side_encryption") {
            s.s3_server_side_encryption = Some(v.clone());
        }
        if let Some(v) = get("s3_sse_kms_key_id") {
            s.s3_sse_kms_key_id = Some(v.clone());
        }
        if let Some(v) = get("sns_subscriptions") {
            s.sns_subscriptions = list(v);
        }
        if let Some(v) = get("sns_topic_secrets") {
            s.sns_topic_secrets = list(v);
        }
        if let Some(v) = get("digest_interval") {
            s.digest_interval = duration("OPENTRAIL_DIGEST_INTERVAL", v)?;
        }
        if let Some(v) = get("signing_key_rotation") {
            s.signing_key_rotation = duration("OPENTRAIL_SIGNING_KEY_ROTATION", v)?;
        }
        if let Some(v) = get("master_key") {
            s.master_key = Some(v.clone());
        }
        if let Some(v) = get("master_key_file") {
            s.master_key_file = Some(PathBuf::from(v));
        }
        if let Some(v) = get("root_access_key_id") {
            s.root_access_key_id = Some(v.clone());
        }
        if let Some(v) = get("root_secret_access_key") {
            s.root_secret_access_key = Some(v.clone());
        }
        if let Some(v) = get("insecure_no_auth") {
            s.insecure_no_auth = v
                .parse()
                .map_err(|_| invalid("OPENTRAIL_INSECURE_NO_AUTH", "must be true or false"))?;
        }
        if let Some(v) = get("insights_sensitivity") {
            s.insights_sensitivity = sensitivity("OPENTRAIL_INSIGHTS_SENSITIVITY", v)?;
        }
        if let Some(v) = get("insights_min_history") {
            s.insights_min_history = duration("OPENTRAIL_INSIGHTS_MIN_HISTORY", v)?;
        }
        if let Some(v) = get("console_session_ttl") {
            s.console_session_ttl = duration("OPENTRAIL_CONSOLE_SESSION_TTL", v)?;
        }
        if let Some(v) = get("insights_settle") {
            s.insights_settle = duration("OPENTRAIL_INSIGHTS_SETTLE", v)?;
        }
        if let Some(v) = get("insights_backfill") {
            s.insights_backfill = v
                .parse()
                .map_err(|_| invalid("OPENTRAIL_INSIGHTS_BACKFILL", "must be true or false"))?;
        }
        if let Some(v) = get("smtp_host") {
            s.smtp_host = Some(v.clone());
        }
        if let Some(v) = get("smtp_port") {
            s.smtp_port = v
                .parse()
                .map_err(|_| invalid("OPENTRAIL_SMTP_PORT", "must be a port number"))?;
        }
        if let Some(v) = get("smtp_tls") {
            s.smtp_tls = v.clone();
        }
        if let Some(v) = get("smtp_username") {
            s.smtp_username = Some(v.clone());
        }
        if let Some(v) = get("smtp_password") {
            s.smtp_password = Some(v.clone());
        }
        if let Some(v) = get("smtp_from") {
            s.smtp_from = v.clone();
        }
        if let Some(v) = get("smtp_ca_file") {
            s.smtp_ca_file = Some(PathBuf::from(v));
        }
        if let Some(v) = get("alert_max_attempts") {
            s.alert_max_attempts = v
                .parse()
                .map_err(|_| invalid("OPENTRAIL_ALERT_MAX_ATTEMPTS", "must be a number"))?;
        }
        if let Some(v) = get("alert_retry_base") {
            s.alert_retry_base = duration("OPENTRAIL_ALERT_RETRY_BASE", v)?;
        }
        if let Some(v) = get("alert_max_backoff") {
            s.alert_max_backoff = duration("OPENTRAIL_ALERT_MAX_BACKOFF", v)?;
        }
        Ok(s)
    }

    /// The master key that seals the signing keys: `master_key`, else the key file (created
    /// when it is the default one and absent). Blocking.
    pub fn load_master_key(
        &self,
    ) -> Result<opentrail_delivery::MasterKey, opentrail_delivery::KeyringError> {
        if let Some(k) = &self.master_key {
            return opentrail_delivery::MasterKey::from_hex(k);
        }
        match &self.master_key_file {
            Some(path) => opentrail_delivery::MasterKey::load_or_create(path, false),
            None => opentrail_delivery::MasterKey::load_or_create(
                &self.data_dir.join("master.key"),
                true,
            ),
        }
    }

    /// Where buckets live: the default for every bucket, and the buckets configured on their own.
    pub fn bucket_targets(&self) -> (Target, HashMap<String, Target>) {
        let root = self
            .buckets_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("buckets"));
        let default = match &self.s3_endpoint {
            Some(endpoint) => Target::S3(S3Target {
                endpoint: Some(endpoint.clone()),
                region: self.s3_region.clone(),
                access_key_id: self.s3_access_key_id.clone(),
                secret_access_key: self.s3_secret_access_key.clone(),
                virtual_hosted_style: self.s3_virtual_hosted_style,
                server_side_encryption: self.s3_server_side_encryption.clone(),
                sse_kms_key_id: self.s3_sse_kms_key_id.clone(),
            }),
            None => Target::LocalRoot(root),
        };
        let overrides = self
            .buckets
            .iter()
            .map(|(name, b)| {
                let target = match (&b.dir, &b.s3_endpoint) {
                    (Some(dir), _) => Target::LocalDir(dir.clone()),
                    (None, endpoint) => Target::S3(S3Target {
                        endpoint: endpoint.clone().or_else(|| self.s3_endpoint.clone()),
                        region: b
                            .s3_region
                            .clone()
                            .unwrap_or_else(|| self.s3_region.clone()),
                        access_key_id: b
                            .s3_access_key_id
                            .clone()
                            .or_else(|| self.s3_access_key_id.clone()),
                        secret_access_key: b
                            .s3_secret_access_key
                            .clone()
                            .or_else(|| self.s3_secret_access_key.clone()),
                        virtual_hosted_style: b
                            .s3_virtual_hosted_style
                            .unwrap_or(self.s3_virtual_hosted_style),
                        server_side_encryption: self.s3_server_side_encryption.clone(),
                        sse_kms_key_id: self.s3_sse_kms_key_id.clone(),
                    }),
                };
                (name.clone(), target)
            })
            .collect();
        (default, overrides)
    }

    /// The declared topics with their secrets and webhook subscribers.
    pub fn topics(&self) -> Topics {
        let pairs = |list: &[String]| -> Vec<(String, String)> {
            list.iter()
                .filter_map(|e| e.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect()
        };
        let secrets: HashMap<String, String> = pairs(&self.sns_topic_secrets).into_iter().collect();
        let subs = pairs(&self.sns_subscriptions);
        Topics::new(self.sns_topics.iter().map(|name| {
            Topic {
                name: name.clone(),
                secret: secrets.get(name).cloned().unwrap_or_default(),
                endpoints: subs
                    .iter()
                    .filter(|(t, url)| {
                        t == name && (url.starts_with("http://") || url.starts_with("https://"))
                    })
                    .map(|(_, url)| url.clone())
                    .collect(),
            }
        }))
    }

    /// The declared log groups and their destinations.
    pub fn log_groups(&self) -> Result<opentrail_delivery::LogGroups, ConfigError> {
        opentrail_delivery::LogGroups::parse(&self.cloudwatch_log_groups, &self.data_dir)
            .map_err(|e| invalid("cloudwatch_log_groups", e))
    }

    /// The organization the default account belongs to, if one is configured.
    pub fn organization(&self) -> Option<Organization> {
        Some(Organization {
            id: self.organization_id.clone()?,
            management_account: self.organization_management_account.clone()?,
            members: self.organization_members.clone(),
        })
    }

    /// Where bucket NAME lives in the local bucket store.
    pub fn bucket_path(&self, name: &str) -> PathBuf {
        self.buckets_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("buckets"))
            .join(name)
    }

    /// The SMTP server alert emails go through, if one is configured.
    pub fn smtp(&self) -> Option<opentrail_alerts::SmtpSettings> {
        Some(opentrail_alerts::SmtpSettings {
            host: self.smtp_host.clone()?,
            port: self.smtp_port,
            tls: opentrail_alerts::SmtpTls::parse(&self.smtp_tls)?,
            username: self.smtp_username.clone(),
            password: self.smtp_password.clone(),
            from: self.smtp_from.clone(),
            ca_file: self.smtp_ca_file.clone(),
        })
    }

    /// Topic subscriptions the settings declare: (topic, endpoint) pairs, any protocol.
    pub fn declared_subscriptions(&self) -> Vec<(String, String)> {
        self.sns_subscriptions
            .iter()
            .filter_map(|e| e.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect()
    }

    /// Checks the settings hang together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.log_groups()?;
        if opentrail_alerts::SmtpTls::parse(&self.smtp_tls).is_none() {
            return Err(invalid(
                "smtp_tls",
                format!("{:?} is not one of starttls, tls, none", self.smtp_tls),
            ));
        }
        if self.smtp_username.is_some() != self.smtp_password.is_some() {
            return Err(invalid(
                "smtp_username",
                "smtp_username and smtp_password go together",
            ));
        }
        if self.smtp_host.is_some() && !opentrail_alerts::send::is_address(&self.smtp_from) {
            return Err(invalid(
                "smtp_from",
                format!("{:?} is not an email address", self.smtp_from),
            ));
        }
        if !(1..=100).contains(&self.alert_max_attempts) {
            return Err(invalid("alert_max_attempts", "must be 1 to 100"));
        }
        if self.alert_retry_base < Duration::from_millis(100) {
            return Err(invalid("alert_retry_base", "must be at least 100ms"));
        }
        if self.alert_max_backoff < self.alert_retry_base {
            return Err(invalid(
                "alert_max_backoff",
                "must be at least alert_retry_base",
            ));
        }
        if let Some(v) = &self.s3_server_side_encryption
            && !opentrail_delivery::buckets::SSE_VALUES.contains(&v.as_str())
        {
            return Err(invalid(
                "s3_server_side_encryption",
                format!("{v:?} is not one of AES256, aws:kms, aws:kms:dsse"),
            ));
        }
        if self.s3_sse_kms_key_id.is_some()
            && !self
                .s3_server_side_encryption
                .as_deref()
                .is_some_and(|v| v.starts_with("aws:kms"))
        {
            return Err(invalid(
                "s3_sse_kms_key_id",
                "needs s3_server_side_encryption = aws:kms or aws:kms:dsse",
            ));
        }
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
        if self.max_trails_per_region == 0 {
            return Err(invalid("max_trails_per_region", "must be at least 1"));
        }
        if let Some(id) = &self.organization_id {
            if !id.starts_with("o-")
                || id.len() < 12
                || !id[2..]
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            {
                return Err(invalid(
                    "organization_id",
                    format!("{id:?} is not an organization id like o-exampleorgid"),
                ));
            }
            match &self.organization_management_account {
                Some(m) if opentrail_model::ingest::is_valid_account(m) => {}
                _ => {
                    return Err(invalid(
                        "organization_management_account",
                        "a 12-digit account is required with organization_id",
                    ));
                }
            }
        }
        for m in &self.organization_members {
            if !opentrail_model::ingest::is_valid_account(m) {
                return Err(invalid(
                    "organization_members",
                    format!("{m:?} is not a 12-digit account id"),
                ));
            }
        }
        if self.maintenance_interval.is_zero() {
            return Err(invalid("maintenance_interval", "must be more than zero"));
        }
        if self.console_session_ttl < Duration::from_secs(60)
            || self.console_session_ttl > Duration::from_secs(7 * 86_400)
        {
            return Err(invalid("console_session_ttl", "must be from 1m to 7d"));
        }
        if self.insights_settle > Duration::from_secs(600) {
            return Err(invalid("insights_settle", "must be at most 10m"));
        }
        if self.delivery_interval < Duration::from_millis(100) {
            return Err(invalid("delivery_interval", "must be at least 100ms"));
        }
        if self.delivery_max_backoff < Duration::from_millis(100) {
            return Err(invalid("delivery_max_backoff", "must be at least 100ms"));
        }
        if self.digest_interval < Duration::from_secs(1) {
            return Err(invalid("digest_interval", "must be at least 1s"));
        }
        if self.signing_key_rotation < Duration::from_secs(1) {
            return Err(invalid("signing_key_rotation", "must be at least 1s"));
        }
        if let Some(k) = &self.master_key
            && opentrail_delivery::MasterKey::from_hex(k).is_err()
        {
            return Err(invalid(
                "OPENTRAIL_MASTER_KEY",
                "must be 64 hex digits (256 bits)",
            ));
        }
        match (&self.root_access_key_id, &self.root_secret_access_key) {
            (None, None) => {}
            (Some(id), Some(secret)) => {
                if !(16..=128).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    return Err(invalid(
                        "OPENTRAIL_ROOT_ACCESS_KEY_ID",
                        "must be 16 to 128 letters and digits (like AKIAIOSFODNN7EXAMPLE)",
                    ));
                }
                if !(20..=128).contains(&secret.len())
                    || !secret.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err(invalid(
                        "OPENTRAIL_ROOT_SECRET_ACCESS_KEY",
                        "must be 20 to 128 printable characters without spaces",
                    ));
                }
            }
            _ => {
                return Err(invalid(
                    "OPENTRAIL_ROOT_ACCESS_KEY_ID",
                    "set both OPENTRAIL_ROOT_ACCESS_KEY_ID and OPENTRAIL_ROOT_SECRET_ACCESS_KEY, or neither",
                ));
            }
        }
        if self.insecure_no_auth {
            let loopback = self
                .listen
                .parse::<std::net::SocketAddr>()
                .map(|a| a.ip().is_loopback())
                .unwrap_or(false)
                || self.listen.starts_with("localhost:");
            if !loopback {
                return Err(invalid(
                    "insecure_no_auth",
                    format!("is allowed only on a loopback address, not {}", self.listen),
                ));
            }
        }
        let is_url = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        let endpoints = std::iter::once(self.s3_endpoint.as_ref())
            .chain(self.buckets.values().map(|b| b.s3_endpoint.as_ref()))
            .flatten();
        for e in endpoints {
            if !is_url(e) {
                return Err(invalid(
                    "s3_endpoint",
                    format!("{e:?} is not an http:// or https:// URL"),
                ));
            }
        }
        for (name, b) in &self.buckets {
            if b.dir.is_some() && b.s3_endpoint.is_some() {
                return Err(invalid(
                    "buckets",
                    format!("bucket {name} has both a local dir and an s3_endpoint"),
                ));
            }
        }
        for (list, name) in [
            (&self.sns_subscriptions, "sns_subscriptions"),
            (&self.sns_topic_secrets, "sns_topic_secrets"),
        ] {
            for entry in list {
                let Some((topic, value)) = entry.split_once('=') else {
                    return Err(invalid(name, format!("{entry:?} is not topic=value")));
                };
                if !self.sns_topics.iter().any(|t| t == topic.trim()) {
                    return Err(invalid(
                        name,
                        format!("topic {topic:?} is not declared in sns_topics"),
                    ));
                }
                if name == "sns_subscriptions"
                    && opentrail_alerts::Protocol::of_endpoint(value.trim()).is_none()
                {
                    return Err(invalid(
                        name,
                        format!(
                            "{value:?} is not an http:// or https:// URL, a mailto: address or a nats:// subject URL"
                        ),
                    ));
                }
            }
        }
        for t in self.topics().all() {
            if !t.endpoints.is_empty() && t.secret.is_empty() {
                return Err(invalid(
                    "sns_topic_secrets",
                    format!(
                        "topic {} has subscribers but no secret to sign its notifications with",
                        t.name
                    ),
                ));
            }
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
