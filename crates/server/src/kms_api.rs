//! The key service's API: AWS KMS's JSON 1.1 protocol (`POST /` with `X-Amz-Target:
//! TrentService.<Operation>`, signed for service `kms`), so `aws kms ... --endpoint-url` and
//! boto3's `kms` client work unchanged. Every call is authorized as `kms:<Operation>` on the key
//! (or alias) ARN it names and recorded as a self-audit event with eventSource
//! `kms.amazonaws.com`. Plaintexts and ciphertexts never enter the record.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::request::Parts;
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use opentrail_delivery::kms::{
    DEFAULT_DELETION_DAYS, DEFAULT_ROTATION_DAYS, Key, KeyRef, KeyService, KeyState, KeyTag,
    Keystore, KmsError, MAX_PLAINTEXT,
};
use opentrail_protocol::{ApiError, Exception};
use serde_json::{Map, Value, json};

use crate::App;
use crate::api::{CallContext, answer, read_call_body, record_call};

/// `X-Amz-Target` prefix of the KMS API.
pub(crate) const TARGET_PREFIX: &str = "TrentService.";
/// Largest request body (a 4 KB plaintext in base64, with room to spare).
const MAX_BODY: usize = 64 * 1024;
/// Most items one List call returns.
const MAX_LIMIT: u64 = 1000;
const DEFAULT_LIMIT: u64 = 100;

/// The operations served, and whether each is read-only (as CloudTrail records them).
fn lookup(op: &str) -> Option<bool> {
    Some(match op {
        "CreateKey"
        | "EnableKey"
        | "DisableKey"
        | "ScheduleKeyDeletion"
        | "CancelKeyDeletion"
        | "CreateAlias"
        | "UpdateAlias"
        | "DeleteAlias"
        | "EnableKeyRotation"
        | "DisableKeyRotation"
        | "RotateKeyOnDemand"
        | "TagResource"
        | "UntagResource" => false,
        "DescribeKey"
        | "ListKeys"
        | "ListAliases"
        | "GetKeyRotationStatus"
        | "ListResourceTags"
        | "GenerateDataKey"
        | "GenerateDataKeyWithoutPlaintext"
        | "Encrypt"
        | "Decrypt" => true,
        _ => return None,
    })
}

/// The API error a key service error is answered with.
pub(crate) fn api_error(e: KmsError) -> ApiError {
    let exception = match &e {
        KmsError::NotFound(_) => Exception::NotFoundException,
        KmsError::Disabled(_) => Exception::DisabledException,
        KmsError::InvalidState(_) => Exception::KMSInvalidStateException,
        KmsError::AlreadyExists(_) => Exception::AlreadyExistsException,
        KmsError::InvalidAliasName(_) => Exception::InvalidAliasNameException,
        KmsError::InvalidArn(_) => Exception::InvalidArnException,
        KmsError::Validation(_) => Exception::ValidationException,
        KmsError::InvalidCiphertext(_) => Exception::InvalidCiphertextException,
        KmsError::IncorrectKey(_) => Exception::IncorrectKeyException,
        KmsError::LimitExceeded(_) => Exception::LimitExceededException,
        KmsError::Internal(_) => Exception::KMSInternalException,
    };
    ApiError::new(exception, e.to_string())
}

fn validation(msg: impl Into<String>) -> ApiError {
    ApiError::new(Exception::ValidationException, msg)
}

/// The request's members, with typed accessors that say what is wrong.
struct Req<'a>(&'a Map<String, Value>);

impl Req<'_> {
    fn str(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(validation(format!("{name} must be a string"))),
        }
    }

    fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.str(name)?.ok_or_else(|| {
            validation(format!(
                "1 validation error detected: Value null at '{}' failed to satisfy constraint: Member must not be null",
                lower_first(name)
            ))
        })
    }

    fn uint(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| validation(format!("{name} must be a positive whole number"))),
            Some(_) => Err(validation(format!("{name} must be a number"))),
        }
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(validation(format!("{name} must be true or false"))),
        }
    }

    fn blob(&self, name: &str) -> Result<Vec<u8>, ApiError> {
        let text = self.required(name)?;
        B64.decode(text)
            .map_err(|_| validation(format!("{name} is not valid base64")))
    }

    fn context(&self) -> Result<BTreeMap<String, String>, ApiError> {
        match self.0.get("EncryptionContext") {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    _ => Err(validation("EncryptionContext values must be strings")),
                })
                .collect(),
            Some(_) => Err(validation("EncryptionContext must be a map of strings")),
        }
    }

    fn tags(&self, name: &str) -> Result<Vec<KeyTag>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                validation(format!(
                    "{name} must be a list of {{TagKey, TagValue}}: {e}"
                ))
            }),
        }
    }

    fn limit(&self) -> Result<usize, ApiError> {
        let n = self.uint("Limit")?.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&n) {
            return Err(validation(format!(
                "Limit must be between 1 and {MAX_LIMIT}, not {n}"
            )));
        }
        Ok(usize::try_from(n).unwrap_or(100))
    }

    fn marker(&self) -> Result<usize, ApiError> {
        match self.str("Marker")? {
            None => Ok(0),
            Some(m) => m
                .strip_prefix("m")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| {
                    ApiError::new(
                        Exception::InvalidMarkerException,
                        format!("Marker {m} is not one this server gave"),
                    )
                }),
        }
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_lowercase().to_string() + c.as_str())
        .unwrap_or_default()
}

fn secs(ms: i64) -> Value {
    json!(ms as f64 / 1000.0)
}

fn metadata(key: &Key, account: &str) -> Value {
    let mut m = json!({
        "AWSAccountId": account,
        "KeyId": key.id,
        "Arn": key.arn(account),
        "CreationDate": secs(key.created_ms),
        "Enabled": key.state == KeyState::Enabled,
        "Description": key.description,
        "KeyUsage": "ENCRYPT_DECRYPT",
        "KeyState": key.state.as_str(),
        "Origin": "AWS_KMS",
        "KeyManager": "CUSTOMER",
        "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT",
        "KeySpec": "SYMMETRIC_DEFAULT",
        "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
        "MultiRegion": false,
    });
    if let Some(d) = key.deletion_ms {
        m["DeletionDate"] = secs(d);
    }
    m
}

/// One page of `items` from `marker`, with KMS's `Truncated` / `NextMarker`.
fn page(items: Vec<Value>, member: &str, r: &Req<'_>) -> Result<Value, ApiError> {
    let (from, limit) = (r.marker()?, r.limit()?);
    let total = items.len();
    let chunk: Vec<Value> = items.into_iter().skip(from).take(limit).collect();
    let next = from + chunk.len();
    let mut out = json!({ member: chunk, "Truncated": next < total });
    if next < total {
        out["NextMarker"] = json!(format!("m{next}"));
    }
    Ok(out)
}

/// The resource a call is authorized on: the key (or alias) ARN it names, or `*`.
fn resource(store: &Keystore, account: &str, region: &str, op: &str, r: &Req<'_>) -> String {
    let named = match op {
        "CreateKey" | "ListKeys" => None,
        "ListAliases" => r.str("KeyId").ok().flatten(),
        "CreateAlias" | "UpdateAlias" => r.str("TargetKeyId").ok().flatten(),
        "DeleteAlias" => r.str("AliasName").ok().flatten(),
        "Decrypt" => {
            let from_blob = r
                .blob("CiphertextBlob")
                .ok()
                .and_then(|b| Keystore::blob_key_id(&b).ok());
            return match from_blob {
                Some(id) => format!("arn:aws:kms:{region}:{account}:key/{id}"),
                None => "*".to_owned(),
            };
        }
        _ => r.str("KeyId").ok().flatten(),
    };
    let Some(named) = named else {
        return "*".to_owned();
    };
    match KeyRef::parse(named) {
        Ok(k) => match store.resolve(account, region, &k) {
            Ok(key) => key.arn(account),
            Err(_) => match k {
                KeyRef::Id {
                    id,
                    region: rg,
                    account: a,
                } => format!(
                    "arn:aws:kms:{}:{}:key/{id}",
                    rg.as_deref().unwrap_or(region),
                    a.as_deref().unwrap_or(account)
                ),
                KeyRef::Alias {
                    name,
                    region: rg,
                    account: a,
                } => format!(
                    "arn:aws:kms:{}:{}:{name}",
                    rg.as_deref().unwrap_or(region),
                    a.as_deref().unwrap_or(account)
                ),
            },
        },
        Err(_) => "*".to_owned(),
    }
}

/// Runs a change on a blocking thread (the keystore is stored in SQLite).
async fn change<T: Send + 'static>(
    kms: &Arc<KeyService>,
    f: impl FnOnce(&mut Keystore, &opentrail_delivery::MasterKey, &str) -> Result<T, KmsError>
    + Send
    + 'static,
) -> Result<T, ApiError> {
    let kms = Arc::clone(kms);
    tokio::task::spawn_blocking(move || {
        let account = kms.account().to_owned();
        kms.change(|s, m| f(s, m, &account))
    })
    .await
    .map_err(|e| ApiError::new(Exception::KMSInternalException, e.to_string()))?
    .map_err(api_error)
}

fn key_id_of(
    store: &Keystore,
    account: &str,
    region: &str,
    r: &Req<'_>,
    member: &str,
) -> Result<String, ApiError> {
    let k = KeyRef::parse(r.required(member)?).map_err(api_error)?;
    Ok(store
        .resolve(account, region, &k)
        .map_err(api_error)?
        .id
        .clone())
}

async fn dispatch(app: &App, region: &str, op: &str, r: &Req<'_>) -> Result<Value, ApiError> {
    let kms = &app.kms;
    let account = kms.account().to_owned();
    let store = kms.snapshot().map_err(api_error)?;
    let region_s = region.to_owned();
    let now = App::now_ms();
    match op {
        "CreateKey" => {
            if r.str("Policy")?.is_some() {
                return Err(ApiError::new(
                    Exception::UnsupportedOperationException,
                    "Key policies are not supported: access to keys is granted by IAM policies (kms:* actions on the key ARN).",
                ));
            }
            for (member, allowed) in [
                ("KeyUsage", "ENCRYPT_DECRYPT"),
                ("KeySpec", "SYMMETRIC_DEFAULT"),
                ("CustomerMasterKeySpec", "SYMMETRIC_DEFAULT"),
                ("Origin", "AWS_KMS"),
            ] {
                if let Some(v) = r.str(member)?
                    && v != allowed
                {
                    return Err(ApiError::new(
                        Exception::UnsupportedOperationException,
                        format!(
                            "{member} {v} is not supported: this key service makes {allowed} keys only."
                        ),
                    ));
                }
            }
            if r.bool("MultiRegion")? == Some(true) {
                return Err(ApiError::new(
                    Exception::UnsupportedOperationException,
                    "Multi-Region keys are not supported.",
                ));
            }
            let description = r.str("Description")?.unwrap_or_default().to_owned();
            let tags = r.tags("Tags")?;
            let key = change(kms, move |s, m, _| {
                s.create_key(m, &region_s, &description, tags, now).cloned()
            })
            .await?;
            Ok(json!({ "KeyMetadata": metadata(&key, &account) }))
        }
        "DescribeKey" => {
            let k = KeyRef::parse(r.required("KeyId")?).map_err(api_error)?;
            let key = store.resolve(&account, region, &k).map_err(api_error)?;
            Ok(json!({ "KeyMetadata": metadata(key, &account) }))
        }
        "ListKeys" => {
            let items = store
                .keys
                .values()
                .filter(|k| k.region == region)
                .map(|k| json!({"KeyId": k.id, "KeyArn": k.arn(&account)}))
                .collect();
            page(items, "Keys", r)
        }
        "EnableKey" | "DisableKey" => {
            let id = key_id_of(&store, &account, region, r, "KeyId")?;
            let on = op == "EnableKey";
            change(kms, move |s, _, a| s.set_enabled(&id, on, a)).await?;
            Ok(json!({}))
        }
        "ScheduleKeyDeletion" => {
            let id = key_id_of(&store, &account, region, r, "KeyId")?;
            let days = r
                .uint("PendingWindowInDays")?
                .unwrap_or(u64::from(DEFAULT_DELETION_DAYS));
            let days = u32::try_from(days).unwrap_or(u32::MAX);
            let id2 = id.clone();
            let at = change(kms, move |s, _, a| s.schedule_deletion(&id2, days, now, a)).await?;
            Ok(json!({
                "KeyId": format!("arn:aws:kms:{region}:{account}:key/{id}"),
                "DeletionDate": secs(at),
                "KeyState": "PendingDeletion",
                "PendingWindowInDays": days,
            }))
        }
        "CancelKeyDeletion" => {
            let id = key_id_of(&store, &account, region, r, "KeyId")?;
            let id2 = id.clone();
            change(kms, move |s, _, a| s.cancel_deletion(&id2, a)).await?;
            Ok(json!({ "KeyId": format!("arn:aws:kms:{region}:{account}:key/{id}") }))
        }
        "CreateAlias" | "UpdateAlias" => {
            let name = r.required("AliasName")?.to_owned();
            let target = key_id_of(&store, &account, region, r, "TargetKeyId")?;
            let create = op == "CreateAlias";
            change(kms, move |s, _, a| {
                if create {
                    s.create_alias(&name, &region_s, &target, now, a)
                } else {
                    s.update_alias(&name, &region_s, &target, now, a)
                }
            })
            .await?;
            Ok(json!({}))
        }
        "DeleteAlias" => {
            let name = r.required("AliasName")?.to_owned();
            change(kms, move |s, _, a| s.delete_alias(&name, &region_s, a)).await?;
            Ok(json!({}))
        }
        "ListAliases" => {
            let only = match r.str("KeyId")? {
                Some(k) => {
                    let k = KeyRef::parse(k).map_err(api_error)?;
                    Some(
                        store
                            .resolve(&account, region, &k)
                            .map_err(api_error)?
                            .id
                            .clone(),
                    )
                }
                None => None,
            };
            let items = store
                .aliases
                .iter()
                .filter(|a| a.region == region && only.as_ref().is_none_or(|k| *k == a.key_id))
                .map(|a| {
                    json!({
                        "AliasName": a.name,
                        "AliasArn": a.arn(&account),
                        "TargetKeyId": a.key_id,
                        "CreationDate": secs(a.created_ms),
                        "LastUpdatedDate": secs(a.updated_ms),
                    })
                })
                .collect();
            page(items, "Aliases", r)
        }
        "EnableKeyRotation" | "DisableKeyRotation" => {
            let id = key_id_of(&store, &account, region, r, "KeyId")?;
            let days = if op == "EnableKeyRotation" {
                let d = r
                    .uint("RotationPeriodInDays")?
                    .unwrap_or(u64::from(DEFAULT_ROTATION_DAYS));
                Some(u32::try_from(d).unwrap_or(u32::MAX))
            } else {
                None
            };
            change(kms, move |s, _, a| s.set_rotation(&id, days, a)).await?;
            Ok(json!({}))
        }
        "GetKeyRotationStatus" => {
            let k = KeyRef::parse(r.required("KeyId")?).map_err(api_error)?;
            let key = store.resolve(&account, region, &k).map_err(api_error)?;
            let mut out = json!({
                "KeyId": key.arn(&account),
                "KeyRotationEnabled": key.rotation_days.is_some(),
            });
            if let (Some(d), Some(next)) = (key.rotation_days, key.next_rotation_ms()) {
                out["RotationPeriodInDays"] = json!(d);
                out["NextRotationDate"] = secs(next);
            }
            Ok(out)
        }
        "RotateKeyOnDemand" => {
            let id = key_id_of(&store, &account, region, r, "KeyId")?;
            let id2 = id.clone();
            change(kms, move |s, m, a| s.rotate(m, &id2, now, a)).await?;
            Ok(json!({ "KeyId": id }))
        }
        "TagResource" => {
            let id = key_id_of(&store, &account, region, r, "KeyId")?;
            let tags = r.tags("Tags")?;
            change(kms, move |s, _, _| s.tag_key(&id, tags)).await?;
            Ok(json!({}))
        }
        "UntagResource" => {
            let id = key_id_of(&store, &account, region, r, "KeyId")?;
            let keys: Vec<String> = match r.0.get("TagKeys") {
                Some(v) => serde_json::from_value(v.clone())
                    .map_err(|_| validation("TagKeys must be a list of strings"))?,
                None => return Err(validation("TagKeys is required")),
            };
            change(kms, move |s, _, _| s.untag_key(&id, &keys)).await?;
            Ok(json!({}))
        }
        "ListResourceTags" => {
            let k = KeyRef::parse(r.required("KeyId")?).map_err(api_error)?;
            let key = store.resolve(&account, region, &k).map_err(api_error)?;
            let items = key
                .tags
                .iter()
                .map(|t| serde_json::to_value(t).unwrap_or(Value::Null))
                .collect();
            page(items, "Tags", r)
        }
        "GenerateDataKey" | "GenerateDataKeyWithoutPlaintext" => {
            let bytes = match (r.str("KeySpec")?, r.uint("NumberOfBytes")?) {
                (Some(_), Some(_)) => {
                    return Err(validation("Give KeySpec or NumberOfBytes, not both."));
                }
                (Some("AES_256"), None) | (None, None) => 32,
                (Some("AES_128"), None) => 16,
                (Some(other), None) => {
                    return Err(validation(format!(
                        "KeySpec {other} is not AES_256 or AES_128"
                    )));
                }
                (None, Some(n)) if (1..=1024).contains(&n) => usize::try_from(n).unwrap_or(32),
                (None, Some(n)) => {
                    return Err(validation(format!(
                        "NumberOfBytes must be between 1 and 1024, not {n}"
                    )));
                }
            };
            let k = KeyRef::parse(r.required("KeyId")?).map_err(api_error)?;
            let key = store.resolve(&account, region, &k).map_err(api_error)?;
            let mut plain = vec![0u8; bytes];
            aws_lc_rs::rand::fill(&mut plain)
                .map_err(|_| ApiError::new(Exception::KMSInternalException, "no randomness"))?;
            let blob = store
                .encrypt(kms.master(), key, &account, &plain, &r.context()?)
                .map_err(api_error)?;
            let mut out = json!({ "CiphertextBlob": B64.encode(blob), "KeyId": key.arn(&account) });
            if op == "GenerateDataKey" {
                out["Plaintext"] = json!(B64.encode(&plain));
            }
            Ok(out)
        }
        "Encrypt" => {
            let plain = r.blob("Plaintext")?;
            if plain.is_empty() || plain.len() > MAX_PLAINTEXT {
                return Err(validation(format!(
                    "Plaintext must be 1 to {MAX_PLAINTEXT} bytes, not {}",
                    plain.len()
                )));
            }
            check_algorithm(r)?;
            let k = KeyRef::parse(r.required("KeyId")?).map_err(api_error)?;
            let key = store.resolve(&account, region, &k).map_err(api_error)?;
            let blob = store
                .encrypt(kms.master(), key, &account, &plain, &r.context()?)
                .map_err(api_error)?;
            Ok(json!({
                "CiphertextBlob": B64.encode(blob),
                "KeyId": key.arn(&account),
                "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
            }))
        }
        "Decrypt" => {
            let blob = r.blob("CiphertextBlob")?;
            check_algorithm(r)?;
            let (plain, key) = store
                .decrypt(kms.master(), &account, &blob, &r.context()?)
                .map_err(api_error)?;
            if key.region != region {
                return Err(api_error(KmsError::InvalidCiphertext(
                    "The ciphertext was made by a key of another region.".into(),
                )));
            }
            if let Some(named) = r.str("KeyId")? {
                let k = KeyRef::parse(named).map_err(api_error)?;
                let want = store.resolve(&account, region, &k).map_err(api_error)?;
                if want.id != key.id {
                    return Err(api_error(KmsError::IncorrectKey(format!(
                        "The key ID in the request does not identify the key that encrypted the ciphertext ({}).",
                        key.arn(&account)
                    ))));
                }
            }
            Ok(json!({
                "KeyId": key.arn(&account),
                "Plaintext": B64.encode(plain),
                "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
            }))
        }
        _ => Err(ApiError::new(
            Exception::UnsupportedOperationException,
            format!("{op} is not implemented by this OpenTrail server"),
        )),
    }
}

fn check_algorithm(r: &Req<'_>) -> Result<(), ApiError> {
    match r.str("EncryptionAlgorithm")? {
        None | Some("SYMMETRIC_DEFAULT") => Ok(()),
        Some(other) => Err(validation(format!(
            "EncryptionAlgorithm {other} is not supported: keys here are SYMMETRIC_DEFAULT."
        ))),
    }
}

/// The request as its self-audit record shows it: without plaintexts or ciphertexts.
fn audited_request(value: &Value) -> Vec<u8> {
    let mut v = value.clone();
    if let Value::Object(m) = &mut v {
        m.remove("Plaintext");
        m.remove("CiphertextBlob");
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

async fn run(
    app: &App,
    ctx: &mut CallContext,
    parts: &Parts,
    body: &[u8],
    op: &str,
    read_only: Option<bool>,
) -> Result<Vec<u8>, ApiError> {
    let caller = ctx.authenticate(app, parts, body, &["kms"])?;
    let value = crate::api::json_body(body)?;
    if read_only.is_none() {
        return Err(ApiError::new(
            Exception::UnsupportedOperationException,
            format!("{op} is not implemented by this OpenTrail server"),
        ));
    }
    let Value::Object(map) = &value else {
        return Err(ApiError::new(
            Exception::SerializationException,
            "the request body must be a JSON object",
        ));
    };
    let r = Req(map);
    let store = app.kms.snapshot().map_err(api_error)?;
    let resource = resource(&store, app.kms.account(), &ctx.region, op, &r);
    if resource.contains(":key/") {
        ctx.resources = vec![opentrail_model::record::Resource {
            arn: Some(resource.clone()),
            account_id: Some(app.kms.account().to_owned()),
            resource_type: Some("AWS::KMS::Key".to_owned()),
            extra: serde_json::Map::new(),
        }];
    }
    app.access.authorize(
        &caller,
        &format!("kms:{op}"),
        &resource,
        &ctx.source_ip,
        &ctx.region,
        ctx.now_ms,
    )?;
    let out = dispatch(app, &ctx.region.clone(), op, &r).await?;
    serde_json::to_vec(&out)
        .map_err(|e| ApiError::new(Exception::KMSInternalException, e.to_string()))
}

pub(crate) async fn handle(
    app: Arc<App>,
    peer: SocketAddr,
    parts: Parts,
    body: Body,
    op: String,
) -> Response {
    let mut ctx = CallContext::new(&app, &parts.headers, peer, "kms.amazonaws.com");
    let read_only = lookup(&op);
    let (audited, result) = match read_call_body(body, MAX_BODY).await {
        Err(e) => (Vec::new(), Err(e)),
        Ok(b) => {
            let audited = serde_json::from_slice::<Value>(&b)
                .map(|v| audited_request(&v))
                .unwrap_or_default();
            (
                audited,
                run(&app, &mut ctx, &parts, &b, &op, read_only).await,
            )
        }
    };
    let event_name: String = op
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(128)
        .collect();
    // A data key's plaintext never enters a record: crypto operations are read-only, and
    // read-only calls record no response.
    let read_only = read_only.unwrap_or(false);
    if let Err(refused) = record_call(&app, &ctx, &event_name, read_only, &audited, &result).await {
        return refused;
    }
    answer(&ctx, result)
}
