//! The principal directory: the account's root, IAM users with access keys, groups, customer
//! managed policies, and the ready-made managed policies. It is one small document, stored
//! whole (versioned) by the server in its catalog and changed only through [`crate::iam`].
//!
//! Secrets are held sealed (the server seals them with its master key); a [`Snapshot`] is the
//! resolved, decrypted view the request path reads: access key → principal → parsed policies.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::policy::Policy;
use crate::sigv4::{Secret, SecretSource};

/// Version of the stored directory document.
pub const DIRECTORY_FORMAT: u32 = 1;
/// IAM allows two access keys per user.
pub const MAX_KEYS_PER_USER: usize = 2;
/// Limits on the directory's size (IAM's default quotas where it has them).
pub const MAX_USERS: usize = 5000;
pub const MAX_GROUPS: usize = 300;
pub const MAX_GROUPS_PER_USER: usize = 10;
pub const MAX_ATTACHED_POLICIES: usize = 20;
pub const MAX_INLINE_POLICIES: usize = 20;
pub const MAX_CUSTOMER_POLICIES: usize = 1500;
/// Characters (not counting whitespace) in a managed policy, and in inline policies.
pub const MAX_MANAGED_POLICY_CHARS: usize = 6144;
pub const MAX_USER_INLINE_CHARS: usize = 2048;
pub const MAX_GROUP_INLINE_CHARS: usize = 5120;

/// The ARN prefix of the ready-made (AWS-managed style) policies.
pub const MANAGED_ARN_PREFIX: &str = "arn:aws:iam::aws:policy/";

/// Ready-made policies: name and document.
pub const MANAGED_POLICIES: [(&str, &str, &str); 3] = [
    (
        "OpenTrailFullAccess",
        "Full access to OpenTrail: trails, logging, event history, ingest, trail files and the keys that encrypt them.",
        r#"{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Sid": "OpenTrailFullAccess",
      "Effect": "Allow",
      "Action": ["cloudtrail:*", "cloudtrail-data:*", "opentrail:*", "kms:*", "s3:GetObject", "s3:ListBucket"],
      "Resource": "*"
    }
  ]
}"#,
    ),
    (
        "OpenTrailReadOnlyAccess",
        "Read-only access to OpenTrail: describe and list trails and keys, look up events, read trail files (encrypted ones need kms:Decrypt on their key besides). Nothing that changes or stops anything.",
        r#"{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Sid": "OpenTrailReadOnly",
      "Effect": "Allow",
      "Action": [
        "cloudtrail:Get*",
        "cloudtrail:Describe*",
        "cloudtrail:List*",
        "cloudtrail:LookupEvents",
        "opentrail:Get*",
        "opentrail:List*",
        "kms:Describe*",
        "kms:Get*",
        "kms:List*",
        "s3:GetObject",
        "s3:ListBucket"
      ],
      "Resource": "*"
    }
  ]
}"#,
    ),
    (
        "AdministratorAccess",
        "Every action on every resource, including managing users, groups and policies.",
        r#"{
  "Version": "2012-10-17",
  "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]
}"#,
    ),
];

/// The document of a ready-made policy, by ARN.
pub fn managed_policy(arn: &str) -> Option<(&'static str, &'static str, &'static str)> {
    let name = arn.strip_prefix(MANAGED_ARN_PREFIX)?;
    MANAGED_POLICIES
        .iter()
        .copied()
        .find(|(n, _, _)| *n == name)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyStatus {
    Active,
    Inactive,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "Active",
            KeyStatus::Inactive => "Inactive",
        }
    }
}

/// An access key. The secret is sealed by the server (opaque text here).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKey {
    pub id: String,
    pub sealed_secret: String,
    pub status: KeyStatus,
    pub created_ms: i64,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("id", &self.id)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub user_id: String,
    pub path: String,
    pub created_ms: i64,
    #[serde(default)]
    pub access_keys: Vec<AccessKey>,
    /// ARNs of attached managed policies.
    #[serde(default)]
    pub attached: BTreeSet<String>,
    /// Inline policies: name → document.
    #[serde(default)]
    pub inline: BTreeMap<String, String>,
    /// Lowercased names of the groups the user is in.
    #[serde(default)]
    pub groups: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub group_id: String,
    pub path: String,
    pub created_ms: i64,
    #[serde(default)]
    pub attached: BTreeSet<String>,
    #[serde(default)]
    pub inline: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerPolicy {
    pub name: String,
    pub policy_id: String,
    pub path: String,
    pub description: Option<String>,
    pub document: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// The whole directory, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    pub format: u32,
    /// Keyed by lowercased name (IAM names are unique regardless of case).
    #[serde(default)]
    pub users: BTreeMap<String, User>,
    #[serde(default)]
    pub groups: BTreeMap<String, Group>,
    #[serde(default)]
    pub policies: BTreeMap<String, CustomerPolicy>,
    /// Root access keys generated by the server on first start (when none were configured).
    #[serde(default)]
    pub root_keys: Vec<AccessKey>,
}

impl Default for Directory {
    fn default() -> Self {
        Self {
            format: DIRECTORY_FORMAT,
            users: BTreeMap::new(),
            groups: BTreeMap::new(),
            policies: BTreeMap::new(),
            root_keys: Vec::new(),
        }
    }
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalKind {
    Root,
    User,
}

#[derive(Debug)]
pub struct Principal {
    pub kind: PrincipalKind,
    pub account_id: String,
    pub arn: String,
    /// The account id for root, the user's `AIDA...` id for users.
    pub principal_id: String,
    pub user_name: Option<String>,
    /// Every policy that applies: attached and inline, the user's and their groups'.
    pub policies: Vec<Arc<Policy>>,
}

impl Principal {
    pub fn root(account_id: &str) -> Self {
        Self {
            kind: PrincipalKind::Root,
            account_id: account_id.to_owned(),
            arn: format!("arn:aws:iam::{account_id}:root"),
            principal_id: account_id.to_owned(),
            user_name: None,
            policies: Vec::new(),
        }
    }
}

struct KeyEntry {
    principal: Arc<Principal>,
    secret: Arc<str>,
    active: bool,
}

/// The resolved directory the request path reads.
#[derive(Default)]
pub struct Snapshot {
    keys: HashMap<String, KeyEntry>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("keys", &self.keys.len())
            .finish()
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Why a snapshot could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("access key {0}: {1}")]
    Secret(String, String),
    #[error("stored policy {0} no longer parses: {1}")]
    Policy(String, String),
}

pub fn user_arn(account_id: &str, path: &str, name: &str) -> String {
    format!("arn:aws:iam::{account_id}:user{path}{name}")
}

pub fn group_arn(account_id: &str, path: &str, name: &str) -> String {
    format!("arn:aws:iam::{account_id}:group{path}{name}")
}

pub fn policy_arn(account_id: &str, path: &str, name: &str) -> String {
    format!("arn:aws:iam::{account_id}:policy{path}{name}")
}

impl Directory {
    /// The document of a managed policy (ready-made or the account's own), by ARN.
    pub fn policy_document(&self, account_id: &str, arn: &str) -> Option<String> {
        if let Some((_, _, doc)) = managed_policy(arn) {
            return Some(doc.to_owned());
        }
        self.policies
            .values()
            .find(|p| policy_arn(account_id, &p.path, &p.name) == arn)
            .map(|p| p.document.clone())
    }

    /// Resolves the directory for the request path. `open` unseals a secret; `root` is the
    /// configured root key, if any (then generated root keys are not used).
    pub fn snapshot(
        &self,
        account_id: &str,
        root: Option<(&str, &str)>,
        open: &dyn Fn(&AccessKey) -> Result<String, String>,
    ) -> Result<Snapshot, SnapshotError> {
        let mut keys = HashMap::new();
        let root_principal = Arc::new(Principal::root(account_id));
        match root {
            Some((id, secret)) => {
                keys.insert(
                    id.to_owned(),
                    KeyEntry {
                        principal: Arc::clone(&root_principal),
                        secret: Arc::from(secret),
                        active: true,
                    },
                );
            }
            None => {
                for k in &self.root_keys {
                    let secret = open(k).map_err(|e| SnapshotError::Secret(k.id.clone(), e))?;
                    keys.insert(
                        k.id.clone(),
                        KeyEntry {
                            principal: Arc::clone(&root_principal),
                            secret: Arc::from(secret.as_str()),
                            active: k.status == KeyStatus::Active,
                        },
                    );
                }
            }
        }
        let mut parsed: HashMap<String, Arc<Policy>> = HashMap::new();
        let mut managed = |arn: &str| -> Result<Option<Arc<Policy>>, SnapshotError> {
            if let Some(p) = parsed.get(arn) {
                return Ok(Some(Arc::clone(p)));
            }
            let Some(doc) = self.policy_document(account_id, arn) else {
                return Ok(None);
            };
            let p = Arc::new(
                Policy::parse(&doc, usize::MAX)
                    .map_err(|e| SnapshotError::Policy(arn.to_owned(), e.0))?,
            );
            parsed.insert(arn.to_owned(), Arc::clone(&p));
            Ok(Some(p))
        };
        for user in self.users.values() {
            let mut policies = Vec::new();
            let inline = |owner: &str, docs: &BTreeMap<String, String>| {
                docs.iter()
                    .map(|(n, d)| {
                        Policy::parse(d, usize::MAX)
                            .map(Arc::new)
                            .map_err(|e| SnapshotError::Policy(format!("{owner}/{n}"), e.0))
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
            for arn in &user.attached {
                policies.extend(managed(arn)?);
            }
            policies.extend(inline(&user.name, &user.inline)?);
            for g in &user.groups {
                if let Some(group) = self.groups.get(g) {
                    for arn in &group.attached {
                        policies.extend(managed(arn)?);
                    }
                    policies.extend(inline(&group.name, &group.inline)?);
                }
            }
            let principal = Arc::new(Principal {
                kind: PrincipalKind::User,
                account_id: account_id.to_owned(),
                arn: user_arn(account_id, &user.path, &user.name),
                principal_id: user.user_id.clone(),
                user_name: Some(user.name.clone()),
                policies,
            });
            for k in &user.access_keys {
                let secret = open(k).map_err(|e| SnapshotError::Secret(k.id.clone(), e))?;
                keys.insert(
                    k.id.clone(),
                    KeyEntry {
                        principal: Arc::clone(&principal),
                        secret: Arc::from(secret.as_str()),
                        active: k.status == KeyStatus::Active,
                    },
                );
            }
        }
        Ok(Snapshot { keys })
    }
}

impl Snapshot {
    /// The principal an active access key belongs to.
    pub fn principal(&self, access_key_id: &str) -> Option<Arc<Principal>> {
        self.keys
            .get(access_key_id)
            .filter(|k| k.active)
            .map(|k| Arc::clone(&k.principal))
    }
}

impl SecretSource for Snapshot {
    fn secret(&self, access_key_id: &str) -> Option<Secret> {
        self.keys
            .get(access_key_id)
            .filter(|k| k.active)
            .map(|k| Secret {
                secret: Arc::clone(&k.secret),
                version: fnv(&k.secret),
            })
    }
}
