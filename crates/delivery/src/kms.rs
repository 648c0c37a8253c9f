//! The key service: symmetric customer keys with KMS-style ids, ARNs and aliases, their states
//! (enabled, disabled, pending deletion), rotation of key material (every earlier material kept
//! for decryption), and the envelope encryption trails use for their files.
//!
//! Everything lives in one small document, the [`Keystore`] (`"format": 1`), stored whole in the
//! catalog with a version check; key material is sealed (AES-256-GCM) under the master key, bound
//! to the key id and material number. [`KeyService`] holds the current document, serializes
//! changes, and answers reads from memory.
//!
//! A ciphertext blob (what `Encrypt` and `GenerateDataKey` return and `Decrypt` takes) is
//! `1 ‖ key uuid (16) ‖ material number (u16, big-endian) ‖ nonce (12) ‖ AES-256-GCM ciphertext
//! ‖ tag (16)`, with the key's ARN and the encryption context as associated data, so a blob
//! cannot be decrypted under another context and names the material that made it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use opentrail_catalog::{Catalog, CatalogError};
use serde::{Deserialize, Serialize};

use crate::keys::MasterKey;

/// The version of the stored keystore document.
pub const KEYSTORE_FORMAT: u32 = 1;
/// Most keys one server keeps (the document is stored whole).
pub const MAX_KEYS: usize = 1000;
/// Most aliases one key may have.
pub const MAX_ALIASES_PER_KEY: usize = 50;
/// Most tags on a key (KMS's limit).
pub const MAX_TAGS: usize = 50;
/// Largest plaintext `Encrypt` takes (KMS's limit).
pub const MAX_PLAINTEXT: usize = 4096;
/// Rotation period when rotation is on and no period is given (KMS's default).
pub const DEFAULT_ROTATION_DAYS: u32 = 365;
/// Waiting period of a deletion when none is given (KMS's default).
pub const DEFAULT_DELETION_DAYS: u32 = 30;
/// Most materials a key accumulates (on-demand rotations are limited as in KMS).
pub const MAX_MATERIALS: usize = 25;
const DAY_MS: i64 = 86_400_000;
const BLOB_V1: u8 = 1;
const BLOB_HEADER: usize = 1 + 16 + 2 + NONCE_LEN;

/// Errors of the key service, each with the KMS exception it is reported as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KmsError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Disabled(String),
    #[error("{0}")]
    InvalidState(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidAliasName(String),
    #[error("{0}")]
    InvalidArn(String),
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    InvalidCiphertext(String),
    #[error("{0}")]
    IncorrectKey(String),
    #[error("{0}")]
    LimitExceeded(String),
    #[error("{0}")]
    Internal(String),
}

impl KmsError {
    /// The KMS exception name.
    pub fn exception(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "NotFoundException",
            Self::Disabled(_) => "DisabledException",
            Self::InvalidState(_) => "KMSInvalidStateException",
            Self::AlreadyExists(_) => "AlreadyExistsException",
            Self::InvalidAliasName(_) => "InvalidAliasNameException",
            Self::InvalidArn(_) => "InvalidArnException",
            Self::Validation(_) => "ValidationException",
            Self::InvalidCiphertext(_) => "InvalidCiphertextException",
            Self::IncorrectKey(_) => "IncorrectKeyException",
            Self::LimitExceeded(_) => "LimitExceededException",
            Self::Internal(_) => "KMSInternalException",
        }
    }

    /// A client error (4xx) rather than a service failure.
    pub fn is_client_error(&self) -> bool {
        !matches!(self, Self::Internal(_))
    }
}

impl From<CatalogError> for KmsError {
    fn from(e: CatalogError) -> Self {
        Self::Internal(format!("keystore storage: {e}"))
    }
}

/// The state of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    Enabled,
    Disabled,
    PendingDeletion,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "Enabled",
            Self::Disabled => "Disabled",
            Self::PendingDeletion => "PendingDeletion",
        }
    }
}

/// One generation of a key's material, sealed under the master key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Material {
    /// Base64 of the sealed 32 bytes.
    pub sealed: String,
    pub created_ms: i64,
}

/// A tag on a key, in KMS's member names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyTag {
    #[serde(rename = "TagKey")]
    pub key: String,
    #[serde(rename = "TagValue")]
    pub value: String,
}

/// A customer key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    pub id: String,
    pub region: String,
    pub description: String,
    pub created_ms: i64,
    pub state: KeyState,
    /// When a key pending deletion is deleted.
    pub deletion_ms: Option<i64>,
    /// Days between automatic rotations; `None` when automatic rotation is off.
    pub rotation_days: Option<u32>,
    /// Every material the key has had, oldest first; the last one encrypts.
    pub materials: Vec<Material>,
    pub tags: Vec<KeyTag>,
}

impl Key {
    /// The key's ARN.
    pub fn arn(&self, account: &str) -> String {
        format!("arn:aws:kms:{}:{account}:key/{}", self.region, self.id)
    }

    /// When the key's material is next rotated automatically, if rotation is on.
    pub fn next_rotation_ms(&self) -> Option<i64> {
        let days = i64::from(self.rotation_days?);
        let newest = self
            .materials
            .last()
            .map_or(self.created_ms, |m| m.created_ms);
        Some(newest + days * DAY_MS)
    }

    /// Usable for cryptographic operations: enabled. The error says why not.
    pub fn usable(&self, account: &str) -> Result<(), KmsError> {
        match self.state {
            KeyState::Enabled => Ok(()),
            KeyState::Disabled => Err(KmsError::Disabled(format!(
                "{} is disabled.",
                self.arn(account)
            ))),
            KeyState::PendingDeletion => Err(KmsError::InvalidState(format!(
                "{} is pending deletion.",
                self.arn(account)
            ))),
        }
    }
}

/// An alias of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alias {
    /// `alias/Name`.
    pub name: String,
    pub region: String,
    pub key_id: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl Alias {
    pub fn arn(&self, account: &str) -> String {
        format!("arn:aws:kms:{}:{account}:{}", self.region, self.name)
    }
}

/// The stored document: every key and alias.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keystore {
    pub format: u32,
    pub keys: BTreeMap<String, Key>,
    pub aliases: Vec<Alias>,
}

impl Default for Keystore {
    fn default() -> Self {
        Self {
            format: KEYSTORE_FORMAT,
            keys: BTreeMap::new(),
            aliases: Vec::new(),
        }
    }
}

/// How a request names a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// A key id (UUID), with the region and account of its ARN when given as one.
    Id {
        id: String,
        region: Option<String>,
        account: Option<String>,
    },
    /// `alias/Name`, with the region and account of its ARN when given as one.
    Alias {
        name: String,
        region: Option<String>,
        account: Option<String>,
    },
}

fn is_uuid(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok_and(|u| u.hyphenated().to_string() == s)
}

/// Checks an alias name: `alias/` and 1–250 more characters of `[A-Za-z0-9/_-]`, not beginning
/// with `alias/aws/` (reserved for AWS managed keys).
pub fn check_alias_name(name: &str) -> Result<(), KmsError> {
    let Some(rest) = name.strip_prefix("alias/") else {
        return Err(KmsError::Validation(format!(
            "Alias must start with the prefix \"alias/\": {name}"
        )));
    };
    if rest.is_empty() || name.len() > 256 {
        return Err(KmsError::Validation(format!(
            "Alias name must be 1 to 256 characters long, including \"alias/\": {name}"
        )));
    }
    if !rest
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-'))
    {
        return Err(KmsError::Validation(format!(
            "Alias name may contain only letters, digits, '/', '_' and '-': {name}"
        )));
    }
    if rest.starts_with("aws/") {
        return Err(KmsError::InvalidAliasName(format!(
            "Alias names that begin with \"alias/aws/\" are reserved for AWS managed keys: {name}"
        )));
    }
    Ok(())
}

impl KeyRef {
    /// Parses any accepted form: key id, key ARN, `alias/Name`, alias ARN.
    pub fn parse(s: &str) -> Result<Self, KmsError> {
        if s.is_empty() || s.len() > 2048 {
            return Err(KmsError::Validation(
                "KeyId must be 1 to 2048 characters long.".into(),
            ));
        }
        if let Some(arn) = s.strip_prefix("arn:") {
            let parts: Vec<&str> = arn.splitn(5, ':').collect();
            if let [partition, "kms", region, account, resource] = parts[..]
                && partition.starts_with("aws")
                && !region.is_empty()
                && account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
            {
                if let Some(id) = resource.strip_prefix("key/")
                    && is_uuid(id)
                {
                    return Ok(Self::Id {
                        id: id.to_owned(),
                        region: Some(region.to_owned()),
                        account: Some(account.to_owned()),
                    });
                }
                if resource.starts_with("alias/") && check_alias_name(resource).is_ok() {
                    return Ok(Self::Alias {
                        name: resource.to_owned(),
                        region: Some(region.to_owned()),
                        account: Some(account.to_owned()),
                    });
                }
            }
            return Err(KmsError::InvalidArn(format!(
                "{s} is not a valid KMS key or alias ARN."
            )));
        }
        if s.starts_with("alias/") {
            check_alias_name(s).map_err(|e| KmsError::NotFound(e.to_string()))?;
            return Ok(Self::Alias {
                name: s.to_owned(),
                region: None,
                account: None,
            });
        }
        if is_uuid(s) {
            return Ok(Self::Id {
                id: s.to_owned(),
                region: None,
                account: None,
            });
        }
        Err(KmsError::NotFound(format!("Invalid keyId '{s}'")))
    }
}

fn random<const N: usize>() -> Result<[u8; N], KmsError> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| KmsError::Internal("no randomness".into()))?;
    Ok(b)
}

fn material_aad(key_id: &str, n: usize) -> String {
    format!("kms-material:{key_id}:{n}")
}

/// The associated data of a blob: the key's ARN and the encryption context, canonical (sorted).
fn blob_aad(key_arn: &str, context: &BTreeMap<String, String>) -> Vec<u8> {
    let mut out = key_arn.as_bytes().to_vec();
    for (k, v) in context {
        out.push(0);
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
    }
    out
}

fn aead(material: &[u8]) -> Result<LessSafeKey, KmsError> {
    Ok(LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, material)
            .map_err(|_| KmsError::Internal("key material has the wrong length".into()))?,
    ))
}

impl Keystore {
    /// Finds the key `r` names, in `region` for bare ids and aliases. An ARN of another
    /// account or region names no key here.
    pub fn resolve(&self, account: &str, region: &str, r: &KeyRef) -> Result<&Key, KmsError> {
        let elsewhere = |a: &Option<String>, rg: &Option<String>| {
            a.as_deref().is_some_and(|a| a != account) || rg.as_deref().is_some_and(|r| r != region)
        };
        match r {
            KeyRef::Id {
                id,
                region: rg,
                account: a,
            } => {
                let found = self
                    .keys
                    .get(id)
                    .filter(|k| !elsewhere(a, rg) && k.region == region);
                found.ok_or_else(|| {
                    KmsError::NotFound(format!(
                        "Key 'arn:aws:kms:{}:{}:key/{id}' does not exist",
                        rg.as_deref().unwrap_or(region),
                        a.as_deref().unwrap_or(account)
                    ))
                })
            }
            KeyRef::Alias {
                name,
                region: rg,
                account: a,
            } => {
                let alias = (!elsewhere(a, rg))
                    .then(|| {
                        self.aliases
                            .iter()
                            .find(|x| x.name == *name && x.region == region)
                    })
                    .flatten();
                alias.and_then(|x| self.keys.get(&x.key_id)).ok_or_else(|| {
                    KmsError::NotFound(format!(
                        "Alias arn:aws:kms:{}:{}:{name} is not found.",
                        rg.as_deref().unwrap_or(region),
                        a.as_deref().unwrap_or(account)
                    ))
                })
            }
        }
    }

    fn key_mut(&mut self, id: &str) -> Result<&mut Key, KmsError> {
        self.keys
            .get_mut(id)
            .ok_or_else(|| KmsError::NotFound(format!("Key '{id}' does not exist")))
    }

    fn new_material(
        master: &MasterKey,
        key_id: &str,
        n: usize,
        now_ms: i64,
    ) -> Result<Material, KmsError> {
        let bytes = random::<32>()?;
        let sealed = master
            .seal(&material_aad(key_id, n), &bytes)
            .map_err(|e| KmsError::Internal(e.to_string()))?;
        Ok(Material {
            sealed: B64.encode(sealed),
            created_ms: now_ms,
        })
    }

    fn material(master: &MasterKey, key: &Key, n: usize) -> Result<Vec<u8>, KmsError> {
        let m = key.materials.get(n).ok_or_else(|| {
            KmsError::InvalidCiphertext(
                "The ciphertext refers to key material that does not exist.".into(),
            )
        })?;
        let sealed = B64
            .decode(&m.sealed)
            .map_err(|_| KmsError::Internal(format!("key {} material {n} is damaged", key.id)))?;
        master
            .open(&material_aad(&key.id, n), &sealed)
            .map_err(|e| KmsError::Internal(e.to_string()))
    }

    /// Creates a key in `region` with fresh material; automatic rotation on, yearly.
    pub fn create_key(
        &mut self,
        master: &MasterKey,
        region: &str,
        description: &str,
        tags: Vec<KeyTag>,
        now_ms: i64,
    ) -> Result<&Key, KmsError> {
        self.create_key_with_id(
            master,
            &uuid::Uuid::new_v4().to_string(),
            region,
            description,
            tags,
            now_ms,
        )
    }

    /// Creates a key with a given id (keys declared in the settings keep their ids).
    pub fn create_key_with_id(
        &mut self,
        master: &MasterKey,
        id: &str,
        region: &str,
        description: &str,
        tags: Vec<KeyTag>,
        now_ms: i64,
    ) -> Result<&Key, KmsError> {
        if self.keys.len() >= MAX_KEYS {
            return Err(KmsError::LimitExceeded(format!(
                "This server keeps at most {MAX_KEYS} keys."
            )));
        }
        if !is_uuid(id) {
            return Err(KmsError::Validation(format!(
                "{id} is not a key id (a UUID)"
            )));
        }
        if self.keys.contains_key(id) {
            return Err(KmsError::AlreadyExists(format!("Key {id} already exists")));
        }
        if description.len() > 8192 {
            return Err(KmsError::Validation(
                "Description must be at most 8192 characters long.".into(),
            ));
        }
        check_tags(&tags)?;
        let material = Self::new_material(master, id, 0, now_ms)?;
        let key = Key {
            id: id.to_owned(),
            region: region.to_owned(),
            description: description.to_owned(),
            created_ms: now_ms,
            state: KeyState::Enabled,
            deletion_ms: None,
            rotation_days: Some(DEFAULT_ROTATION_DAYS),
            materials: vec![material],
            tags,
        };
        Ok(self.keys.entry(id.to_owned()).or_insert(key))
    }

    /// Enables or disables a key; a key pending deletion can be neither.
    pub fn set_enabled(&mut self, id: &str, enabled: bool, account: &str) -> Result<(), KmsError> {
        let key = self.key_mut(id)?;
        if key.state == KeyState::PendingDeletion {
            return Err(KmsError::InvalidState(format!(
                "{} is pending deletion.",
                key.arn(account)
            )));
        }
        key.state = if enabled {
            KeyState::Enabled
        } else {
            KeyState::Disabled
        };
        Ok(())
    }

    /// Schedules a key's deletion in `days` (7–30) days. Returns when it will be deleted.
    pub fn schedule_deletion(
        &mut self,
        id: &str,
        days: u32,
        now_ms: i64,
        account: &str,
    ) -> Result<i64, KmsError> {
        if !(7..=30).contains(&days) {
            return Err(KmsError::Validation(format!(
                "PendingWindowInDays must be between 7 and 30, not {days}."
            )));
        }
        let key = self.key_mut(id)?;
        if key.state == KeyState::PendingDeletion {
            return Err(KmsError::InvalidState(format!(
                "{} is pending deletion.",
                key.arn(account)
            )));
        }
        let at = now_ms + i64::from(days) * DAY_MS;
        key.state = KeyState::PendingDeletion;
        key.deletion_ms = Some(at);
        Ok(at)
    }

    /// Cancels a scheduled deletion; the key is left disabled, as in KMS.
    pub fn cancel_deletion(&mut self, id: &str, account: &str) -> Result<(), KmsError> {
        let key = self.key_mut(id)?;
        if key.state != KeyState::PendingDeletion {
            return Err(KmsError::InvalidState(format!(
                "{} is not pending deletion.",
                key.arn(account)
            )));
        }
        key.state = KeyState::Disabled;
        key.deletion_ms = None;
        Ok(())
    }

    /// Turns automatic rotation on (every `days`, 90–2560) or off.
    pub fn set_rotation(
        &mut self,
        id: &str,
        days: Option<u32>,
        account: &str,
    ) -> Result<(), KmsError> {
        if let Some(d) = days
            && !(90..=2560).contains(&d)
        {
            return Err(KmsError::Validation(format!(
                "RotationPeriodInDays must be between 90 and 2560, not {d}."
            )));
        }
        let key = self.key_mut(id)?;
        if key.state != KeyState::Enabled {
            return Err(match key.state {
                KeyState::Disabled => {
                    KmsError::Disabled(format!("{} is disabled.", key.arn(account)))
                }
                _ => KmsError::InvalidState(format!("{} is pending deletion.", key.arn(account))),
            });
        }
        key.rotation_days = days;
        Ok(())
    }

    /// Gives a key new material now.
    pub fn rotate(
        &mut self,
        master: &MasterKey,
        id: &str,
        now_ms: i64,
        account: &str,
    ) -> Result<(), KmsError> {
        let key = self
            .keys
            .get(id)
            .ok_or_else(|| KmsError::NotFound(format!("Key '{id}' does not exist")))?;
        key.usable(account)?;
        if key.materials.len() >= MAX_MATERIALS {
            return Err(KmsError::LimitExceeded(format!(
                "{} has been rotated {} times, the most this server allows.",
                key.arn(account),
                MAX_MATERIALS - 1
            )));
        }
        let n = key.materials.len();
        let m = Self::new_material(master, id, n, now_ms)?;
        self.key_mut(id)?.materials.push(m);
        Ok(())
    }

    /// Housekeeping at `now_ms`: deletes keys whose deletion date has passed (and their
    /// aliases), and rotates enabled keys whose rotation is due. Returns whether anything
    /// changed.
    pub fn tick(&mut self, master: &MasterKey, now_ms: i64) -> Result<bool, KmsError> {
        let doomed: Vec<String> = self
            .keys
            .values()
            .filter(|k| {
                k.state == KeyState::PendingDeletion && k.deletion_ms.is_some_and(|d| d <= now_ms)
            })
            .map(|k| k.id.clone())
            .collect();
        let mut changed = !doomed.is_empty();
        for id in &doomed {
            self.keys.remove(id);
        }
        self.aliases.retain(|a| !doomed.contains(&a.key_id));
        let due: Vec<String> = self
            .keys
            .values()
            .filter(|k| {
                k.state == KeyState::Enabled
                    && k.materials.len() < MAX_MATERIALS
                    && k.next_rotation_ms().is_some_and(|t| t <= now_ms)
            })
            .map(|k| k.id.clone())
            .collect();
        for id in due {
            let n = self.keys.get(&id).map_or(0, |k| k.materials.len());
            let m = Self::new_material(master, &id, n, now_ms)?;
            self.key_mut(&id)?.materials.push(m);
            changed = true;
        }
        Ok(changed)
    }

    /// Adds tags to a key, replacing the values of keys it has.
    pub fn tag_key(&mut self, id: &str, tags: Vec<KeyTag>) -> Result<(), KmsError> {
        let key = self.key_mut(id)?;
        let mut next = key.tags.clone();
        for t in tags {
            match next.iter_mut().find(|x| x.key == t.key) {
                Some(x) => x.value = t.value,
                None => next.push(t),
            }
        }
        check_tags(&next)?;
        key.tags = next;
        Ok(())
    }

    /// Removes tags from a key by tag key.
    pub fn untag_key(&mut self, id: &str, keys: &[String]) -> Result<(), KmsError> {
        let key = self.key_mut(id)?;
        key.tags.retain(|t| !keys.contains(&t.key));
        Ok(())
    }

    /// Creates `name` for the key `target` in `region`.
    pub fn create_alias(
        &mut self,
        name: &str,
        region: &str,
        target: &str,
        now_ms: i64,
        account: &str,
    ) -> Result<(), KmsError> {
        check_alias_name(name)?;
        if self
            .aliases
            .iter()
            .any(|a| a.name == name && a.region == region)
        {
            return Err(KmsError::AlreadyExists(format!(
                "An alias with the name arn:aws:kms:{region}:{account}:{name} already exists"
            )));
        }
        self.check_alias_target(target, account)?;
        self.aliases.push(Alias {
            name: name.to_owned(),
            region: region.to_owned(),
            key_id: target.to_owned(),
            created_ms: now_ms,
            updated_ms: now_ms,
        });
        Ok(())
    }

    fn check_alias_target(&self, target: &str, account: &str) -> Result<(), KmsError> {
        let key = self
            .keys
            .get(target)
            .ok_or_else(|| KmsError::NotFound(format!("Key '{target}' does not exist")))?;
        if key.state == KeyState::PendingDeletion {
            return Err(KmsError::InvalidState(format!(
                "{} is pending deletion.",
                key.arn(account)
            )));
        }
        if self.aliases.iter().filter(|a| a.key_id == target).count() >= MAX_ALIASES_PER_KEY {
            return Err(KmsError::LimitExceeded(format!(
                "A key may have at most {MAX_ALIASES_PER_KEY} aliases."
            )));
        }
        Ok(())
    }

    /// Points `name` at another key of the same region.
    pub fn update_alias(
        &mut self,
        name: &str,
        region: &str,
        target: &str,
        now_ms: i64,
        account: &str,
    ) -> Result<(), KmsError> {
        check_alias_name(name)?;
        self.check_alias_target(target, account)?;
        let alias = self
            .aliases
            .iter_mut()
            .find(|a| a.name == name && a.region == region)
            .ok_or_else(|| {
                KmsError::NotFound(format!(
                    "Alias arn:aws:kms:{region}:{account}:{name} is not found."
                ))
            })?;
        alias.key_id = target.to_owned();
        alias.updated_ms = now_ms;
        Ok(())
    }

    /// Deletes an alias.
    pub fn delete_alias(
        &mut self,
        name: &str,
        region: &str,
        account: &str,
    ) -> Result<(), KmsError> {
        check_alias_name(name)?;
        let before = self.aliases.len();
        self.aliases
            .retain(|a| !(a.name == name && a.region == region));
        if self.aliases.len() == before {
            return Err(KmsError::NotFound(format!(
                "Alias arn:aws:kms:{region}:{account}:{name} is not found."
            )));
        }
        Ok(())
    }

    /// Encrypts `plain` under the key's newest material, bound to `context`.
    pub fn encrypt(
        &self,
        master: &MasterKey,
        key: &Key,
        account: &str,
        plain: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<Vec<u8>, KmsError> {
        key.usable(account)?;
        let n = key
            .materials
            .len()
            .checked_sub(1)
            .ok_or_else(|| KmsError::Internal(format!("key {} has no material", key.id)))?;
        let material = Self::material(master, key, n)?;
        let nonce = random::<NONCE_LEN>()?;
        let mut data = plain.to_vec();
        aead(&material)?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(blob_aad(&key.arn(account), context).as_slice()),
                &mut data,
            )
            .map_err(|_| KmsError::Internal("encryption failed".into()))?;
        let uuid = uuid::Uuid::try_parse(&key.id)
            .map_err(|_| KmsError::Internal(format!("key id {} is not a UUID", key.id)))?;
        let n16 = u16::try_from(n).map_err(|_| KmsError::Internal("too many materials".into()))?;
        let mut out = Vec::with_capacity(BLOB_HEADER + data.len());
        out.push(BLOB_V1);
        out.extend_from_slice(uuid.as_bytes());
        out.extend_from_slice(&n16.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(out)
    }

    /// The key a blob was made under, if the blob is well formed.
    pub fn blob_key_id(blob: &[u8]) -> Result<String, KmsError> {
        let bad = || {
            KmsError::InvalidCiphertext("The ciphertext is not one this key service made.".into())
        };
        if blob.len() < BLOB_HEADER + 16 || blob[0] != BLOB_V1 {
            return Err(bad());
        }
        let uuid = uuid::Uuid::from_slice(&blob[1..17]).map_err(|_| bad())?;
        Ok(uuid.hyphenated().to_string())
    }

    /// Decrypts a blob made by [`Keystore::encrypt`] under the same context. Returns the
    /// plaintext and the key.
    pub fn decrypt(
        &self,
        master: &MasterKey,
        account: &str,
        blob: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<(Vec<u8>, &Key), KmsError> {
        let id = Self::blob_key_id(blob)?;
        let key = self.keys.get(&id).ok_or_else(|| {
            KmsError::InvalidCiphertext(
                "The key that made this ciphertext does not exist (it may have been deleted)."
                    .into(),
            )
        })?;
        key.usable(account)?;
        let n = usize::from(u16::from_be_bytes([blob[17], blob[18]]));
        let material = Self::material(master, key, n)?;
        let nonce = Nonce::try_assume_unique_for_key(&blob[19..BLOB_HEADER])
            .map_err(|_| KmsError::InvalidCiphertext("bad nonce".into()))?;
        let mut data = blob[BLOB_HEADER..].to_vec();
        let plain = aead(&material)?
            .open_in_place(nonce, Aad::from(blob_aad(&key.arn(account), context).as_slice()), &mut data)
            .map_err(|_| {
                KmsError::InvalidCiphertext(
                    "The ciphertext cannot be decrypted: it is damaged, or the encryption context differs from the one it was made with.".into(),
                )
            })?;
        Ok((plain.to_vec(), key))
    }
}

fn check_tags(tags: &[KeyTag]) -> Result<(), KmsError> {
    if tags.len() > MAX_TAGS {
        return Err(KmsError::Validation(format!(
            "A key may have at most {MAX_TAGS} tags."
        )));
    }
    for t in tags {
        if t.key.is_empty() || t.key.chars().count() > 128 || t.value.chars().count() > 256 {
            return Err(KmsError::Validation(format!(
                "Tag keys must be 1 to 128 characters and values at most 256: {}",
                t.key
            )));
        }
        if t.key.starts_with("aws:") {
            return Err(KmsError::Validation(format!(
                "Tag keys may not begin with \"aws:\": {}",
                t.key
            )));
        }
    }
    Ok(())
}

/// A fresh data key: its plaintext (to encrypt with, then forget) and the same key encrypted
/// under a customer key (to store beside what it encrypted).
pub struct DataKey {
    pub plaintext: [u8; 32],
    pub blob: Vec<u8>,
    pub key_arn: String,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("key_arn", &self.key_arn)
            .finish_non_exhaustive()
    }
}

/// Envelope encryption of one stored object: the object is encrypted with its own data key
/// (AES-256-GCM, no associated data, the 12-byte nonce derived from the object key), and the
/// data key travels wrapped beside it in the object's metadata, in the S3 Encryption Client v2
/// metadata names.
pub mod envelope {
    use std::collections::BTreeMap;

    use aws_lc_rs::aead::{Aad, NONCE_LEN, Nonce};
    use aws_lc_rs::digest::{SHA256, digest};
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;

    use super::{KmsError, aead};

    /// The wrapped data key (base64 of a ciphertext blob).
    pub const META_KEY: &str = "x-amz-key-v2";
    /// The nonce (base64).
    pub const META_IV: &str = "x-amz-iv";
    /// The content cipher.
    pub const META_CEK_ALG: &str = "x-amz-cek-alg";
    /// How the data key is wrapped.
    pub const META_WRAP_ALG: &str = "x-amz-wrap-alg";
    /// The encryption context the data key was wrapped under (JSON).
    pub const META_MATDESC: &str = "x-amz-matdesc";
    /// The GCM tag length in bits.
    pub const META_TAG_LEN: &str = "x-amz-tag-len";
    /// The plaintext length.
    pub const META_PLAIN_LEN: &str = "x-amz-unencrypted-content-length";
    /// The key that wraps the data key (an OpenTrail addition: the ARN, for readers).
    pub const META_KMS_KEY: &str = "x-amz-kms-key-arn";
    pub const CEK_ALG: &str = "AES/GCM/NoPadding";
    pub const WRAP_ALG: &str = "kms+context";

    /// The encryption context of a trail's object, as CloudTrail uses with KMS.
    pub fn context(trail_arn: &str, bucket: &str, key: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("aws:cloudtrail:arn".to_owned(), trail_arn.to_owned()),
            (
                "aws:s3:arn".to_owned(),
                format!("arn:aws:s3:::{bucket}/{key}"),
            ),
        ])
    }

    /// The nonce of an object: the first 12 bytes of SHA-256 over its key. Each data key
    /// encrypts one object, so this only makes a replay write the same bytes.
    pub fn nonce(object_key: &str) -> [u8; NONCE_LEN] {
        let d = digest(&SHA256, object_key.as_bytes());
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(&d.as_ref()[..NONCE_LEN]);
        n
    }

    /// Encrypts an object's bytes; returns the stored body and its metadata.
    pub fn seal(
        data_key: &[u8],
        wrapped: &[u8],
        key_arn: &str,
        object_key: &str,
        context: &BTreeMap<String, String>,
        plain: &[u8],
    ) -> Result<(Vec<u8>, BTreeMap<String, String>), KmsError> {
        let n = nonce(object_key);
        let mut body = plain.to_vec();
        aead(data_key)?
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(n), Aad::empty(), &mut body)
            .map_err(|_| KmsError::Internal("encrypting an object failed".into()))?;
        let matdesc =
            serde_json::to_string(context).map_err(|e| KmsError::Internal(e.to_string()))?;
        let meta = BTreeMap::from([
            (META_KEY.to_owned(), B64.encode(wrapped)),
            (META_IV.to_owned(), B64.encode(n)),
            (META_CEK_ALG.to_owned(), CEK_ALG.to_owned()),
            (META_WRAP_ALG.to_owned(), WRAP_ALG.to_owned()),
            (META_MATDESC.to_owned(), matdesc),
            (META_TAG_LEN.to_owned(), "128".to_owned()),
            (META_PLAIN_LEN.to_owned(), plain.len().to_string()),
            (META_KMS_KEY.to_owned(), key_arn.to_owned()),
        ]);
        Ok((body, meta))
    }

    /// What a reader needs from an encrypted object's metadata.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Sealed {
        pub wrapped: Vec<u8>,
        pub nonce: Vec<u8>,
        pub context: BTreeMap<String, String>,
        pub key_arn: Option<String>,
    }

    /// `Ok(None)` for an object stored in the clear; the envelope of an encrypted one; an
    /// error when the metadata names an envelope it cannot read.
    pub fn parse(meta: &BTreeMap<String, String>) -> Result<Option<Sealed>, KmsError> {
        let Some(wrapped) = meta.get(META_KEY) else {
            return Ok(None);
        };
        let bad = |what: &str| {
            KmsError::InvalidCiphertext(format!(
                "the object's encryption metadata is unreadable: {what}"
            ))
        };
        if meta.get(META_CEK_ALG).map(String::as_str) != Some(CEK_ALG) {
            return Err(bad("the content cipher is not AES/GCM/NoPadding"));
        }
        if meta.get(META_WRAP_ALG).map(String::as_str) != Some(WRAP_ALG) {
            return Err(bad("the key wrapping is not kms+context"));
        }
        let wrapped = B64.decode(wrapped).map_err(|_| bad(META_KEY))?;
        let nonce = B64
            .decode(meta.get(META_IV).ok_or_else(|| bad(META_IV))?)
            .map_err(|_| bad(META_IV))?;
        let context: BTreeMap<String, String> =
            serde_json::from_str(meta.get(META_MATDESC).ok_or_else(|| bad(META_MATDESC))?)
                .map_err(|_| bad(META_MATDESC))?;
        Ok(Some(Sealed {
            wrapped,
            nonce,
            context,
            key_arn: meta.get(META_KMS_KEY).cloned(),
        }))
    }

    /// Decrypts an object's body with its (unwrapped) data key.
    pub fn open(data_key: &[u8], nonce: &[u8], body: &[u8]) -> Result<Vec<u8>, KmsError> {
        let n = Nonce::try_assume_unique_for_key(nonce).map_err(|_| {
            KmsError::InvalidCiphertext("the object's nonce is not 12 bytes".into())
        })?;
        let mut data = body.to_vec();
        let plain = aead(data_key)?
            .open_in_place(n, Aad::empty(), &mut data)
            .map_err(|_| KmsError::InvalidCiphertext("the object does not decrypt: it is damaged, or its data key is not the one in its metadata".into()))?;
        Ok(plain.to_vec())
    }
}

/// The key service: the stored keystore, its writer, and the master key.
pub struct KeyService {
    catalog: Arc<Catalog>,
    master: MasterKey,
    account: String,
    current: Mutex<(u64, Arc<Keystore>)>,
    /// Serializes changes (read, change, store, swap).
    writer: Mutex<()>,
}

impl KeyService {
    /// Loads the stored keystore (an empty one if none was ever stored).
    pub fn open(catalog: Arc<Catalog>, master: MasterKey, account: &str) -> Result<Self, KmsError> {
        let (version, store) = match catalog.kms_keystore()? {
            Some((v, body)) => {
                let store: Keystore = serde_json::from_str(&body).map_err(|e| {
                    KmsError::Internal(format!("the stored keystore is unreadable: {e}"))
                })?;
                if store.format != KEYSTORE_FORMAT {
                    return Err(KmsError::Internal(format!(
                        "the stored keystore has format {}, this build reads {KEYSTORE_FORMAT}",
                        store.format
                    )));
                }
                (v, store)
            }
            None => (0, Keystore::default()),
        };
        Ok(Self {
            catalog,
            master,
            account: account.to_owned(),
            current: Mutex::new((version, Arc::new(store))),
            writer: Mutex::new(()),
        })
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    pub fn master(&self) -> &MasterKey {
        &self.master
    }

    /// The current keystore (a snapshot; changes swap in a new one).
    pub fn snapshot(&self) -> Result<Arc<Keystore>, KmsError> {
        let cur = self
            .current
            .lock()
            .map_err(|_| KmsError::Internal("keystore lock poisoned".into()))?;
        Ok(cur.1.clone())
    }

    /// Applies `change` to a copy of the keystore and stores it; the copy becomes current only
    /// once stored. Blocking (SQLite): call from a blocking thread.
    pub fn change<T>(
        &self,
        change: impl FnOnce(&mut Keystore, &MasterKey) -> Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        let _w = self
            .writer
            .lock()
            .map_err(|_| KmsError::Internal("keystore lock poisoned".into()))?;
        let (version, store) = {
            let cur = self
                .current
                .lock()
                .map_err(|_| KmsError::Internal("keystore lock poisoned".into()))?;
            (cur.0, cur.1.clone())
        };
        let mut next = (*store).clone();
        let out = change(&mut next, &self.master)?;
        if next != *store {
            let body =
                serde_json::to_string(&next).map_err(|e| KmsError::Internal(e.to_string()))?;
            let v = self.catalog.put_kms_keystore(version, &body)?;
            let mut cur = self
                .current
                .lock()
                .map_err(|_| KmsError::Internal("keystore lock poisoned".into()))?;
            *cur = (v, Arc::new(next));
        }
        Ok(out)
    }

    /// A fresh data key under the key `key_ref` names in `region` (usable keys only).
    pub fn data_key(
        &self,
        region: &str,
        key_ref: &str,
        context: &BTreeMap<String, String>,
    ) -> Result<DataKey, KmsError> {
        let store = self.snapshot()?;
        let key = store.resolve(&self.account, region, &KeyRef::parse(key_ref)?)?;
        let plaintext = random::<32>()?;
        let blob = store.encrypt(&self.master, key, &self.account, &plaintext, context)?;
        Ok(DataKey {
            plaintext,
            blob,
            key_arn: key.arn(&self.account),
        })
    }

    /// Decrypts a blob; returns the plaintext and the ARN of the key that made it.
    pub fn decrypt(
        &self,
        blob: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<(Vec<u8>, String), KmsError> {
        let store = self.snapshot()?;
        let (plain, key) = store.decrypt(&self.master, &self.account, blob, context)?;
        Ok((plain, key.arn(&self.account)))
    }
}

#[cfg(test)]
mod tests;
