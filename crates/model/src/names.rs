//! Naming rules of CloudTrail resources (reference §2.1): trail names, trail ARNs, S3 bucket names,
//! SNS topic names. Each check returns a message that says what is wrong, in the words CloudTrail
//! (and moto, which copies it) uses where they are known.

/// A parsed trail ARN: `arn:<partition>:cloudtrail:<region>:<account>:trail/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrailArn {
    pub partition: String,
    pub region: String,
    pub account: String,
    pub name: String,
}

impl TrailArn {
    pub fn new(region: &str, account: &str, name: &str) -> Self {
        Self {
            partition: "aws".into(),
            region: region.into(),
            account: account.into(),
            name: name.into(),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.splitn(6, ':');
        let (arn, partition, service, region, account, resource) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        let name = resource.strip_prefix("trail/")?;
        let ok = arn == "arn"
            && !partition.is_empty()
            && service == "cloudtrail"
            && crate::ingest::is_valid_region(region)
            && crate::ingest::is_valid_account(account)
            && check_trail_name(name).is_ok();
        ok.then(|| Self {
            partition: partition.into(),
            region: region.into(),
            account: account.into(),
            name: name.into(),
        })
    }
}

impl std::fmt::Display for TrailArn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "arn:{}:cloudtrail:{}:{}:trail/{}",
            self.partition, self.region, self.account, self.name
        )
    }
}

fn looks_like_ipv4(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 4
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|c| c.is_ascii_digit()))
}

/// Trail name rules: 3–128 of letters, digits, `.`, `_`, `-`; starts and ends with a letter or
/// digit; no two special characters in a row; not shaped like an IPv4 address.
pub fn check_trail_name(name: &str) -> Result<(), String> {
    let len = name.chars().count();
    if len < 3 {
        return Err(format!(
            "Trail name too short. Minimum allowed length: 3 characters. Specified name length: {len} characters."
        ));
    }
    if len > 128 {
        return Err(format!(
            "Trail name too long. Maximum allowed length: 128 characters. Specified name length: {len} characters."
        ));
    }
    let special = |c: u8| matches!(c, b'.' | b'_' | b'-');
    let b = name.as_bytes();
    if !b.iter().all(|&c| c.is_ascii_alphanumeric() || special(c)) {
        return Err("Trail name or ARN can only contain uppercase letters, lowercase letters, numbers, periods (.), hyphens (-), and underscores (_).".into());
    }
    if !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return Err("Trail name must start and end with a letter or number.".into());
    }
    if b.windows(2).any(|w| special(w[0]) && special(w[1])) {
        return Err("Trail name cannot contain consecutive special characters.".into());
    }
    if looks_like_ipv4(name) {
        return Err("Trail name cannot be formatted as an IP address.".into());
    }
    Ok(())
}

/// S3 bucket naming rules: 3–63 of lowercase letters, digits, `.` and `-`; every label starts and
/// ends with a letter or digit (so no `..`, `-.`, `.-`, or trailing `-`); not shaped like an IP.
pub fn check_bucket_name(name: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("Bucket name {name:?} is not valid: {why}."));
    if name.len() < 3 || name.len() > 63 {
        return bad("it must be 3 to 63 characters long");
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
    {
        return bad("it may contain only lowercase letters, digits, periods and hyphens");
    }
    for label in name.split('.') {
        let lb = label.as_bytes();
        if lb.is_empty()
            || !lb[0].is_ascii_alphanumeric()
            || !lb[lb.len() - 1].is_ascii_alphanumeric()
        {
            return bad("each period-separated label must start and end with a letter or digit");
        }
    }
    if looks_like_ipv4(name) {
        return bad("it must not be formatted as an IP address");
    }
    Ok(())
}

/// SNS topic names: 1–256 of letters, digits, `_` and `-`.
pub fn is_valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trail_names() {
        for ok in ["abc", "My.Trail_1", "a-b.c_d", &"a".repeat(128), "1.2.3"] {
            assert!(check_trail_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            &"a".repeat(129),
            "-abc",
            "abc-",
            "my--trail",
            "my-_trail",
            "my trail",
            "tráil",
            "192.168.5.4",
        ] {
            assert!(check_trail_name(bad).is_err(), "{bad}");
        }
        assert!(
            check_trail_name("ab")
                .expect_err("short")
                .contains("Specified name length: 2")
        );
    }

    #[test]
    fn trail_arns() {
        let arn = TrailArn::parse("arn:aws:cloudtrail:us-east-2:123456789012:trail/MyTrail")
            .expect("valid");
        assert_eq!(arn, TrailArn::new("us-east-2", "123456789012", "MyTrail"));
        assert_eq!(
            arn.to_string(),
            "arn:aws:cloudtrail:us-east-2:123456789012:trail/MyTrail"
        );
        for bad in [
            "arn:aws:cloudtrail:us-east-2:1234:trail/MyTrail",
            "arn:aws:s3:us-east-2:123456789012:trail/MyTrail",
            "arn:aws:cloudtrail:us-east-2:123456789012:channel/x",
            "arn:aws:cloudtrail:us-east-2:123456789012:trail/a",
            "arn:aws:cloudtrail",
        ] {
            assert_eq!(TrailArn::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn bucket_names() {
        for ok in ["abc", "my-bucket", "my.bucket.1", "a1b"] {
            assert!(check_bucket_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "My-Bucket",
            "my_bucket",
            "my-bucket-",
            "my..bucket",
            "my-.bucket",
            "my.-bucket",
            ".abc",
            "192.168.1.1",
            &"a".repeat(64),
        ] {
            assert!(check_bucket_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topic_names() {
        assert!(is_valid_topic_name("my_topic-1"));
        assert!(!is_valid_topic_name("my.topic"));
        assert!(!is_valid_topic_name(""));
    }
}
