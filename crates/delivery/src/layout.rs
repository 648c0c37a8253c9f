//! CloudTrail's object key layout for log files, and the deterministic 16-character part that
//! makes a replayed delivery write the same key.

use aws_lc_rs::digest;

/// Which folder a file goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileKind {
    /// Management and data events: `CloudTrail/`.
    Log,
    /// Insights events: `CloudTrail-Insight/`.
    Insight,
}

impl FileKind {
    pub fn folder(self) -> &'static str {
        match self {
            Self::Log => "CloudTrail",
            Self::Insight => "CloudTrail-Insight",
        }
    }
}

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// What a log file's unique part is derived from: the same inputs always give the same 16
/// alphanumeric characters, different inputs practically never do.
#[derive(Debug, Clone, Copy)]
pub struct FileIdentity<'a> {
    pub trail_arn: &'a str,
    pub account: &'a str,
    pub region: &'a str,
    pub kind: FileKind,
    /// The plan's log sequence range `[from, to)`.
    pub from: u64,
    pub to: u64,
    /// Which part of the (account, region, kind) group, when it had to be split.
    pub part: u32,
}

impl FileIdentity<'_> {
    pub fn unique_string(&self) -> String {
        let mut ctx = digest::Context::new(&digest::SHA256);
        for field in [
            self.trail_arn,
            self.account,
            self.region,
            self.kind.folder(),
        ] {
            ctx.update(field.as_bytes());
            ctx.update(b"\n");
        }
        ctx.update(&self.from.to_be_bytes());
        ctx.update(&self.to.to_be_bytes());
        ctx.update(&self.part.to_be_bytes());
        let d = ctx.finish();
        d.as_ref()
            .iter()
            .take(16)
            .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
            .collect()
    }
}

/// The key prefix of one account's files of one kind in one region, up to and including the
/// region: `[prefix/]AWSLogs/[o-org/]<account>/<CloudTrail|CloudTrail-Insight>/<region>/`.
pub fn region_prefix(
    key_prefix: Option<&str>,
    org_id: Option<&str>,
    account: &str,
    kind: FileKind,
    region: &str,
) -> String {
    let mut key = String::new();
    if let Some(p) = key_prefix.filter(|p| !p.is_empty()) {
        key.push_str(p.trim_end_matches('/'));
        key.push('/');
    }
    key.push_str("AWSLogs/");
    if let Some(o) = org_id {
        key.push_str(o);
        key.push('/');
    }
    key.push_str(account);
    key.push('/');
    key.push_str(kind.folder());
    key.push('/');
    key.push_str(region);
    key.push('/');
    key
}

/// The full object key of a log file delivered at `time_ms` (UTC; minute precision):
/// `<region prefix>YYYY/MM/DD/<account>_<CloudTrail|CloudTrail-Insight>_<region>_<YYYYMMDD>T<HHmm>Z_<unique>.json.gz`.
pub fn object_key(
    key_prefix: Option<&str>,
    org_id: Option<&str>,
    id: &FileIdentity<'_>,
    time_ms: i64,
) -> String {
    let t = jiff::Timestamp::from_millisecond(time_ms)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_zoned(jiff::tz::TimeZone::UTC);
    format!(
        "{}{:04}/{:02}/{:02}/{}_{}_{}_{:04}{:02}{:02}T{:02}{:02}Z_{}.json.gz",
        region_prefix(key_prefix, org_id, id.account, id.kind, id.region),
        t.year(),
        t.month(),
        t.day(),
        id.account,
        id.kind.folder(),
        id.region,
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        id.unique_string(),
    )
}

/// The delivery time (epoch milliseconds of the minute) in a log file's name, if the name has
/// CloudTrail's shape.
pub fn key_time_ms(key: &str) -> Option<i64> {
    let name = key.rsplit('/').next()?.strip_suffix(".json.gz")?;
    let mut parts = name.rsplit('_');
    let unique = parts.next()?;
    let stamp = parts.next()?;
    if unique.len() != 16 || !unique.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let stamp = stamp.strip_suffix('Z')?;
    let (date, hm) = stamp.split_once('T')?;
    if date.len() != 8 || hm.len() != 4 {
        return None;
    }
    let num = |s: &str| s.parse::<i16>().ok();
    let d = jiff::civil::date(num(&date[..4])?, num(&date[4..6])? as i8, 1)
        .checked_add(jiff::Span::new().days(i64::from(num(&date[6..8])?) - 1))
        .ok()?;
    let dt = d.at(num(&hm[..2])? as i8, num(&hm[2..])? as i8, 0, 0);
    let ts = dt.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp();
    Some(ts.as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(part: u32) -> FileIdentity<'static> {
        FileIdentity {
            trail_arn: "arn:aws:cloudtrail:us-east-1:111122223333:trail/t",
            account: "111122223333",
            region: "us-east-2",
            kind: FileKind::Log,
            from: 10,
            to: 20,
            part,
        }
    }

    #[test]
    fn keys_follow_cloudtrail_layout() {
        // 2015-08-01T02:10:37Z
        let t = 1_438_395_037_000;
        let key = object_key(Some("logs/"), None, &id(0), t);
        let unique = id(0).unique_string();
        assert_eq!(
            key,
            format!(
                "logs/AWSLogs/111122223333/CloudTrail/us-east-2/2015/08/01/111122223333_CloudTrail_us-east-2_20150801T0210Z_{unique}.json.gz"
            )
        );
        let mut insight = id(0);
        insight.kind = FileKind::Insight;
        let key = object_key(None, Some("o-abcdefghij"), &insight, t);
        assert!(key.starts_with(
            "AWSLogs/o-abcdefghij/111122223333/CloudTrail-Insight/us-east-2/2015/08/01/111122223333_CloudTrail-Insight_us-east-2_20150801T0210Z_"
        ), "{key}");
        assert_eq!(key_time_ms(&key), Some(1_438_395_000_000));
        assert_eq!(key_time_ms("AWSLogs/x/not-a-log.json.gz"), None);
    }

    #[test]
    fn unique_part_is_deterministic_and_distinct() {
        let a = id(0).unique_string();
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(a, id(0).unique_string());
        assert_ne!(a, id(1).unique_string());
        let mut other = id(0);
        other.to = 21;
        assert_ne!(a, other.unique_string());
    }
}
