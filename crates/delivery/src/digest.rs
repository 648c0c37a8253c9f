//! Log file integrity: the pieces of CloudTrail's digest files that must match the AWS CLI's
//! validator to the byte — signing keys (RSA-2048, PKCS#1 v1.5 with SHA-256), key fingerprints
//! (MD5 of the PKCS#1 DER public key), the string to sign, digest object keys and the digest
//! document itself.
//!
//! This module is pure apart from key generation's randomness; writing digests on a schedule is
//! the digest worker's job.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{self, UnparsedPublicKey};
use md5::{Digest, Md5};
use serde::Serialize;

/// `digestSignatureAlgorithm`, and the `signature-algorithm` object metadata.
pub const SIGNATURE_ALGORITHM: &str = "SHA256withRSA";
/// `hashAlgorithm` / `previousDigestHashAlgorithm`.
pub const HASH_ALGORITHM: &str = "SHA-256";

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Bytes of lowercase or uppercase hex; `None` if it is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Lowercase hex SHA-256 (log files and digests are hashed uncompressed).
pub fn sha256_hex(data: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

/// A public key's fingerprint as CloudTrail shows it: lowercase hex MD5 of the PKCS#1 DER bytes
/// that ListPublicKeys returns.
pub fn fingerprint(public_pkcs1_der: &[u8]) -> String {
    hex(&Md5::digest(public_pkcs1_der))
}

/// Why a key could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("RSA key generation failed")]
    Generate,
    #[error("the private key is not a PKCS#8 RSA key: {0}")]
    Rejected(String),
    #[error("signing failed")]
    Sign,
}

/// One region's signing key.
pub struct SigningKey {
    pair: KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new RSA-2048 key.
    pub fn generate() -> Result<Self, KeyError> {
        Ok(Self {
            pair: KeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyError::Generate)?,
        })
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        Ok(Self {
            pair: KeyPair::from_pkcs8(der).map_err(|e| KeyError::Rejected(e.to_string()))?,
        })
    }

    /// The private key as PKCS#8 DER (to be encrypted before it is stored).
    pub fn to_pkcs8(&self) -> Result<Vec<u8>, KeyError> {
        self.pair
            .as_der()
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| KeyError::Sign)
    }

    /// The public key as DER PKCS#1 `RSAPublicKey` (what ListPublicKeys returns in `Value`).
    pub fn public_der(&self) -> Vec<u8> {
        use aws_lc_rs::signature::KeyPair as _;
        self.pair.public_key().as_ref().to_vec()
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public_der())
    }

    /// Lowercase hex RSASSA-PKCS1-v1_5 SHA-256 signature of `message`.
    pub fn sign_hex(&self, message: &[u8]) -> Result<String, KeyError> {
        let mut sig = vec![0u8; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message,
                &mut sig,
            )
            .map_err(|_| KeyError::Sign)?;
        Ok(hex(&sig))
    }
}

/// Whether `signature_hex` is a valid SHA256withRSA signature of `message` under the PKCS#1 DER
/// public key.
pub fn verify_hex(public_pkcs1_der: &[u8], message: &[u8], signature_hex: &str) -> bool {
    let Some(sig) = unhex(signature_hex) else {
        return false;
    };
    UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, public_pkcs1_der)
        .verify(message, &sig)
        .is_ok()
}

/// The string a digest's signature covers:
/// `digestEndTime \n bucket/key \n sha256(uncompressed digest) \n previous signature or "null"`.
pub fn string_to_sign(
    digest_end_time: &str,
    bucket: &str,
    key: &str,
    digest_sha256_hex: &str,
    previous_signature: Option<&str>,
) -> String {
    format!(
        "{digest_end_time}\n{bucket}/{key}\n{digest_sha256_hex}\n{}",
        previous_signature.unwrap_or("null")
    )
}

/// Where a digest lives:
/// `[prefix/]AWSLogs/[o-org/]<acct>/CloudTrail-Digest/<source region>/YYYY/MM/DD/<acct>_CloudTrail-Digest_<source region>_<trail name>_<home region>_<YYYYMMDDTHHMMSSZ>.json.gz`,
/// dated by the digest's end time (second precision).
#[derive(Debug, Clone, Copy)]
pub struct DigestName<'a> {
    pub key_prefix: Option<&'a str>,
    pub org_id: Option<&'a str>,
    pub account: &'a str,
    pub source_region: &'a str,
    pub trail_name: &'a str,
    pub home_region: &'a str,
}

impl DigestName<'_> {
    pub fn key(&self, end_ms: i64) -> String {
        let t = jiff::Timestamp::from_millisecond(end_ms)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
            .to_zoned(jiff::tz::TimeZone::UTC);
        let mut key = String::new();
        if let Some(p) = self.key_prefix.filter(|p| !p.is_empty()) {
            key.push_str(p.trim_end_matches('/'));
            key.push('/');
        }
        key.push_str("AWSLogs/");
        if let Some(o) = self.org_id {
            key.push_str(o);
            key.push('/');
        }
        format!(
            "{key}{acct}/CloudTrail-Digest/{src}/{date}/{acct}_CloudTrail-Digest_{src}_{name}_{home}_{stamp}.json.gz",
            acct = self.account,
            src = self.source_region,
            date = t.strftime("%Y/%m/%d"),
            name = self.trail_name,
            home = self.home_region,
            stamp = t.strftime("%Y%m%dT%H%M%SZ"),
        )
    }
}

/// One log file a digest vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DigestLogFile {
    pub s3_bucket: String,
    pub s3_object: String,
    pub hash_value: String,
    pub hash_algorithm: String,
    pub newest_event_time: Option<String>,
    pub oldest_event_time: Option<String>,
}

/// A digest file's JSON, members in CloudTrail's order; absent values are written as `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DigestDocument {
    pub aws_account_id: String,
    pub digest_start_time: String,
    pub digest_end_time: String,
    #[serde(rename = "digestS3Bucket")]
    pub digest_s3_bucket: String,
    #[serde(rename = "digestS3Object")]
    pub digest_s3_object: String,
    pub digest_public_key_fingerprint: String,
    pub digest_signature_algorithm: String,
    pub newest_event_time: Option<String>,
    pub oldest_event_time: Option<String>,
    #[serde(rename = "previousDigestS3Bucket")]
    pub previous_digest_s3_bucket: Option<String>,
    #[serde(rename = "previousDigestS3Object")]
    pub previous_digest_s3_object: Option<String>,
    pub previous_digest_hash_value: Option<String>,
    pub previous_digest_hash_algorithm: Option<String>,
    pub previous_digest_signature: Option<String>,
    pub log_files: Vec<DigestLogFile>,
}

/// A digest ready to store: its uncompressed JSON and its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedDigest {
    pub json: Vec<u8>,
    pub sha256_hex: String,
    pub signature_hex: String,
}

impl DigestDocument {
    /// Serializes the document and signs exactly those bytes (§4.6 of the reference).
    pub fn sign(&self, key: &SigningKey) -> Result<SignedDigest, KeyError> {
        let json = serde_json::to_vec(self).map_err(|_| KeyError::Sign)?;
        let sha256_hex = sha256_hex(&json);
        let s = string_to_sign(
            &self.digest_end_time,
            &self.digest_s3_bucket,
            &self.digest_s3_object,
            &sha256_hex,
            self.previous_digest_signature.as_deref(),
        );
        let signature_hex = key.sign_hex(s.as_bytes())?;
        Ok(SignedDigest {
            json,
            sha256_hex,
            signature_hex,
        })
    }
}

/// Whether `der` is a PKCS#1 RSAPublicKey usable for SHA256withRSA (2048 to 8192 bits).
pub fn is_usable_public_key(public_pkcs1_der: &[u8]) -> bool {
    signature::ParsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, public_pkcs1_der)
        .is_ok()
}

/// What is wrong with a log file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFileFault {
    /// Not a gzip stream (or a damaged one).
    Format,
    /// Bytes after the end of the first gzip member.
    TrailingData,
}

/// Lowercase hex SHA-256 of the content of the single gzip member `gz` (streamed, never held
/// whole), as the AWS CLI's validator computes it.
pub fn hash_gzip_member(gz: &[u8]) -> Result<String, LogFileFault> {
    use std::io::Read;
    let mut dec = flate2::bufread::GzDecoder::new(gz);
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => ctx.update(&buf[..n]),
            Err(_) => return Err(LogFileFault::Format),
        }
    }
    if !dec.into_inner().is_empty() {
        return Err(LogFileFault::TrailingData);
    }
    Ok(hex(ctx.finish().as_ref()))
}

/// The content of the first gzip member of `gz` (a digest file).
pub fn gunzip_member(gz: &[u8]) -> Result<Vec<u8>, LogFileFault> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::bufread::GzDecoder::new(gz)
        .read_to_end(&mut out)
        .map_err(|_| LogFileFault::Format)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_members_hash_their_content_and_trailing_bytes_are_caught() {
        let plain = b"{\"Records\":[]}".repeat(1000);
        let mut gz = crate::files::gzip(&plain).expect("gzip");
        assert_eq!(hash_gzip_member(&gz), Ok(sha256_hex(&plain)));
        let mut two = gz.clone();
        two.extend_from_slice(&crate::files::gzip(b"x").expect("gzip"));
        assert_eq!(hash_gzip_member(&two), Err(LogFileFault::TrailingData));
        gz.push(0);
        assert_eq!(hash_gzip_member(&gz), Err(LogFileFault::TrailingData));
        assert_eq!(hash_gzip_member(b"not gzip"), Err(LogFileFault::Format));
        let mut cut = crate::files::gzip(&plain).expect("gzip");
        cut.truncate(cut.len() / 2);
        assert_eq!(hash_gzip_member(&cut), Err(LogFileFault::Format));
        assert!(!is_usable_public_key(b"junk"));
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/signing")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn text(name: &str) -> String {
        String::from_utf8(fixture(name))
            .expect("utf-8")
            .trim_end()
            .to_owned()
    }

    /// The fixture key, string and signature were made with OpenSSL
    /// (`openssl genpkey`, `openssl rsa -RSAPublicKey_out`, `openssl dgst -sha256 -sign`,
    /// `md5sum`); PKCS#1 v1.5 signatures are deterministic, so ours must equal OpenSSL's.
    #[test]
    fn signing_matches_openssl_vectors() {
        let key = SigningKey::from_pkcs8(&fixture("test-key.pk8.der")).expect("key");
        assert_eq!(key.public_der(), fixture("public.pkcs1.der"));
        assert_eq!(key.fingerprint(), text("fingerprint.txt"));
        let message = fixture("string-to-sign.txt");
        let sig = key.sign_hex(&message).expect("sign");
        assert_eq!(sig, text("signature.hex"));
        assert_eq!(sig.len(), 512);
        assert!(verify_hex(&key.public_der(), &message, &sig));
        let mut tampered = message.clone();
        tampered[0] ^= 1;
        assert!(!verify_hex(&key.public_der(), &tampered, &sig));
        assert!(!verify_hex(&key.public_der(), &message, "zz"));
        let other = SigningKey::generate().expect("generate");
        assert!(!verify_hex(&other.public_der(), &message, &sig));
        // A generated key survives its PKCS#8 round trip.
        let again = SigningKey::from_pkcs8(&other.to_pkcs8().expect("pkcs8")).expect("reload");
        assert_eq!(again.public_der(), other.public_der());
        assert!(
            other
                .public_der()
                .starts_with(&[0x30, 0x82, 0x01, 0x0a, 0x02, 0x82, 0x01, 0x01])
        );
    }

    #[test]
    fn string_to_sign_and_digest_key_follow_cloudtrail() {
        let key = "AWSLogs/111122223333/CloudTrail-Digest/us-east-1/2026/03/01/111122223333_CloudTrail-Digest_us-east-1_main_us-east-1_20260301T110007Z.json.gz";
        let s = string_to_sign(
            "2026-03-01T11:00:07Z",
            "ct-logs",
            key,
            &sha256_hex(br#"{"a":1}"#),
            None,
        );
        assert_eq!(s.as_bytes(), fixture("string-to-sign.txt"));
        let name = DigestName {
            key_prefix: None,
            org_id: None,
            account: "111122223333",
            source_region: "us-east-1",
            trail_name: "main",
            home_region: "us-east-1",
        };
        // 2026-03-01T11:00:07Z
        assert_eq!(name.key(1_772_362_807_000), key);
        assert_eq!(&key[key.len() - 24..key.len() - 8], "20260301T110007Z");
        let org = DigestName {
            key_prefix: Some("p/"),
            org_id: Some("o-aa11bb22cc33"),
            ..name
        };
        assert!(org.key(1_772_362_807_000).starts_with(
            "p/AWSLogs/o-aa11bb22cc33/111122223333/CloudTrail-Digest/us-east-1/2026/03/01/"
        ));
    }

    #[test]
    fn documents_keep_cloudtrails_member_order_and_nulls_and_sign_their_bytes() {
        let doc = DigestDocument {
            aws_account_id: "111122223333".into(),
            digest_start_time: "2026-03-01T10:00:07Z".into(),
            digest_end_time: "2026-03-01T11:00:07Z".into(),
            digest_s3_bucket: "ct-logs".into(),
            digest_s3_object: "AWSLogs/x.json.gz".into(),
            digest_public_key_fingerprint: "f".into(),
            digest_signature_algorithm: SIGNATURE_ALGORITHM.into(),
            newest_event_time: None,
            oldest_event_time: None,
            previous_digest_s3_bucket: None,
            previous_digest_s3_object: None,
            previous_digest_hash_value: None,
            previous_digest_hash_algorithm: None,
            previous_digest_signature: None,
            log_files: vec![],
        };
        let key = SigningKey::from_pkcs8(&fixture("test-key.pk8.der")).expect("key");
        let signed = doc.sign(&key).expect("sign");
        let text = String::from_utf8(signed.json.clone()).expect("utf-8");
        assert!(text.starts_with(
            r#"{"awsAccountId":"111122223333","digestStartTime":"2026-03-01T10:00:07Z","digestEndTime":"2026-03-01T11:00:07Z","digestS3Bucket":"ct-logs","digestS3Object":"AWSLogs/x.json.gz","digestPublicKeyFingerprint":"f","digestSignatureAlgorithm":"SHA256withRSA","newestEventTime":null"#
        ), "{text}");
        assert!(
            text.ends_with(r#""previousDigestSignature":null,"logFiles":[]}"#),
            "{text}"
        );
        assert_eq!(signed.sha256_hex, sha256_hex(&signed.json));
        let s = string_to_sign(
            &doc.digest_end_time,
            "ct-logs",
            "AWSLogs/x.json.gz",
            &signed.sha256_hex,
            None,
        );
        assert!(verify_hex(
            &key.public_der(),
            s.as_bytes(),
            &signed.signature_hex
        ));
        assert_eq!(unhex("0aFf"), Some(vec![0x0a, 0xff]));
        assert_eq!(unhex("abc"), None);
    }
}
