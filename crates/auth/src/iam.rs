//! The admin API over the [`Directory`]: IAM's actions, members and error codes, in JSON.
//! Request members are IAM's (`UserName`, `PolicyArn`, ...); responses follow IAM's result
//! shapes (`{"User": {...}}`, `{"AccessKey": {...}}`, ...). Pure: the caller supplies new ids,
//! secrets (already sealed) and the time, and stores the directory when a call changed it.

use serde_json::{Map, Value, json};

use crate::directory::{
    AccessKey, CustomerPolicy, Directory, Group, KeyStatus, MANAGED_ARN_PREFIX, MANAGED_POLICIES,
    MAX_ATTACHED_POLICIES, MAX_CUSTOMER_POLICIES, MAX_GROUP_INLINE_CHARS, MAX_GROUPS,
    MAX_GROUPS_PER_USER, MAX_INLINE_POLICIES, MAX_KEYS_PER_USER, MAX_MANAGED_POLICY_CHARS,
    MAX_USER_INLINE_CHARS, MAX_USERS, Principal, PrincipalKind, User, group_arn, managed_policy,
    policy_arn, user_arn,
};
use crate::policy::Policy;

/// Every action the admin API implements, with whether it only reads.
pub const ACTIONS: [(&str, bool); 36] = [
    ("CreateUser", false),
    ("GetUser", true),
    ("ListUsers", true),
    ("DeleteUser", false),
    ("CreateAccessKey", false),
    ("ListAccessKeys", true),
    ("UpdateAccessKey", false),
    ("DeleteAccessKey", false),
    ("CreateGroup", false),
    ("GetGroup", true),
    ("ListGroups", true),
    ("DeleteGroup", false),
    ("AddUserToGroup", false),
    ("RemoveUserFromGroup", false),
    ("ListGroupsForUser", true),
    ("AttachUserPolicy", false),
    ("DetachUserPolicy", false),
    ("ListAttachedUserPolicies", true),
    ("AttachGroupPolicy", false),
    ("DetachGroupPolicy", false),
    ("ListAttachedGroupPolicies", true),
    ("PutUserPolicy", false),
    ("GetUserPolicy", true),
    ("DeleteUserPolicy", false),
    ("ListUserPolicies", true),
    ("PutGroupPolicy", false),
    ("GetGroupPolicy", true),
    ("DeleteGroupPolicy", false),
    ("ListGroupPolicies", true),
    ("CreatePolicy", false),
    ("GetPolicy", true),
    ("GetPolicyVersion", true),
    ("ListPolicies", true),
    ("DeletePolicy", false),
    ("ListEntitiesForPolicy", true),
    ("GetAccountAuthorizationDetails", true),
];

/// Whether `action` is one of [`ACTIONS`], and if so whether it only reads.
pub fn lookup_action(action: &str) -> Option<bool> {
    ACTIONS
        .iter()
        .find(|(a, _)| *a == action)
        .map(|(_, ro)| *ro)
}

/// An IAM error: code, HTTP status, message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct IamError {
    pub code: &'static str,
    pub status: u16,
    pub message: String,
}

fn error(code: &'static str, status: u16, message: String) -> IamError {
    IamError {
        code,
        status,
        message,
    }
}
fn no_such(message: String) -> IamError {
    error("NoSuchEntity", 404, message)
}
fn exists(message: String) -> IamError {
    error("EntityAlreadyExists", 409, message)
}
fn limit(message: String) -> IamError {
    error("LimitExceeded", 409, message)
}
fn conflict(message: String) -> IamError {
    error("DeleteConflict", 409, message)
}
fn invalid(message: String) -> IamError {
    error("ValidationError", 400, message)
}
fn malformed(message: String) -> IamError {
    error("MalformedPolicyDocument", 400, message)
}

/// What the API needs from the server: fresh ids and sealed secrets.
pub trait Minter {
    /// A new unique id with IAM's prefix (`AIDA` users, `AGPA` groups, `ANPA` policies).
    fn id(&self, prefix: &str) -> Result<String, IamError>;
    /// A new access key: (id, secret, sealed secret).
    fn access_key(&self) -> Result<(String, String, String), IamError>;
}

/// The time format of IAM's dates.
pub fn iso(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

fn opt_str<'a>(body: &'a Value, name: &str) -> Result<Option<&'a str>, IamError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(format!("{name} must be a string"))),
    }
}

fn req_str<'a>(body: &'a Value, name: &str) -> Result<&'a str, IamError> {
    opt_str(body, name)?.ok_or_else(|| {
        invalid(format!(
            "1 validation error detected: Value null at '{}' failed to satisfy constraint: Member must not be null",
            lower_first(name)
        ))
    })
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// IAM names: 1 to `max` characters of letters, digits and `+=,.@_-`.
fn check_name(kind: &str, name: &str, max: usize) -> Result<(), IamError> {
    let ok = !name.is_empty()
        && name.chars().count() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "The specified value for {kind} is invalid: it must be 1 to {max} characters of letters, digits and +=,.@_-"
        )))
    }
}

fn check_path(path: &str) -> Result<(), IamError> {
    let ok = path.starts_with('/')
        && path.ends_with('/')
        && path.len() <= 512
        && path
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '\\' || c == '/');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "The specified value for path is invalid: '{path}' must begin and end with / and be at most 512 printable characters"
        )))
    }
}

fn user_json(account: &str, u: &User) -> Value {
    json!({
        "Path": u.path,
        "UserName": u.name,
        "UserId": u.user_id,
        "Arn": user_arn(account, &u.path, &u.name),
        "CreateDate": iso(u.created_ms),
    })
}

fn group_json(account: &str, g: &Group) -> Value {
    json!({
        "Path": g.path,
        "GroupName": g.name,
        "GroupId": g.group_id,
        "Arn": group_arn(account, &g.path, &g.name),
        "CreateDate": iso(g.created_ms),
    })
}

fn key_json(user: &str, k: &AccessKey) -> Value {
    json!({
        "UserName": user,
        "AccessKeyId": k.id,
        "Status": k.status.as_str(),
        "CreateDate": iso(k.created_ms),
    })
}

fn parse_doc(text: &str, max: usize) -> Result<(), IamError> {
    Policy::parse(text, max)
        .map(|_| ())
        .map_err(|e| malformed(e.0))
}

/// Accepts a policy document as a JSON string (IAM's form) or as an object.
fn doc_member(body: &Value) -> Result<String, IamError> {
    match body.get("PolicyDocument") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v @ Value::Object(_)) => Ok(v.to_string()),
        _ => Err(invalid(
            "PolicyDocument is required: the policy as a JSON document".to_owned(),
        )),
    }
}

fn attachment_count(dir: &Directory, arn: &str) -> usize {
    dir.users
        .values()
        .filter(|u| u.attached.contains(arn))
        .count()
        + dir
            .groups
            .values()
            .filter(|g| g.attached.contains(arn))
            .count()
}

/// A stable id for a ready-made policy: `ANPA` and 17 characters from its name's hash.
fn managed_policy_id(name: &str) -> String {
    let mut h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut id = String::from("ANPA");
    for _ in 0..17 {
        id.push(char::from(alphabet[usize::try_from(h % 32).unwrap_or(0)]));
        h = (h / 32) ^ h.rotate_left(17);
    }
    id
}

fn policy_json(dir: &Directory, account: &str, arn: &str) -> Option<Value> {
    if let Some((name, description, _)) = managed_policy(arn) {
        return Some(json!({
            "PolicyName": name,
            "PolicyId": managed_policy_id(name),
            "Arn": arn,
            "Path": "/",
            "DefaultVersionId": "v1",
            "AttachmentCount": attachment_count(dir, arn),
            "IsAttachable": true,
            "Description": description,
        }));
    }
    dir.policies
        .values()
        .find(|p| policy_arn(account, &p.path, &p.name) == arn)
        .map(|p| {
            let mut v = json!({
                "PolicyName": p.name,
                "PolicyId": p.policy_id,
                "Arn": arn,
                "Path": p.path,
                "DefaultVersionId": "v1",
                "AttachmentCount": attachment_count(dir, arn),
                "IsAttachable": true,
                "CreateDate": iso(p.created_ms),
                "UpdateDate": iso(p.updated_ms),
            });
            if let (Some(d), Some(m)) = (&p.description, v.as_object_mut()) {
                m.insert("Description".to_owned(), json!(d));
            }
            v
        })
}

/// Which managed policy a call names: `PolicyArn`, or `PolicyName` (a ready-made policy, or
/// one of the account's own).
fn named_policy(dir: &Directory, account: &str, body: &Value) -> Result<String, IamError> {
    if let Some(arn) = opt_str(body, "PolicyArn")? {
        if dir.policy_document(account, arn).is_none() {
            return Err(no_such(format!(
                "Policy {arn} does not exist or is not attachable."
            )));
        }
        return Ok(arn.to_owned());
    }
    if let Some(name) = opt_str(body, "PolicyName")? {
        if MANAGED_POLICIES.iter().any(|(n, _, _)| *n == name) {
            return Ok(format!("{MANAGED_ARN_PREFIX}{name}"));
        }
        if let Some(p) = dir.policies.get(&name.to_lowercase()) {
            return Ok(policy_arn(account, &p.path, &p.name));
        }
        return Err(no_such(format!(
            "Policy {name} does not exist (neither a ready-made policy nor one of this account's)."
        )));
    }
    Err(invalid("PolicyArn (or PolicyName) is required".to_owned()))
}

fn user_mut<'a>(dir: &'a mut Directory, name: &str) -> Result<&'a mut User, IamError> {
    dir.users
        .get_mut(&name.to_lowercase())
        .ok_or_else(|| no_such(format!("The user with name {name} cannot be found.")))
}

fn group_mut<'a>(dir: &'a mut Directory, name: &str) -> Result<&'a mut Group, IamError> {
    dir.groups
        .get_mut(&name.to_lowercase())
        .ok_or_else(|| no_such(format!("The group with name {name} cannot be found.")))
}

/// The user a key call is about: `UserName`, else the calling user. Root must name one (the
/// root's own keys are configured on the server, not managed here).
fn key_owner(body: &Value, caller: &Principal) -> Result<String, IamError> {
    if let Some(n) = opt_str(body, "UserName")? {
        return Ok(n.to_owned());
    }
    match (&caller.kind, &caller.user_name) {
        (PrincipalKind::User, Some(n)) => Ok(n.clone()),
        _ => Err(invalid(
            "UserName is required: the root user's access keys are set in the server's configuration"
                .to_owned(),
        )),
    }
}

/// The ARN an action is authorized against.
pub fn resource(dir: &Directory, account: &str, action: &str, body: &Value) -> String {
    let s = |n: &str| body.get(n).and_then(Value::as_str);
    let user = |n: &str| {
        let path = dir
            .users
            .get(&n.to_lowercase())
            .map(|u| u.path.as_str())
            .unwrap_or("/");
        user_arn(account, path, n)
    };
    match action {
        "ListUsers" | "ListGroups" | "ListPolicies" | "GetAccountAuthorizationDetails" => {
            "*".to_owned()
        }
        "CreatePolicy" => policy_arn(
            account,
            s("Path").unwrap_or("/"),
            s("PolicyName").unwrap_or_default(),
        ),
        "GetPolicy" | "GetPolicyVersion" | "DeletePolicy" | "ListEntitiesForPolicy" => {
            s("PolicyArn").unwrap_or("*").to_owned()
        }
        a if a.contains("Group")
            && !a.contains("ForUser")
            && a != "AddUserToGroup"
            && a != "RemoveUserFromGroup" =>
        {
            let name = s("GroupName").unwrap_or_default();
            let path = match a {
                "CreateGroup" => s("Path").unwrap_or("/"),
                _ => dir
                    .groups
                    .get(&name.to_lowercase())
                    .map(|g| g.path.as_str())
                    .unwrap_or("/"),
            };
            group_arn(account, path, name)
        }
        "CreateUser" => user_arn(
            account,
            s("Path").unwrap_or("/"),
            s("UserName").unwrap_or_default(),
        ),
        _ => match s("UserName") {
            Some(n) => user(n),
            None => "*".to_owned(),
        },
    }
}

/// Runs one admin action on `dir`. Returns the response; `dir` is changed only when the call
/// succeeds (callers store it after a successful non-read-only call).
pub fn call(
    dir: &mut Directory,
    account: &str,
    caller: &Principal,
    action: &str,
    body: &Value,
    now_ms: i64,
    mint: &dyn Minter,
) -> Result<Value, IamError> {
    if !body.is_object() {
        return Err(invalid("the request body must be a JSON object".to_owned()));
    }
    let mut work = dir.clone();
    let out = run(&mut work, account, caller, action, body, now_ms, mint)?;
    *dir = work;
    Ok(out)
}

#[allow(clippy::too_many_lines)]
fn run(
    dir: &mut Directory,
    account: &str,
    caller: &Principal,
    action: &str,
    body: &Value,
    now_ms: i64,
    mint: &dyn Minter,
) -> Result<Value, IamError> {
    let empty = || Ok(json!({}));
    match action {
        "CreateUser" => {
            let name = req_str(body, "UserName")?;
            check_name("userName", name, 64)?;
            let path = opt_str(body, "Path")?.unwrap_or("/");
            check_path(path)?;
            if dir.users.contains_key(&name.to_lowercase()) {
                return Err(exists(format!("User with name {name} already exists.")));
            }
            if dir.users.len() >= MAX_USERS {
                return Err(limit(format!(
                    "Cannot exceed quota for UsersPerAccount: {MAX_USERS}"
                )));
            }
            let user = User {
                name: name.to_owned(),
                user_id: mint.id("AIDA")?,
                path: path.to_owned(),
                created_ms: now_ms,
                access_keys: Vec::new(),
                attached: Default::default(),
                inline: Default::default(),
                groups: Default::default(),
            };
            let out = json!({ "User": user_json(account, &user) });
            dir.users.insert(name.to_lowercase(), user);
            Ok(out)
        }
        "GetUser" => match opt_str(body, "UserName")? {
            Some(n) => {
                let u = user_mut(dir, n)?;
                Ok(json!({ "User": user_json(account, u) }))
            }
            None => match caller.kind {
                PrincipalKind::Root => Ok(json!({"User": {
                    "UserId": caller.principal_id, "Arn": caller.arn, "CreateDate": iso(0)
                }})),
                PrincipalKind::User => {
                    let n = caller.user_name.clone().unwrap_or_default();
                    let u = user_mut(dir, &n)?;
                    Ok(json!({ "User": user_json(account, u) }))
                }
            },
        },
        "ListUsers" => {
            let prefix = opt_str(body, "PathPrefix")?.unwrap_or("/");
            let users: Vec<Value> = dir
                .users
                .values()
                .filter(|u| u.path.starts_with(prefix))
                .map(|u| user_json(account, u))
                .collect();
            Ok(json!({"Users": users, "IsTruncated": false}))
        }
        "DeleteUser" => {
            let name = req_str(body, "UserName")?;
            let u = user_mut(dir, name)?;
            if !u.access_keys.is_empty()
                || !u.attached.is_empty()
                || !u.inline.is_empty()
                || !u.groups.is_empty()
            {
                return Err(conflict(format!(
                    "Cannot delete entity, must delete access keys, detach and delete policies and leave groups first (user {name})."
                )));
            }
            dir.users.remove(&name.to_lowercase());
            empty()
        }
        "CreateAccessKey" => {
            let name = key_owner(body, caller)?;
            let u = user_mut(dir, &name)?;
            if u.access_keys.len() >= MAX_KEYS_PER_USER {
                return Err(limit(format!(
                    "Cannot exceed quota for AccessKeysPerUser: {MAX_KEYS_PER_USER}"
                )));
            }
            let (id, secret, sealed) = mint.access_key()?;
            let key = AccessKey {
                id,
                sealed_secret: sealed,
                status: KeyStatus::Active,
                created_ms: now_ms,
            };
            let mut shown = key_json(&u.name, &key);
            if let Some(m) = shown.as_object_mut() {
                m.insert("SecretAccessKey".to_owned(), json!(secret));
            }
            u.access_keys.push(key);
            Ok(json!({ "AccessKey": shown }))
        }
        "ListAccessKeys" => {
            let name = key_owner(body, caller)?;
            let u = user_mut(dir, &name)?;
            let keys: Vec<Value> = u.access_keys.iter().map(|k| key_json(&u.name, k)).collect();
            Ok(json!({"AccessKeyMetadata": keys, "IsTruncated": false}))
        }
        "UpdateAccessKey" | "DeleteAccessKey" => {
            let name = key_owner(body, caller)?;
            let id = req_str(body, "AccessKeyId")?;
            let status = if action == "UpdateAccessKey" {
                Some(match req_str(body, "Status")? {
                    "Active" => KeyStatus::Active,
                    "Inactive" => KeyStatus::Inactive,
                    other => {
                        return Err(invalid(format!(
                            "Status '{other}' is not valid: Active or Inactive"
                        )));
                    }
                })
            } else {
                None
            };
            let u = user_mut(dir, &name)?;
            let Some(pos) = u.access_keys.iter().position(|k| k.id == id) else {
                return Err(no_such(format!(
                    "The Access Key with id {id} cannot be found."
                )));
            };
            match status {
                Some(s) => u.access_keys[pos].status = s,
                None => {
                    u.access_keys.remove(pos);
                }
            }
            empty()
        }
        "CreateGroup" => {
            let name = req_str(body, "GroupName")?;
            check_name("groupName", name, 128)?;
            let path = opt_str(body, "Path")?.unwrap_or("/");
            check_path(path)?;
            if dir.groups.contains_key(&name.to_lowercase()) {
                return Err(exists(format!("Group with name {name} already exists.")));
            }
            if dir.groups.len() >= MAX_GROUPS {
                return Err(limit(format!(
                    "Cannot exceed quota for GroupsPerAccount: {MAX_GROUPS}"
                )));
            }
            let g = Group {
                name: name.to_owned(),
                group_id: mint.id("AGPA")?,
                path: path.to_owned(),
                created_ms: now_ms,
                attached: Default::default(),
                inline: Default::default(),
            };
            let out = json!({ "Group": group_json(account, &g) });
            dir.groups.insert(name.to_lowercase(), g);
            Ok(out)
        }
        "GetGroup" => {
            let name = req_str(body, "GroupName")?;
            let key = name.to_lowercase();
            let g = group_mut(dir, name)?.clone();
            let users: Vec<Value> = dir
                .users
                .values()
                .filter(|u| u.groups.contains(&key))
                .map(|u| user_json(account, u))
                .collect();
            Ok(json!({"Group": group_json(account, &g), "Users": users, "IsTruncated": false}))
        }
        "ListGroups" => {
            let prefix = opt_str(body, "PathPrefix")?.unwrap_or("/");
            let groups: Vec<Value> = dir
                .groups
                .values()
                .filter(|g| g.path.starts_with(prefix))
                .map(|g| group_json(account, g))
                .collect();
            Ok(json!({"Groups": groups, "IsTruncated": false}))
        }
        "DeleteGroup" => {
            let name = req_str(body, "GroupName")?;
            let key = name.to_lowercase();
            let g = group_mut(dir, name)?;
            if !g.attached.is_empty() || !g.inline.is_empty() {
                return Err(conflict(format!(
                    "Cannot delete entity, must detach and delete all policies first (group {name})."
                )));
            }
            if dir.users.values().any(|u| u.groups.contains(&key)) {
                return Err(conflict(format!(
                    "Cannot delete entity, must remove users from group first (group {name})."
                )));
            }
            dir.groups.remove(&key);
            empty()
        }
        "AddUserToGroup" | "RemoveUserFromGroup" => {
            let gname = req_str(body, "GroupName")?;
            let uname = req_str(body, "UserName")?;
            let gkey = group_mut(dir, gname)?.name.to_lowercase();
            let u = user_mut(dir, uname)?;
            if action == "AddUserToGroup" {
                if !u.groups.contains(&gkey) && u.groups.len() >= MAX_GROUPS_PER_USER {
                    return Err(limit(format!(
                        "Cannot exceed quota for GroupsPerUser: {MAX_GROUPS_PER_USER}"
                    )));
                }
                u.groups.insert(gkey);
            } else if !u.groups.remove(&gkey) {
                return Err(no_such(format!(
                    "The user {uname} is not in group {gname}."
                )));
            }
            empty()
        }
        "ListGroupsForUser" => {
            let name = req_str(body, "UserName")?;
            let u = user_mut(dir, name)?.clone();
            let groups: Vec<Value> = u
                .groups
                .iter()
                .filter_map(|g| dir.groups.get(g))
                .map(|g| group_json(account, g))
                .collect();
            Ok(json!({"Groups": groups, "IsTruncated": false}))
        }
        "AttachUserPolicy" | "DetachUserPolicy" | "AttachGroupPolicy" | "DetachGroupPolicy" => {
            let arn = named_policy(dir, account, body)?;
            let attach = action.starts_with("Attach");
            let set = if action.ends_with("UserPolicy") {
                &mut user_mut(dir, req_str(body, "UserName")?)?.attached
            } else {
                &mut group_mut(dir, req_str(body, "GroupName")?)?.attached
            };
            if attach {
                if !set.contains(&arn) && set.len() >= MAX_ATTACHED_POLICIES {
                    return Err(limit(format!(
                        "Cannot exceed quota for PoliciesPerUser/Group: {MAX_ATTACHED_POLICIES}"
                    )));
                }
                set.insert(arn);
            } else if !set.remove(&arn) {
                return Err(no_such(format!("Policy {arn} was not attached.")));
            }
            empty()
        }
        "ListAttachedUserPolicies" | "ListAttachedGroupPolicies" => {
            let set = if action == "ListAttachedUserPolicies" {
                user_mut(dir, req_str(body, "UserName")?)?.attached.clone()
            } else {
                group_mut(dir, req_str(body, "GroupName")?)?
                    .attached
                    .clone()
            };
            let list: Vec<Value> = set
                .iter()
                .map(|arn| {
                    let name = arn.rsplit('/').next().unwrap_or(arn);
                    json!({"PolicyName": name, "PolicyArn": arn})
                })
                .collect();
            Ok(json!({"AttachedPolicies": list, "IsTruncated": false}))
        }
        "PutUserPolicy" | "PutGroupPolicy" => {
            let pname = req_str(body, "PolicyName")?;
            check_name("policyName", pname, 128)?;
            let doc = doc_member(body)?;
            let (map, max) = if action == "PutUserPolicy" {
                (
                    &mut user_mut(dir, req_str(body, "UserName")?)?.inline,
                    MAX_USER_INLINE_CHARS,
                )
            } else {
                (
                    &mut group_mut(dir, req_str(body, "GroupName")?)?.inline,
                    MAX_GROUP_INLINE_CHARS,
                )
            };
            parse_doc(&doc, max)?;
            if !map.contains_key(pname) && map.len() >= MAX_INLINE_POLICIES {
                return Err(limit(format!(
                    "Cannot exceed quota for inline policies: {MAX_INLINE_POLICIES}"
                )));
            }
            map.insert(pname.to_owned(), doc);
            empty()
        }
        "GetUserPolicy" | "GetGroupPolicy" | "DeleteUserPolicy" | "DeleteGroupPolicy" => {
            let pname = req_str(body, "PolicyName")?;
            let user_side = action.ends_with("UserPolicy");
            let (owner_key, owner, map) = if user_side {
                let u = user_mut(dir, req_str(body, "UserName")?)?;
                ("UserName", u.name.clone(), &mut u.inline)
            } else {
                let g = group_mut(dir, req_str(body, "GroupName")?)?;
                ("GroupName", g.name.clone(), &mut g.inline)
            };
            if action.starts_with("Get") {
                let Some(doc) = map.get(pname) else {
                    return Err(no_such(format!(
                        "The {} policy with name {pname} cannot be found.",
                        if user_side { "user" } else { "group" }
                    )));
                };
                let mut out = Map::new();
                out.insert(owner_key.to_owned(), json!(owner));
                out.insert("PolicyName".to_owned(), json!(pname));
                out.insert("PolicyDocument".to_owned(), json!(doc));
                return Ok(Value::Object(out));
            }
            if map.remove(pname).is_none() {
                return Err(no_such(format!(
                    "The {} policy with name {pname} cannot be found.",
                    if user_side { "user" } else { "group" }
                )));
            }
            empty()
        }
        "ListUserPolicies" | "ListGroupPolicies" => {
            let map = if action == "ListUserPolicies" {
                user_mut(dir, req_str(body, "UserName")?)?.inline.clone()
            } else {
                group_mut(dir, req_str(body, "GroupName")?)?.inline.clone()
            };
            let names: Vec<&String> = map.keys().collect();
            Ok(json!({"PolicyNames": names, "IsTruncated": false}))
        }
        "CreatePolicy" => {
            let name = req_str(body, "PolicyName")?;
            check_name("policyName", name, 128)?;
            let path = opt_str(body, "Path")?.unwrap_or("/");
            check_path(path)?;
            let doc = doc_member(body)?;
            parse_doc(&doc, MAX_MANAGED_POLICY_CHARS)?;
            if dir.policies.contains_key(&name.to_lowercase())
                || MANAGED_POLICIES
                    .iter()
                    .any(|(n, _, _)| n.eq_ignore_ascii_case(name))
            {
                return Err(exists(format!(
                    "A policy called {name} already exists. Duplicate names are not allowed."
                )));
            }
            if dir.policies.len() >= MAX_CUSTOMER_POLICIES {
                return Err(limit(format!(
                    "Cannot exceed quota for PoliciesPerAccount: {MAX_CUSTOMER_POLICIES}"
                )));
            }
            let description = opt_str(body, "Description")?.map(str::to_owned);
            if description
                .as_ref()
                .is_some_and(|d| d.chars().count() > 1000)
            {
                return Err(invalid(
                    "Description must be at most 1000 characters".to_owned(),
                ));
            }
            let p = CustomerPolicy {
                name: name.to_owned(),
                policy_id: mint.id("ANPA")?,
                path: path.to_owned(),
                description,
                document: doc,
                created_ms: now_ms,
                updated_ms: now_ms,
            };
            let arn = policy_arn(account, &p.path, &p.name);
            dir.policies.insert(name.to_lowercase(), p);
            Ok(json!({ "Policy": policy_json(dir, account, &arn) }))
        }
        "GetPolicy" => {
            let arn = req_str(body, "PolicyArn")?;
            let p = policy_json(dir, account, arn)
                .ok_or_else(|| no_such(format!("Policy {arn} was not found.")))?;
            Ok(json!({ "Policy": p }))
        }
        "GetPolicyVersion" => {
            let arn = req_str(body, "PolicyArn")?;
            let version = opt_str(body, "VersionId")?.unwrap_or("v1");
            let doc = dir
                .policy_document(account, arn)
                .filter(|_| version == "v1")
                .ok_or_else(|| {
                    no_such(format!("Policy {arn} version {version} does not exist."))
                })?;
            Ok(
                json!({"PolicyVersion": {"Document": doc, "VersionId": "v1", "IsDefaultVersion": true}}),
            )
        }
        "ListPolicies" => {
            let scope = opt_str(body, "Scope")?.unwrap_or("All");
            let mut list = Vec::new();
            if matches!(scope, "All" | "AWS") {
                for (n, _, _) in MANAGED_POLICIES {
                    list.extend(policy_json(
                        dir,
                        account,
                        &format!("{MANAGED_ARN_PREFIX}{n}"),
                    ));
                }
            }
            if matches!(scope, "All" | "Local") {
                for p in dir.policies.values() {
                    list.extend(policy_json(
                        dir,
                        account,
                        &policy_arn(account, &p.path, &p.name),
                    ));
                }
            }
            if !matches!(scope, "All" | "AWS" | "Local") {
                return Err(invalid(format!(
                    "Scope '{scope}' is not valid: All, AWS or Local"
                )));
            }
            Ok(json!({"Policies": list, "IsTruncated": false}))
        }
        "ListEntitiesForPolicy" => {
            let arn = req_str(body, "PolicyArn")?;
            if dir.policy_document(account, arn).is_none() {
                return Err(no_such(format!("Policy {arn} was not found.")));
            }
            let users: Vec<Value> = dir
                .users
                .values()
                .filter(|u| u.attached.contains(arn))
                .map(|u| json!({"UserName": u.name, "UserId": u.user_id}))
                .collect();
            let groups: Vec<Value> = dir
                .groups
                .values()
                .filter(|g| g.attached.contains(arn))
                .map(|g| json!({"GroupName": g.name, "GroupId": g.group_id}))
                .collect();
            Ok(
                json!({"PolicyUsers": users, "PolicyGroups": groups, "PolicyRoles": [], "IsTruncated": false}),
            )
        }
        "DeletePolicy" => {
            let arn = req_str(body, "PolicyArn")?;
            if arn.starts_with(MANAGED_ARN_PREFIX) {
                return Err(invalid(format!(
                    "{arn} is a ready-made policy and cannot be deleted."
                )));
            }
            let Some(key) = dir
                .policies
                .iter()
                .find(|(_, p)| policy_arn(account, &p.path, &p.name) == arn)
                .map(|(k, _)| k.clone())
            else {
                return Err(no_such(format!("Policy {arn} was not found.")));
            };
            if attachment_count(dir, arn) > 0 {
                return Err(conflict(format!(
                    "Cannot delete a policy attached to entities (policy {arn})."
                )));
            }
            dir.policies.remove(&key);
            empty()
        }
        "GetAccountAuthorizationDetails" => {
            let users: Vec<Value> = dir
                .users
                .values()
                .map(|u| {
                    let mut v = user_json(account, u);
                    if let Some(m) = v.as_object_mut() {
                        m.insert(
                            "GroupList".to_owned(),
                            json!(
                                u.groups
                                    .iter()
                                    .filter_map(|g| dir.groups.get(g))
                                    .map(|g| g.name.clone())
                                    .collect::<Vec<_>>()
                            ),
                        );
                        m.insert("AttachedManagedPolicies".to_owned(), json!(u.attached));
                        m.insert(
                            "UserPolicyList".to_owned(),
                            json!(
                                u.inline
                                    .iter()
                                    .map(|(n, d)| json!({"PolicyName": n, "PolicyDocument": d}))
                                    .collect::<Vec<_>>()
                            ),
                        );
                    }
                    v
                })
                .collect();
            let groups: Vec<Value> = dir
                .groups
                .values()
                .map(|g| {
                    let mut v = group_json(account, g);
                    if let Some(m) = v.as_object_mut() {
                        m.insert("AttachedManagedPolicies".to_owned(), json!(g.attached));
                        m.insert(
                            "GroupPolicyList".to_owned(),
                            json!(
                                g.inline
                                    .iter()
                                    .map(|(n, d)| json!({"PolicyName": n, "PolicyDocument": d}))
                                    .collect::<Vec<_>>()
                            ),
                        );
                    }
                    v
                })
                .collect();
            Ok(json!({"UserDetailList": users, "GroupDetailList": groups, "IsTruncated": false}))
        }
        other => Err(error(
            "InvalidAction",
            400,
            format!("The action {other} is not valid for this endpoint."),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_made_policies_have_distinct_ids() {
        let ids: std::collections::BTreeSet<String> = MANAGED_POLICIES
            .iter()
            .map(|(n, _, _)| managed_policy_id(n))
            .collect();
        assert_eq!(ids.len(), MANAGED_POLICIES.len());
        assert!(ids.iter().all(|i| i.len() == 21 && i.starts_with("ANPA")));
    }
}
