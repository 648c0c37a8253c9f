//! `opentrail iam ...`: the principal directory of a running server, managed through its admin
//! API. Subcommands and flags are IAM's (`create-user --user-name`, ...); each becomes one call
//! `OpenTrailIAM.<Action>` with IAM's members, signed with the caller's key.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::Value;

#[derive(Args, Debug)]
pub struct IamArgs {
    #[command(flatten)]
    conn: crate::client::Connection,
    #[command(subcommand)]
    command: IamCommand,
}

/// A policy document: JSON text, or `file://path`.
type Document = String;

#[derive(Subcommand, Serialize, Debug)]
#[serde(rename_all_fields = "PascalCase")]
pub enum IamCommand {
    /// Create an IAM user.
    CreateUser {
        #[arg(long)]
        user_name: String,
        #[arg(long)]
        path: Option<String>,
    },
    /// Show a user (yourself without --user-name).
    GetUser {
        #[arg(long)]
        user_name: Option<String>,
    },
    /// List users.
    ListUsers {
        #[arg(long)]
        path_prefix: Option<String>,
    },
    /// Delete a user (keys, policies and group memberships must be gone first).
    DeleteUser {
        #[arg(long)]
        user_name: String,
    },
    /// Create an access key; prints AccessKeyId and SecretAccessKey (shown only this once).
    CreateAccessKey {
        #[arg(long)]
        user_name: Option<String>,
    },
    /// List a user's access keys.
    ListAccessKeys {
        #[arg(long)]
        user_name: Option<String>,
    },
    /// Make an access key Active or Inactive.
    UpdateAccessKey {
        #[arg(long)]
        user_name: Option<String>,
        #[arg(long)]
        access_key_id: String,
        #[arg(long, value_parser = ["Active", "Inactive"])]
        status: String,
    },
    /// Delete an access key.
    DeleteAccessKey {
        #[arg(long)]
        user_name: Option<String>,
        #[arg(long)]
        access_key_id: String,
    },
    /// Create a group.
    CreateGroup {
        #[arg(long)]
        group_name: String,
        #[arg(long)]
        path: Option<String>,
    },
    /// Show a group and its users.
    GetGroup {
        #[arg(long)]
        group_name: String,
    },
    /// List groups.
    ListGroups {
        #[arg(long)]
        path_prefix: Option<String>,
    },
    /// Delete a group (no members, no policies).
    DeleteGroup {
        #[arg(long)]
        group_name: String,
    },
    AddUserToGroup {
        #[arg(long)]
        group_name: String,
        #[arg(long)]
        user_name: String,
    },
    RemoveUserFromGroup {
        #[arg(long)]
        group_name: String,
        #[arg(long)]
        user_name: String,
    },
    ListGroupsForUser {
        #[arg(long)]
        user_name: String,
    },
    /// Attach a managed policy (by --policy-arn, or --policy-name such as OpenTrailReadOnlyAccess).
    AttachUserPolicy {
        #[arg(long)]
        user_name: String,
        #[arg(long, required_unless_present = "policy_name")]
        policy_arn: Option<String>,
        #[arg(long)]
        policy_name: Option<String>,
    },
    DetachUserPolicy {
        #[arg(long)]
        user_name: String,
        #[arg(long, required_unless_present = "policy_name")]
        policy_arn: Option<String>,
        #[arg(long)]
        policy_name: Option<String>,
    },
    ListAttachedUserPolicies {
        #[arg(long)]
        user_name: String,
    },
    AttachGroupPolicy {
        #[arg(long)]
        group_name: String,
        #[arg(long, required_unless_present = "policy_name")]
        policy_arn: Option<String>,
        #[arg(long)]
        policy_name: Option<String>,
    },
    DetachGroupPolicy {
        #[arg(long)]
        group_name: String,
        #[arg(long, required_unless_present = "policy_name")]
        policy_arn: Option<String>,
        #[arg(long)]
        policy_name: Option<String>,
    },
    ListAttachedGroupPolicies {
        #[arg(long)]
        group_name: String,
    },
    /// Add or replace an inline policy of a user (--policy-document JSON or file://path).
    PutUserPolicy {
        #[arg(long)]
        user_name: String,
        #[arg(long)]
        policy_name: String,
        #[arg(long)]
        policy_document: Document,
    },
    GetUserPolicy {
        #[arg(long)]
        user_name: String,
        #[arg(long)]
        policy_name: String,
    },
    DeleteUserPolicy {
        #[arg(long)]
        user_name: String,
        #[arg(long)]
        policy_name: String,
    },
    ListUserPolicies {
        #[arg(long)]
        user_name: String,
    },
    PutGroupPolicy {
        #[arg(long)]
        group_name: String,
        #[arg(long)]
        policy_name: String,
        #[arg(long)]
        policy_document: Document,
    },
    GetGroupPolicy {
        #[arg(long)]
        group_name: String,
        #[arg(long)]
        policy_name: String,
    },
    DeleteGroupPolicy {
        #[arg(long)]
        group_name: String,
        #[arg(long)]
        policy_name: String,
    },
    ListGroupPolicies {
        #[arg(long)]
        group_name: String,
    },
    /// Create a managed policy of the account.
    CreatePolicy {
        #[arg(long)]
        policy_name: String,
        #[arg(long)]
        policy_document: Document,
        #[arg(long)]
        path: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    GetPolicy {
        #[arg(long)]
        policy_arn: String,
    },
    /// Show a managed policy's document.
    GetPolicyVersion {
        #[arg(long)]
        policy_arn: String,
        #[arg(long, default_value = "v1")]
        version_id: String,
    },
    /// List managed policies (--scope All, AWS for the ready-made ones, Local for the account's).
    ListPolicies {
        #[arg(long, value_parser = ["All", "AWS", "Local"])]
        scope: Option<String>,
    },
    DeletePolicy {
        #[arg(long)]
        policy_arn: String,
    },
    ListEntitiesForPolicy {
        #[arg(long)]
        policy_arn: String,
    },
    /// Every user and group with their policies.
    GetAccountAuthorizationDetails,
}

/// `{"CreateUser": {"UserName": ...}}` → ("CreateUser", members without nulls).
fn to_call(cmd: &IamCommand) -> anyhow::Result<(String, Value)> {
    let v = serde_json::to_value(cmd)?;
    let (action, mut body) = match v {
        Value::String(a) => (a, Value::Object(Default::default())),
        Value::Object(m) => m.into_iter().next().context("empty command")?,
        other => anyhow::bail!("unexpected command form {other}"),
    };
    if let Value::Object(m) = &mut body {
        m.retain(|_, v| !v.is_null());
        if let Some(Value::String(doc)) = m.get_mut("PolicyDocument")
            && let Some(path) = doc.strip_prefix("file://")
        {
            *doc = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the policy document {path}"))?;
        }
    }
    Ok((action, body))
}

pub fn run(args: IamArgs) -> anyhow::Result<()> {
    let client = args.conn.client()?;
    let (action, body) = to_call(&args.command)?;
    let out = client.call("iam", &format!("OpenTrailIAM.{action}"), &body)?;
    if out.as_object().is_some_and(|m| !m.is_empty()) {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        args: IamArgs,
    }

    fn call_of(argv: &[&str]) -> (String, Value) {
        let t =
            T::try_parse_from(std::iter::once("iam").chain(argv.iter().copied())).expect("parses");
        to_call(&t.args.command).expect("call")
    }

    #[test]
    fn flags_become_iam_members() {
        assert_eq!(
            call_of(&["create-user", "--user-name", "alice"]),
            (
                "CreateUser".into(),
                serde_json::json!({"UserName": "alice"})
            )
        );
        assert_eq!(
            call_of(&[
                "attach-user-policy",
                "--user-name",
                "a",
                "--policy-name",
                "OpenTrailFullAccess"
            ]),
            (
                "AttachUserPolicy".into(),
                serde_json::json!({"UserName": "a", "PolicyName": "OpenTrailFullAccess"})
            )
        );
        assert_eq!(
            call_of(&[
                "update-access-key",
                "--access-key-id",
                "AKIA1",
                "--status",
                "Inactive"
            ]),
            (
                "UpdateAccessKey".into(),
                serde_json::json!({"AccessKeyId": "AKIA1", "Status": "Inactive"})
            )
        );
        assert_eq!(
            call_of(&["get-account-authorization-details"]),
            (
                "GetAccountAuthorizationDetails".into(),
                serde_json::json!({})
            )
        );
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("p.json");
        std::fs::write(&path, "{\"Statement\":[]}").expect("write");
        let (_, body) = call_of(&[
            "put-user-policy",
            "--user-name",
            "a",
            "--policy-name",
            "p",
            "--policy-document",
            &format!("file://{}", path.display()),
        ]);
        assert_eq!(body["PolicyDocument"], "{\"Statement\":[]}");
    }
}
