//! Access control in the server: who a request comes from (SigV4 against the principal
//! directory) and whether their policies allow what it asks (IAM evaluation). Also the one
//! place the directory changes: the admin API's calls, stored in the catalog before the new
//! snapshot is swapped in.

use std::sync::{Arc, RwLock};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use axum::http::request::Parts;
use base64::Engine as _;
use opentrail_auth::directory::AccessKey;
use opentrail_auth::iam::{self, IamError, Minter};
use opentrail_auth::policy::{self, Context, Decision};
use opentrail_auth::sigv4::{self, AuthError, Request, SecretSource};
use opentrail_auth::{Directory, Principal, PrincipalKind, Snapshot, Verifier};
use opentrail_catalog::Catalog;
use opentrail_delivery::MasterKey;
use opentrail_protocol::{ApiError, Exception};
use serde_json::Value;

use crate::{ServerError, Settings};

/// The file a generated root key is written to, in the data directory.
pub(crate) const ROOT_CREDENTIALS_FILE: &str = "root-credentials.json";

/// Who is calling.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub principal: Arc<Principal>,
    pub access_key_id: Option<String>,
}

pub(crate) struct Access {
    verifier: Verifier,
    snapshot: RwLock<Arc<Snapshot>>,
    /// The stored directory and its version; held while a change is made and stored.
    directory: tokio::sync::Mutex<(u64, Directory)>,
    master: MasterKey,
    root: Option<(String, String)>,
    account: String,
    root_principal: Arc<Principal>,
    /// `insecure_no_auth`: every call is the root's.
    pub disabled: bool,
}

fn api(e: &AuthError) -> ApiError {
    let exception = match e {
        AuthError::Missing => Exception::MissingAuthenticationTokenException,
        AuthError::Incomplete(_) => Exception::IncompleteSignature,
        AuthError::InvalidClientTokenId => Exception::InvalidClientTokenId,
        AuthError::SignatureDoesNotMatch(_) => Exception::SignatureDoesNotMatch,
    };
    ApiError::new(exception, e.to_string())
}

fn iam_api(e: IamError) -> ApiError {
    let exception = match e.code {
        "NoSuchEntity" => Exception::NoSuchEntity,
        "EntityAlreadyExists" => Exception::EntityAlreadyExists,
        "LimitExceeded" => Exception::LimitExceeded,
        "DeleteConflict" => Exception::DeleteConflict,
        "MalformedPolicyDocument" => Exception::MalformedPolicyDocument,
        "InvalidAction" => Exception::InvalidAction,
        "ServiceFailure" => Exception::InternalFailure,
        _ => Exception::ValidationError,
    };
    ApiError::new(exception, e.message)
}

const ID_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn random_text(alphabet: &[u8], len: usize) -> Result<String, IamError> {
    let mut bytes = vec![0u8; len];
    SystemRandom::new().fill(&mut bytes).map_err(|_| IamError {
        code: "ServiceFailure",
        status: 500,
        message: "no randomness available".to_owned(),
    })?;
    Ok(bytes
        .iter()
        .map(|b| char::from(alphabet[usize::from(*b) % alphabet.len()]))
        .collect())
}

struct Mint<'a> {
    master: &'a MasterKey,
}

impl Mint<'_> {
    fn seal(&self, id: &str, secret: &str) -> Result<String, IamError> {
        let sealed = self
            .master
            .seal(id, secret.as_bytes())
            .map_err(|e| IamError {
                code: "ServiceFailure",
                status: 500,
                message: format!("sealing the secret failed: {e}"),
            })?;
        Ok(base64::engine::general_purpose::STANDARD.encode(sealed))
    }
}

impl Minter for Mint<'_> {
    fn id(&self, prefix: &str) -> Result<String, IamError> {
        Ok(format!("{prefix}{}", random_text(ID_ALPHABET, 17)?))
    }

    fn access_key(&self) -> Result<(String, String, String), IamError> {
        let id = format!("AKIA{}", random_text(ID_ALPHABET, 16)?);
        let secret = random_text(SECRET_ALPHABET, 40)?;
        let sealed = self.seal(&id, &secret)?;
        Ok((id, secret, sealed))
    }
}

fn open_secret(master: &MasterKey, key: &AccessKey) -> Result<String, String> {
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(&key.sealed_secret)
        .map_err(|e| e.to_string())?;
    let plain = master
        .open(&key.id, &sealed)
        .map_err(|e| format!("{e} (was the master key changed?)"))?;
    String::from_utf8(plain).map_err(|e| e.to_string())
}

impl Access {
    /// Loads the directory (creating the root key when none is configured or stored) and
    /// resolves it. Blocking.
    pub fn open(
        catalog: &Catalog,
        settings: &Settings,
        master: MasterKey,
    ) -> Result<Self, ServerError> {
        let stored = catalog.iam_directory()?;
        let (mut version, mut directory) = match stored {
            Some((v, body)) => {
                let d: Directory = serde_json::from_str(&body).map_err(|e| {
                    ServerError::Access(format!(
                        "the stored principal directory is unreadable: {e}"
                    ))
                })?;
                if d.format > opentrail_auth::directory::DIRECTORY_FORMAT {
                    return Err(ServerError::Access(format!(
                        "the principal directory has format {} (newer than this server)",
                        d.format
                    )));
                }
                (v, d)
            }
            None => (0, Directory::default()),
        };
        let root = match (
            &settings.root_access_key_id,
            &settings.root_secret_access_key,
        ) {
            (Some(id), Some(secret)) => Some((id.clone(), secret.clone())),
            _ => None,
        };
        if root.is_none() && directory.root_keys.is_empty() && !settings.insecure_no_auth {
            let mint = Mint { master: &master };
            let (id, secret, sealed) = mint
                .access_key()
                .map_err(|e| ServerError::Access(e.message))?;
            directory.root_keys.push(AccessKey {
                id: id.clone(),
                sealed_secret: sealed,
                status: opentrail_auth::directory::KeyStatus::Active,
                created_ms: crate::App::now_ms(),
            });
            // The file first (synced), then the directory: a crash between the two leaves a key
            // nobody can use and the next start makes a new one and rewrites the file; the other
            // order could store a key whose secret was never handed out.
            let path = settings.data_dir.join(ROOT_CREDENTIALS_FILE);
            let _ = std::fs::remove_file(&path);
            let text = serde_json::json!({
                "AccessKeyId": id,
                "SecretAccessKey": secret,
                "AccountId": settings.account_id,
            });
            opentrail_delivery::write_private(&path, format!("{text:#}\n").as_bytes())?;
            let body = serde_json::to_string(&directory)
                .map_err(|e| ServerError::Access(e.to_string()))?;
            version = catalog.put_iam_directory(version, &body)?;
            tracing::warn!(
                file = %path.display(),
                access_key_id = %id,
                "generated the root user's access key; its secret is in this file (mode 0600) and is shown nowhere else"
            );
        }
        let root_principal = Arc::new(Principal::root(&settings.account_id));
        let access = Self {
            verifier: Verifier::new(),
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            directory: tokio::sync::Mutex::new((version, directory.clone())),
            master,
            root,
            account: settings.account_id.clone(),
            root_principal,
            disabled: settings.insecure_no_auth,
        };
        access.install(&directory)?;
        if access.disabled {
            tracing::warn!(
                "insecure_no_auth is set: requests are NOT authenticated and every call acts as the root user"
            );
        }
        Ok(access)
    }

    fn install(&self, directory: &Directory) -> Result<(), ServerError> {
        let root = self
            .root
            .as_ref()
            .map(|(id, secret)| (id.as_str(), secret.as_str()));
        let snapshot = directory
            .snapshot(&self.account, root, &|k| open_secret(&self.master, k))
            .map_err(|e| ServerError::Access(e.to_string()))?;
        if let Ok(mut s) = self.snapshot.write() {
            *s = Arc::new(snapshot);
        }
        Ok(())
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .map(|s| Arc::clone(&s))
            .unwrap_or_default()
    }

    /// Verifies the request's signature for one of `services`. Returns the caller and the
    /// region of the credential scope.
    pub fn authenticate(
        &self,
        parts: &Parts,
        body: &[u8],
        services: &[&str],
        now_ms: i64,
    ) -> Result<(Caller, Option<String>), ApiError> {
        let headers = header_pairs(parts);
        let req = Request {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &headers,
            body,
        };
        if self.disabled {
            let region = sigv4::parse(&req).ok().map(|c| c.region);
            return Ok((
                Caller {
                    principal: Arc::clone(&self.root_principal),
                    access_key_id: None,
                },
                region,
            ));
        }
        let snapshot = self.current();
        let verified = self
            .verifier
            .verify(&req, services, now_ms, snapshot.as_ref())
            .map_err(|e| api(&e))?;
        let principal = snapshot
            .principal(&verified.access_key_id)
            .ok_or_else(|| api(&AuthError::InvalidClientTokenId))?;
        Ok((
            Caller {
                principal,
                access_key_id: Some(verified.access_key_id),
            },
            Some(verified.region),
        ))
    }

    /// Checks a console sign-in: the caller when `secret` is the active key's secret; otherwise
    /// the principal the key belongs to (if it is known and active), for the record of the
    /// failure.
    pub fn sign_in(
        &self,
        access_key_id: &str,
        secret: &str,
    ) -> Result<Caller, Option<Arc<Principal>>> {
        if self.disabled {
            return Ok(Caller {
                principal: Arc::clone(&self.root_principal),
                access_key_id: None,
            });
        }
        let snapshot = self.current();
        let principal = snapshot.principal(access_key_id);
        let stored = snapshot.secret(access_key_id);
        match (principal, stored) {
            // Digests of both are compared, so the time taken tells nothing of the secret.
            (Some(p), Some(s))
                if aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.secret.as_bytes())
                    .as_ref()
                    == aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes())
                        .as_ref() =>
            {
                Ok(Caller {
                    principal: p,
                    access_key_id: Some(access_key_id.to_owned()),
                })
            }
            (p, _) => Err(p),
        }
    }

    /// The caller behind a console session's key, while that key is active.
    pub fn session_caller(&self, access_key_id: Option<&str>) -> Option<Caller> {
        match access_key_id {
            None if self.disabled => Some(Caller {
                principal: Arc::clone(&self.root_principal),
                access_key_id: None,
            }),
            None => None,
            Some(id) => self.current().principal(id).map(|principal| Caller {
                principal,
                access_key_id: Some(id.to_owned()),
            }),
        }
    }

    /// The access key id a request claims, for recording a call that failed to authenticate.
    pub fn claimed_key(parts: &Parts) -> Option<String> {
        let headers = header_pairs(parts);
        sigv4::claimed_access_key(&Request {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &headers,
            body: b"",
        })
    }

    /// Whether `caller` may do `action` on `resource`; the error is what the client is told.
    pub fn authorize(
        &self,
        caller: &Caller,
        action: &str,
        resource: &str,
        source_ip: &str,
        region: &str,
        now_ms: i64,
    ) -> Result<(), ApiError> {
        let p = &caller.principal;
        if p.kind == PrincipalKind::Root {
            return Ok(());
        }
        let mut ctx = Context::new(action, resource)
            .with("aws:SourceIp", source_ip)
            .with(
                "aws:CurrentTime",
                opentrail_model::time::format_event_time(now_ms),
            )
            .with("aws:EpochTime", (now_ms / 1000).to_string())
            .with("aws:SecureTransport", "false")
            .with("aws:PrincipalArn", p.arn.clone())
            .with("aws:PrincipalAccount", p.account_id.clone())
            .with("aws:PrincipalType", "User")
            .with("aws:userid", p.principal_id.clone())
            .with("aws:RequestedRegion", region);
        if let Some(u) = &p.user_name {
            ctx = ctx.with("aws:username", u.clone());
        }
        match policy::evaluate(p.policies.iter().map(AsRef::as_ref), &ctx) {
            Decision::Allow => Ok(()),
            Decision::ExplicitDeny => Err(ApiError::new(
                Exception::AccessDeniedException,
                format!(
                    "User: {} is not authorized to perform: {action} on resource: {resource} with an explicit deny in an identity-based policy",
                    p.arn
                ),
            )),
            Decision::ImplicitDeny => Err(ApiError::new(
                Exception::AccessDeniedException,
                format!(
                    "User: {} is not authorized to perform: {action} on resource: {resource} because no identity-based policy allows the {action} action",
                    p.arn
                ),
            )),
        }
    }

    /// The resource an admin action is authorized against.
    pub async fn iam_resource(&self, action: &str, body: &Value) -> String {
        let guard = self.directory.lock().await;
        iam::resource(&guard.1, &self.account, action, body)
    }

    /// Runs an admin action; a change is stored in the catalog and then takes effect.
    pub async fn iam_call(
        &self,
        catalog: &Arc<Catalog>,
        caller: &Caller,
        action: &str,
        read_only: bool,
        body: &Value,
        now_ms: i64,
    ) -> Result<Value, ApiError> {
        let mut guard = self.directory.lock().await;
        let mut next = guard.1.clone();
        let out = iam::call(
            &mut next,
            &self.account,
            &caller.principal,
            action,
            body,
            now_ms,
            &Mint {
                master: &self.master,
            },
        )
        .map_err(iam_api)?;
        if read_only || next == guard.1 {
            return Ok(out);
        }
        let text = serde_json::to_string(&next)
            .map_err(|e| ApiError::new(Exception::InternalFailure, e.to_string()))?;
        let cat = Arc::clone(catalog);
        let expected = guard.0;
        let version = tokio::task::spawn_blocking(move || cat.put_iam_directory(expected, &text))
            .await
            .map_err(|e| ApiError::new(Exception::InternalFailure, e.to_string()))?
            .map_err(|e| {
                ApiError::new(
                    Exception::ServiceUnavailable,
                    format!("the change could not be stored: {e}"),
                )
            })?;
        self.install(&next)
            .map_err(|e| ApiError::new(Exception::InternalFailure, e.to_string()))?;
        *guard = (version, next);
        Ok(out)
    }
}

/// A request's headers as SigV4 reads them (values that are not text are left out: such a
/// header cannot have been signed).
fn header_pairs(parts: &Parts) -> Vec<(&str, &str)> {
    parts
        .headers
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
        .collect()
}
