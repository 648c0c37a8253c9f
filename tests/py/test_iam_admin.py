"""Access control end to end: the admin API through ``opentrail iam``, policy
evaluation (managed, inline and group policies, conditions, policy variables),
authorization of native ingest and ``/metrics``, the self-audit of admin calls,
secrecy of secret access keys, and the root key bootstrap.

Everything runs against the real binary: the ``opentrail iam`` CLI as a
subprocess, boto3 for the CloudTrail API, ``requests`` (SigV4-signed through
botocore) for ``/v1/events`` and ``/metrics``.  Policy changes take effect on
the next request, so nothing here waits for them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import stat
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import boto3
import pytest
import requests
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from conftest import (
    ACCOUNT_ID,
    FAKE_ACCESS_KEY,
    FAKE_SECRET_KEY,
    OpenTrailServer,
    attrs,
    cloudtrail_client,
    error_code,
    free_port,
    lookup_all,
    make_record,
    poll_until,
    signed_session,
    uid,
    utcnow,
)

SERVER_ENV = {"OPENTRAIL_MAX_TRAILS_PER_REGION": "100"}

ACCESS_KEY_RE = re.compile(r"^AKIA[A-Z2-7]{16}$")
AWS_POLICY = "arn:aws:iam::aws:policy/{}"
ROOT_ARN = f"arn:aws:iam::{ACCOUNT_ID}:root"
INVALID_TOKEN_MSG = "The security token included in the request is invalid."
AUDIT_TIMEOUT_S = 3.0
VISIBLE_S = 3.0

# Every secret access key this module creates on the module's server; the
# last test checks that none of them ever reached an event record or the log.
SECRETS: list[str] = []


class User(NamedTuple):
    name: str
    key: str
    secret: str

    @property
    def arn(self) -> str:
        return f"arn:aws:iam::{ACCOUNT_ID}:user/{self.name}"


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def run_iam(server: OpenTrailServer, *args: str, key: str = FAKE_ACCESS_KEY,
            secret: str = FAKE_SECRET_KEY, region: str | None = None) -> subprocess.CompletedProcess:
    """``opentrail iam --endpoint-url <server> [--region R] <args>`` signed with key/secret."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret})
    cmd = [server.binary, "iam", "--endpoint-url", server.url]
    if region:
        cmd += ["--region", region]
    cmd += [str(a) for a in args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


def iam_ok(server: OpenTrailServer, *args: str, **kw: Any) -> Any:
    """Run a command that must succeed; returns the parsed JSON (None when it printed nothing)."""
    p = run_iam(server, *args, **kw)
    assert p.returncode == 0, (
        f"opentrail iam {' '.join(map(str, args))} exited {p.returncode}\n"
        f"stdout: {p.stdout}\nstderr: {p.stderr}"
    )
    if not p.stdout.strip():
        return None
    return json.loads(p.stdout)


def iam_quiet(server: OpenTrailServer, *args: str, **kw: Any) -> None:
    """A command with an empty IAM response: succeeds and prints nothing."""
    out = iam_ok(server, *args, **kw)
    assert out is None, f"opentrail iam {args[0]} printed {out!r} for an empty response"


def iam_fail(server: OpenTrailServer, op: str, code: str, *args: str, **kw: Any) -> str:
    """A command that must fail with exit status 1 and
    ``opentrail: <Op> failed (<Code>): <message>`` on stderr; returns the message."""
    p = run_iam(server, *args, **kw)
    assert p.returncode == 1, (
        f"opentrail iam {' '.join(map(str, args))}: expected exit 1 ({op} {code}), got {p.returncode}\n"
        f"stdout: {p.stdout}\nstderr: {p.stderr}"
    )
    m = re.search(rf"^opentrail: {re.escape(op)} failed \({re.escape(code)}\): (.+)$", p.stderr, re.M)
    assert m, f"stderr lacks 'opentrail: {op} failed ({code}): ...':\n{p.stderr}"
    assert p.stdout.strip() == "", f"a failed command printed on stdout: {p.stdout!r}"
    return m.group(1)


def client_as(server: OpenTrailServer, key: str, secret: str, region: str = "us-east-1"):
    return boto3.session.Session().client(
        "cloudtrail",
        region_name=region,
        endpoint_url=server.url,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=60),
    )


def expect_error(code: str, fn: Callable, *args: Any, status: int | None = None, **kwargs: Any) -> dict:
    with pytest.raises(ClientError) as ei:
        fn(*args, **kwargs)
    err = ei.value.response
    assert err["Error"]["Code"] == code, err
    if status is not None:
        assert err["ResponseMetadata"]["HTTPStatusCode"] == status, err
    return err["Error"]


def denied_message(user: str, action: str, resource: str, explicit: bool = False) -> str:
    head = (f"User: arn:aws:iam::{ACCOUNT_ID}:user/{user} is not authorized to perform: "
            f"{action} on resource: {resource} ")
    if explicit:
        return head + "with an explicit deny in an identity-based policy"
    return head + f"because no identity-based policy allows the {action} action"


def expect_denied(client, op: str, user: str, resource: str = "*", explicit: bool = False,
                  **params: Any) -> None:
    err = expect_error("AccessDeniedException", getattr(client, op), status=403, **params)
    action = "cloudtrail:" + "".join(p.capitalize() for p in op.split("_"))
    assert err["Message"] == denied_message(user, action, resource, explicit), err


def can_describe(user: User, server: OpenTrailServer, region: str = "us-east-1") -> bool:
    """True if DescribeTrails is allowed, False if it is denied (AccessDeniedException);
    any other outcome fails the test."""
    try:
        client_as(server, user.key, user.secret, region).describe_trails()
        return True
    except ClientError as e:
        code = e.response["Error"]["Code"]
        assert code == "AccessDeniedException", e.response
        assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        return False


def create_key(server: OpenTrailServer, user_name: str, **kw: Any) -> tuple[str, str]:
    out = iam_ok(server, "create-access-key", "--user-name", user_name, **kw)
    ak = out["AccessKey"]
    SECRETS.append(ak["SecretAccessKey"])
    return ak["AccessKeyId"], ak["SecretAccessKey"]


def new_user(server: OpenTrailServer, prefix: str = "u", *, managed: tuple[str, ...] = (),
             inline: dict | None = None) -> User:
    name = f"{prefix}-{uid()}"
    iam_ok(server, "create-user", "--user-name", name)
    key, secret = create_key(server, name)
    for policy in managed:
        iam_quiet(server, "attach-user-policy", "--user-name", name, "--policy-name", policy)
    if inline is not None:
        iam_quiet(server, "put-user-policy", "--user-name", name, "--policy-name", "inline",
                  "--policy-document", json.dumps(inline))
    return User(name, key, secret)


def policy(*statements: dict, version: str = "2012-10-17") -> dict:
    return {"Version": version, "Statement": list(statements)}


def allow(action: Any, resource: Any = "*", **extra: Any) -> dict:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def deny(action: Any, resource: Any = "*", **extra: Any) -> dict:
    return {"Effect": "Deny", "Action": action, "Resource": resource, **extra}


def audit_records(ct, event_name: str, since: dt.datetime,
                  match: Callable[[dict], bool], timeout: float = AUDIT_TIMEOUT_S) -> list[dict]:
    """Poll LookupEvents (EventName) for records satisfying ``match``."""
    def found():
        recs = [json.loads(e["CloudTrailEvent"]) for e in
                lookup_all(ct, LookupAttributes=attrs(("EventName", event_name)), StartTime=since)]
        return [r for r in recs if match(r)]
    return poll_until(f"{event_name} audit record", found, timeout, interval=0.1)


def events_named(ct, event_name: str, since: dt.datetime) -> list[dict]:
    return lookup_all(ct, LookupAttributes=attrs(("EventName", event_name)), StartTime=since)


def make_bucket(server: OpenTrailServer) -> str:
    name = f"bucket-{uid()}"
    os.makedirs(Path(server.data_dir) / "buckets" / name)
    return name


def trail_arn(name: str, region: str = "us-east-1") -> str:
    return f"arn:aws:cloudtrail:{region}:{ACCOUNT_ID}:trail/{name}"


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def module_start(server) -> dt.datetime:
    return utcnow() - dt.timedelta(seconds=5)


@pytest.fixture(scope="module")
def ct(server, module_start):
    return cloudtrail_client(server)


# ---------------------------------------------------------------------------
# 1. The opentrail iam CLI
# ---------------------------------------------------------------------------


def test_users_and_access_keys(server, ct):
    name = f"cli-{uid()}"
    user_arn = f"arn:aws:iam::{ACCOUNT_ID}:user/{name}"

    created = iam_ok(server, "create-user", "--user-name", name)["User"]
    assert created["UserName"] == name
    assert created["Arn"] == user_arn
    assert created["Path"] == "/"
    assert created["UserId"].startswith("AIDA"), created

    got = iam_ok(server, "get-user", "--user-name", name)["User"]
    assert got["UserName"] == name and got["Arn"] == user_arn and got["UserId"] == created["UserId"]

    listed = iam_ok(server, "list-users")
    assert listed["IsTruncated"] is False
    assert name in [u["UserName"] for u in listed["Users"]]

    # Names are unique ignoring case.
    iam_fail(server, "CreateUser", "EntityAlreadyExists", "create-user", "--user-name", name)
    iam_fail(server, "CreateUser", "EntityAlreadyExists", "create-user", "--user-name", name.upper())

    out = iam_ok(server, "create-access-key", "--user-name", name)
    ak = out["AccessKey"]
    SECRETS.append(ak["SecretAccessKey"])
    assert ak["UserName"] == name
    assert ACCESS_KEY_RE.match(ak["AccessKeyId"]), ak["AccessKeyId"]
    assert isinstance(ak["SecretAccessKey"], str) and len(ak["SecretAccessKey"]) == 40, ak
    assert ak["Status"] == "Active"
    assert ak["CreateDate"]
    user = User(name, ak["AccessKeyId"], ak["SecretAccessKey"])

    # The key authenticates at once: denied (no policy yet), not InvalidClientTokenId.
    assert can_describe(user, server) is False
    iam_quiet(server, "attach-user-policy", "--user-name", name, "--policy-name", "OpenTrailReadOnlyAccess")
    assert can_describe(user, server) is True

    keys = iam_ok(server, "list-access-keys", "--user-name", name)
    assert keys["IsTruncated"] is False
    meta = keys["AccessKeyMetadata"]
    assert [(k["AccessKeyId"], k["Status"], k["UserName"]) for k in meta] == [(user.key, "Active", name)]
    assert "SecretAccessKey" not in json.dumps(keys)

    # Inactive: the key is refused as an invalid token; Active again: it works.
    iam_quiet(server, "update-access-key", "--user-name", name, "--access-key-id", user.key,
              "--status", "Inactive")
    assert iam_ok(server, "list-access-keys", "--user-name", name)["AccessKeyMetadata"][0]["Status"] == "Inactive"
    err = expect_error("InvalidClientTokenId", client_as(server, user.key, user.secret).describe_trails,
                       status=403)
    assert err["Message"] == INVALID_TOKEN_MSG, err
    iam_quiet(server, "update-access-key", "--user-name", name, "--access-key-id", user.key,
              "--status", "Active")
    assert can_describe(user, server) is True

    # A second key works too; a third is over the limit.
    key2, secret2 = create_key(server, name)
    assert ACCESS_KEY_RE.match(key2) and key2 != user.key
    assert can_describe(User(name, key2, secret2), server) is True
    msg = iam_fail(server, "CreateAccessKey", "LimitExceeded", "create-access-key", "--user-name", name)
    assert msg
    assert len(iam_ok(server, "list-access-keys", "--user-name", name)["AccessKeyMetadata"]) == 2

    # Deleting a key: it is unknown from then on.
    iam_quiet(server, "delete-access-key", "--user-name", name, "--access-key-id", key2)
    err = expect_error("InvalidClientTokenId", client_as(server, key2, secret2).describe_trails, status=403)
    assert err["Message"] == INVALID_TOKEN_MSG
    assert [k["AccessKeyId"] for k in
            iam_ok(server, "list-access-keys", "--user-name", name)["AccessKeyMetadata"]] == [user.key]
    iam_fail(server, "DeleteAccessKey", "NoSuchEntity", "delete-access-key", "--user-name", name,
             "--access-key-id", key2)
    # The other key is unaffected.
    assert can_describe(user, server) is True

    # Room for a new key again.
    create_key(server, name)


def test_managed_policies_attach_detach(server):
    user = new_user(server, "mgd")
    cli = client_as(server, user.key, user.secret)
    expect_denied(cli, "describe_trails", user.name)

    # By name.
    iam_quiet(server, "attach-user-policy", "--user-name", user.name, "--policy-name", "OpenTrailReadOnlyAccess")
    attached = iam_ok(server, "list-attached-user-policies", "--user-name", user.name)
    assert attached["AttachedPolicies"] == [
        {"PolicyName": "OpenTrailReadOnlyAccess", "PolicyArn": AWS_POLICY.format("OpenTrailReadOnlyAccess")}
    ]
    cli.describe_trails()
    cli.lookup_events(MaxResults=1)
    expect_denied(cli, "create_trail", user.name, trail_arn("nope-" + user.name),
                  Name="nope-" + user.name, S3BucketName="whatever")

    # Detach: access goes away on the very next request.
    iam_quiet(server, "detach-user-policy", "--user-name", user.name,
              "--policy-arn", AWS_POLICY.format("OpenTrailReadOnlyAccess"))
    expect_denied(cli, "describe_trails", user.name)
    assert iam_ok(server, "list-attached-user-policies", "--user-name", user.name)["AttachedPolicies"] == []

    # By ARN.
    iam_quiet(server, "attach-user-policy", "--user-name", user.name,
              "--policy-arn", AWS_POLICY.format("OpenTrailFullAccess"))
    cli.describe_trails()
    bucket = make_bucket(server)
    tname = f"mgd-{uid()}"
    cli.create_trail(Name=tname, S3BucketName=bucket)
    cli.delete_trail(Name=tname)
    iam_quiet(server, "detach-user-policy", "--user-name", user.name, "--policy-name", "OpenTrailFullAccess")
    expect_denied(cli, "describe_trails", user.name)

    iam_fail(server, "AttachUserPolicy", "NoSuchEntity", "attach-user-policy", "--user-name", user.name,
             "--policy-name", f"NoSuchPolicy{uid()}")
    iam_fail(server, "AttachUserPolicy", "NoSuchEntity", "attach-user-policy", "--user-name", user.name,
             "--policy-arn", f"arn:aws:iam::{ACCOUNT_ID}:policy/none-{uid()}")


def test_inline_user_policies(server, tmp_path):
    user = new_user(server, "inl")
    cli = client_as(server, user.key, user.secret)
    expect_denied(cli, "describe_trails", user.name)

    doc1 = policy(allow("cloudtrail:DescribeTrails"))
    path = tmp_path / "describe.json"
    path.write_text(json.dumps(doc1, indent=2))
    iam_quiet(server, "put-user-policy", "--user-name", user.name, "--policy-name", "describe",
              "--policy-document", f"file://{path}")
    cli.describe_trails()
    expect_denied(cli, "list_trails", user.name)

    doc2 = policy(allow(["cloudtrail:ListTrails", "cloudtrail:LookupEvents"]))
    iam_quiet(server, "put-user-policy", "--user-name", user.name, "--policy-name", "listing",
              "--policy-document", json.dumps(doc2))
    cli.list_trails()
    cli.lookup_events(MaxResults=1)

    got = iam_ok(server, "get-user-policy", "--user-name", user.name, "--policy-name", "describe")
    assert got["UserName"] == user.name and got["PolicyName"] == "describe"
    assert json.loads(got["PolicyDocument"]) == doc1
    got2 = iam_ok(server, "get-user-policy", "--user-name", user.name, "--policy-name", "listing")
    assert json.loads(got2["PolicyDocument"]) == doc2

    names = iam_ok(server, "list-user-policies", "--user-name", user.name)
    assert sorted(names["PolicyNames"]) == ["describe", "listing"]
    assert names["IsTruncated"] is False

    # Replacing an inline policy takes effect at once.
    iam_quiet(server, "put-user-policy", "--user-name", user.name, "--policy-name", "listing",
              "--policy-document", json.dumps(policy(allow("cloudtrail:LookupEvents"))))
    expect_denied(cli, "list_trails", user.name)

    iam_quiet(server, "delete-user-policy", "--user-name", user.name, "--policy-name", "describe")
    expect_denied(cli, "describe_trails", user.name)
    assert iam_ok(server, "list-user-policies", "--user-name", user.name)["PolicyNames"] == ["listing"]
    iam_fail(server, "GetUserPolicy", "NoSuchEntity", "get-user-policy", "--user-name", user.name,
             "--policy-name", "describe")
    iam_fail(server, "DeleteUserPolicy", "NoSuchEntity", "delete-user-policy", "--user-name", user.name,
             "--policy-name", "describe")


def test_groups(server):
    user = new_user(server, "grp")
    cli = client_as(server, user.key, user.secret)
    expect_denied(cli, "describe_trails", user.name)

    group = f"team-{uid()}"
    g = iam_ok(server, "create-group", "--group-name", group)["Group"]
    assert g["GroupName"] == group
    assert g["Arn"] == f"arn:aws:iam::{ACCOUNT_ID}:group/{group}"
    iam_fail(server, "CreateGroup", "EntityAlreadyExists", "create-group", "--group-name", group.upper())
    assert group in [x["GroupName"] for x in iam_ok(server, "list-groups")["Groups"]]

    iam_quiet(server, "attach-group-policy", "--group-name", group, "--policy-name", "OpenTrailReadOnlyAccess")
    assert iam_ok(server, "list-attached-group-policies", "--group-name", group)["AttachedPolicies"] == [
        {"PolicyName": "OpenTrailReadOnlyAccess", "PolicyArn": AWS_POLICY.format("OpenTrailReadOnlyAccess")}
    ]
    # The group's policy is not the user's until the user joins.
    expect_denied(cli, "describe_trails", user.name)
    iam_quiet(server, "add-user-to-group", "--group-name", group, "--user-name", user.name)
    cli.describe_trails()

    groups = iam_ok(server, "list-groups-for-user", "--user-name", user.name)
    assert [x["GroupName"] for x in groups["Groups"]] == [group]
    got = iam_ok(server, "get-group", "--group-name", group)
    assert got["Group"]["GroupName"] == group
    assert [u["UserName"] for u in got["Users"]] == [user.name]

    # Through a group inline policy instead of the managed one.
    iam_quiet(server, "detach-group-policy", "--group-name", group,
              "--policy-arn", AWS_POLICY.format("OpenTrailReadOnlyAccess"))
    expect_denied(cli, "describe_trails", user.name)
    gdoc = policy(allow("cloudtrail:DescribeTrails"))
    iam_quiet(server, "put-group-policy", "--group-name", group, "--policy-name", "g-inline",
              "--policy-document", json.dumps(gdoc))
    assert iam_ok(server, "list-group-policies", "--group-name", group)["PolicyNames"] == ["g-inline"]
    assert json.loads(iam_ok(server, "get-group-policy", "--group-name", group,
                             "--policy-name", "g-inline")["PolicyDocument"]) == gdoc
    cli.describe_trails()
    expect_denied(cli, "list_trails", user.name)

    # A group with members or policies cannot be deleted.
    iam_fail(server, "DeleteGroup", "DeleteConflict", "delete-group", "--group-name", group)

    # Leaving the group takes the access away.
    iam_quiet(server, "remove-user-from-group", "--group-name", group, "--user-name", user.name)
    expect_denied(cli, "describe_trails", user.name)
    assert iam_ok(server, "list-groups-for-user", "--user-name", user.name)["Groups"] == []
    assert iam_ok(server, "get-group", "--group-name", group)["Users"] == []

    iam_fail(server, "DeleteGroup", "DeleteConflict", "delete-group", "--group-name", group)
    iam_quiet(server, "delete-group-policy", "--group-name", group, "--policy-name", "g-inline")
    iam_quiet(server, "delete-group", "--group-name", group)
    iam_fail(server, "GetGroup", "NoSuchEntity", "get-group", "--group-name", group)


def test_customer_managed_policies(server):
    name = f"ListOnly-{uid()}"
    arn = f"arn:aws:iam::{ACCOUNT_ID}:policy/{name}"
    doc = policy(allow("cloudtrail:ListTrails"))
    created = iam_ok(server, "create-policy", "--policy-name", name, "--policy-document", json.dumps(doc),
                     "--description", "list trails only")["Policy"]
    assert created["PolicyName"] == name
    assert created["Arn"] == arn
    iam_fail(server, "CreatePolicy", "EntityAlreadyExists", "create-policy", "--policy-name", name.lower(),
             "--policy-document", json.dumps(doc))

    got = iam_ok(server, "get-policy", "--policy-arn", arn)["Policy"]
    assert got["PolicyName"] == name and got["Arn"] == arn
    ver = iam_ok(server, "get-policy-version", "--policy-arn", arn, "--version-id", "v1")["PolicyVersion"]
    assert isinstance(ver["Document"], str)
    assert json.loads(ver["Document"]) == doc
    ro = iam_ok(server, "get-policy-version", "--policy-arn", AWS_POLICY.format("OpenTrailReadOnlyAccess"))
    ro_doc = json.loads(ro["PolicyVersion"]["Document"])
    assert ro_doc["Statement"], ro_doc

    local = [p["Arn"] for p in iam_ok(server, "list-policies", "--scope", "Local")["Policies"]]
    aws_scope = [p["Arn"] for p in iam_ok(server, "list-policies", "--scope", "AWS")["Policies"]]
    everything = [p["Arn"] for p in iam_ok(server, "list-policies")["Policies"]]
    ready_made = {AWS_POLICY.format(n) for n in
                  ("OpenTrailFullAccess", "OpenTrailReadOnlyAccess", "AdministratorAccess")}
    assert arn in local and not ready_made & set(local), local
    assert ready_made <= set(aws_scope) and arn not in aws_scope, aws_scope
    assert ready_made <= set(everything) and arn in everything

    user = new_user(server, "cmp")
    cli = client_as(server, user.key, user.secret)
    expect_denied(cli, "list_trails", user.name)
    iam_quiet(server, "attach-user-policy", "--user-name", user.name, "--policy-arn", arn)
    cli.list_trails()
    expect_denied(cli, "describe_trails", user.name)

    ents = iam_ok(server, "list-entities-for-policy", "--policy-arn", arn)
    assert [u["UserName"] for u in ents["PolicyUsers"]] == [user.name]
    assert ents["PolicyGroups"] == []

    iam_fail(server, "DeletePolicy", "DeleteConflict", "delete-policy", "--policy-arn", arn)
    cli.list_trails()  # nothing changed
    iam_quiet(server, "detach-user-policy", "--user-name", user.name, "--policy-arn", arn)
    expect_denied(cli, "list_trails", user.name)
    assert iam_ok(server, "list-entities-for-policy", "--policy-arn", arn)["PolicyUsers"] == []
    iam_quiet(server, "delete-policy", "--policy-arn", arn)
    iam_fail(server, "GetPolicy", "NoSuchEntity", "get-policy", "--policy-arn", arn)
    assert arn not in [p["Arn"] for p in iam_ok(server, "list-policies", "--scope", "Local")["Policies"]]


def test_delete_user_conflicts_until_cleaned_up(server):
    user = new_user(server, "del", managed=("OpenTrailReadOnlyAccess",),
                    inline=policy(allow("cloudtrail:ListTrails")))
    group = f"delgrp-{uid()}"
    iam_ok(server, "create-group", "--group-name", group)
    iam_quiet(server, "add-user-to-group", "--group-name", group, "--user-name", user.name)

    def conflict():
        iam_fail(server, "DeleteUser", "DeleteConflict", "delete-user", "--user-name", user.name)
        iam_ok(server, "get-user", "--user-name", user.name)  # still there

    conflict()
    iam_quiet(server, "delete-access-key", "--user-name", user.name, "--access-key-id", user.key)
    conflict()  # policies and a group left
    iam_quiet(server, "detach-user-policy", "--user-name", user.name, "--policy-name", "OpenTrailReadOnlyAccess")
    conflict()  # inline policy and a group left
    iam_quiet(server, "delete-user-policy", "--user-name", user.name, "--policy-name", "inline")
    conflict()  # a group left
    iam_quiet(server, "remove-user-from-group", "--group-name", group, "--user-name", user.name)

    iam_quiet(server, "delete-user", "--user-name", user.name)
    iam_fail(server, "GetUser", "NoSuchEntity", "get-user", "--user-name", user.name)
    iam_fail(server, "DeleteUser", "NoSuchEntity", "delete-user", "--user-name", user.name)
    assert user.name not in [u["UserName"] for u in iam_ok(server, "list-users")["Users"]]
    # The name is free again.
    iam_ok(server, "create-user", "--user-name", user.name)
    iam_quiet(server, "delete-user", "--user-name", user.name)


def test_no_such_entity(server):
    ghost = f"ghost-{uid()}"
    iam_fail(server, "GetUser", "NoSuchEntity", "get-user", "--user-name", ghost)
    iam_fail(server, "CreateAccessKey", "NoSuchEntity", "create-access-key", "--user-name", ghost)
    iam_fail(server, "GetGroup", "NoSuchEntity", "get-group", "--group-name", ghost)
    iam_fail(server, "GetPolicy", "NoSuchEntity", "get-policy",
             "--policy-arn", f"arn:aws:iam::{ACCOUNT_ID}:policy/{ghost}")
    iam_fail(server, "AttachUserPolicy", "NoSuchEntity", "attach-user-policy", "--user-name", ghost,
             "--policy-name", "OpenTrailReadOnlyAccess")
    user = new_user(server, "nse")
    iam_fail(server, "AddUserToGroup", "NoSuchEntity", "add-user-to-group", "--group-name", ghost,
             "--user-name", user.name)
    iam_fail(server, "GetUserPolicy", "NoSuchEntity", "get-user-policy", "--user-name", user.name,
             "--policy-name", ghost)
    iam_fail(server, "UpdateAccessKey", "NoSuchEntity", "update-access-key", "--user-name", user.name,
             "--access-key-id", "AKIA" + "Q" * 16, "--status", "Inactive")


@pytest.mark.parametrize("bad", ["bad name!", "x" * 65, "tab\tname", "slash/name", "ünïcode"])
def test_bad_user_name_is_validation_error(server, bad):
    iam_fail(server, "CreateUser", "ValidationError", "create-user", "--user-name", bad)


def test_user_name_edge_accepted(server):
    name = ("a+=,.@_-" + uid() * 7)[:64]
    assert len(name) == 64
    assert iam_ok(server, "create-user", "--user-name", name)["User"]["UserName"] == name
    iam_quiet(server, "delete-user", "--user-name", name)


def test_unknown_admin_action_is_invalid_action(server):
    r = signed_session().post(
        f"{server.url}/",
        data=b"{}",
        headers={"X-Amz-Target": "OpenTrailIAM.FrobnicateWidgets",
                 "Content-Type": "application/x-amz-json-1.1"},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    assert error_code(r.json()["__type"]) == "InvalidAction", r.text


def _long_policy(target_nonws: int) -> str:
    actions = []
    doc = ""
    i = 0
    while len(doc) < target_nonws:
        actions.append(f"cloudtrail:DescribeSomething{i:05d}")
        i += 1
        doc = json.dumps(policy(allow(actions)), separators=(",", ":"))
    return doc


BAD_DOCUMENTS = {
    "not-json": '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow",',
    "missing-effect": json.dumps(policy({"Action": "cloudtrail:*", "Resource": "*"})),
    "missing-action": json.dumps(policy({"Effect": "Allow", "Resource": "*"})),
    "missing-resource": json.dumps(policy({"Effect": "Allow", "Action": "cloudtrail:*"})),
    "principal": json.dumps(policy(allow("cloudtrail:*", Principal={"AWS": ROOT_ARN}))),
    "unknown-operator": json.dumps(policy(allow(
        "cloudtrail:*", Condition={"StringEqualsPlease": {"aws:username": "x"}}))),
    "bad-ip": json.dumps(policy(allow(
        "cloudtrail:*", Condition={"IpAddress": {"aws:SourceIp": "300.1.2.3/8"}}))),
    "bad-date": json.dumps(policy(allow(
        "cloudtrail:*", Condition={"DateGreaterThan": {"aws:CurrentTime": "next tuesday"}}))),
    "3000-chars": _long_policy(3000),
}


@pytest.fixture(scope="module")
def policy_target(server) -> User:
    return new_user(server, "malformed")


@pytest.mark.parametrize("case", list(BAD_DOCUMENTS))
def test_malformed_user_policy(server, policy_target, case):
    doc = BAD_DOCUMENTS[case]
    if case == "3000-chars":
        assert 2990 <= len(re.sub(r"\s", "", doc)) <= 3100
    pname = f"bad-{case}"
    iam_fail(server, "PutUserPolicy", "MalformedPolicyDocument", "put-user-policy",
             "--user-name", policy_target.name, "--policy-name", pname, "--policy-document", doc)
    assert pname not in iam_ok(server, "list-user-policies", "--user-name", policy_target.name)["PolicyNames"]


def test_malformed_managed_policy_and_whitespace_does_not_count(server, policy_target):
    iam_fail(server, "CreatePolicy", "MalformedPolicyDocument", "create-policy",
             "--policy-name", f"bad-{uid()}", "--policy-document", BAD_DOCUMENTS["principal"])
    # 2048 non-whitespace characters is the limit; whitespace does not count.
    small = json.dumps(policy(allow("cloudtrail:DescribeTrails")), separators=(",", ":"))
    padded = small[:1] + " " * 2600 + "\n" + small[1:]
    assert len(padded) > 2600
    iam_quiet(server, "put-user-policy", "--user-name", policy_target.name, "--policy-name", "padded",
              "--policy-document", padded)
    assert can_describe(policy_target, server) is True
    iam_quiet(server, "delete-user-policy", "--user-name", policy_target.name, "--policy-name", "padded")
    # The generator of the 3000-character case makes valid documents: a shorter one is accepted.
    shorter = _long_policy(1900)
    assert len(shorter) <= 2048
    iam_quiet(server, "put-user-policy", "--user-name", policy_target.name, "--policy-name", "long-ok",
              "--policy-document", shorter)
    iam_quiet(server, "delete-user-policy", "--user-name", policy_target.name, "--policy-name", "long-ok")


# ---------------------------------------------------------------------------
# 2. Who may use the admin API
# ---------------------------------------------------------------------------


def test_admin_api_needs_iam_permissions(server, ct, module_start):
    full = new_user(server, "full", managed=("OpenTrailFullAccess",))
    client_as(server, full.key, full.secret).describe_trails()  # cloudtrail:* is fine

    target = f"made-by-full-{uid()}"
    msg = iam_fail(server, "CreateUser", "AccessDeniedException", "create-user", "--user-name", target,
                   key=full.key, secret=full.secret)
    assert msg.startswith(f"User: {full.arn} is not authorized to perform: iam:CreateUser"), msg
    iam_fail(server, "ListUsers", "AccessDeniedException", "list-users", key=full.key, secret=full.secret)
    iam_fail(server, "AttachUserPolicy", "AccessDeniedException", "attach-user-policy",
             "--user-name", full.name, "--policy-name", "AdministratorAccess",
             key=full.key, secret=full.secret)
    iam_fail(server, "GetUser", "NoSuchEntity", "get-user", "--user-name", target)
    assert [p["PolicyName"] for p in iam_ok(server, "list-attached-user-policies", "--user-name", full.name)
            ["AttachedPolicies"]] == ["OpenTrailFullAccess"]

    # The refused admin call is audited as the user's, with errorCode AccessDenied.
    recs = audit_records(ct, "CreateUser", module_start,
                         lambda r: (r.get("requestParameters") or {}).get("userName") == target)
    assert len(recs) == 1, recs
    rec = recs[0]
    assert rec["eventSource"] == "iam.amazonaws.com"
    assert rec["errorCode"] == "AccessDenied", rec
    assert rec["userIdentity"]["type"] == "IAMUser"
    assert rec["userIdentity"]["userName"] == full.name
    assert rec["userIdentity"]["accessKeyId"] == full.key

    admin = new_user(server, "admin", managed=("AdministratorAccess",))
    made = iam_ok(server, "create-user", "--user-name", target, key=admin.key, secret=admin.secret)
    assert made["User"]["UserName"] == target
    assert target in [u["UserName"] for u in
                      iam_ok(server, "list-users", key=admin.key, secret=admin.secret)["Users"]]
    key, secret = create_key(server, target, key=admin.key, secret=admin.secret)
    iam_quiet(server, "attach-user-policy", "--user-name", target, "--policy-name", "OpenTrailReadOnlyAccess",
              key=admin.key, secret=admin.secret)
    assert can_describe(User(target, key, secret), server) is True
    # AdministratorAccess covers the CloudTrail API as well.
    client_as(server, admin.key, admin.secret).describe_trails()


# ---------------------------------------------------------------------------
# 3. Conditions and policy variables
# ---------------------------------------------------------------------------

DESCRIBE = "cloudtrail:DescribeTrails"


def test_condition_not_ip_address_deny(server):
    denied = new_user(server, "ipdeny", inline=policy(
        allow(DESCRIBE),
        deny(DESCRIBE, Condition={"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}),
    ))
    expect_denied(client_as(server, denied.key, denied.secret), "describe_trails", denied.name,
                  explicit=True)
    spared = new_user(server, "ipspared", inline=policy(
        allow(DESCRIBE),
        deny(DESCRIBE, Condition={"NotIpAddress": {"aws:SourceIp": "127.0.0.0/8"}}),
    ))
    assert can_describe(spared, server) is True


def test_condition_ip_address_allow(server):
    local = new_user(server, "iplocal", inline=policy(
        allow(DESCRIBE, Condition={"IpAddress": {"aws:SourceIp": "127.0.0.0/8"}})))
    assert can_describe(local, server) is True
    remote = new_user(server, "ipremote", inline=policy(
        allow(DESCRIBE, Condition={"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}})))
    expect_denied(client_as(server, remote.key, remote.secret), "describe_trails", remote.name)


def test_condition_secure_transport(server):
    tls_only = new_user(server, "tls", inline=policy(
        allow(DESCRIBE, Condition={"Bool": {"aws:SecureTransport": "true"}})))
    expect_denied(client_as(server, tls_only.key, tls_only.secret), "describe_trails", tls_only.name)
    plain = new_user(server, "plain", inline=policy(
        allow(DESCRIBE, Condition={"Bool": {"aws:SecureTransport": "false"}})))
    assert can_describe(plain, server) is True


def test_condition_current_time(server):
    future = (utcnow() + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    past = (utcnow() - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    later = new_user(server, "later", inline=policy(
        allow(DESCRIBE, Condition={"DateGreaterThan": {"aws:CurrentTime": future}})))
    expect_denied(client_as(server, later.key, later.secret), "describe_trails", later.name)
    now_ok = new_user(server, "nowok", inline=policy(
        allow(DESCRIBE, Condition={"DateGreaterThan": {"aws:CurrentTime": past}})))
    assert can_describe(now_ok, server) is True


def _own_trail_setup(server, ct, version: str) -> tuple[User, str]:
    doc = policy(allow("cloudtrail:GetTrail", f"arn:aws:cloudtrail:us-east-1:{ACCOUNT_ID}:trail/${{aws:username}}"),
                 version=version)
    user = new_user(server, "own", inline=doc)
    bucket = make_bucket(server)
    other = f"{user.name}-other"
    ct.create_trail(Name=user.name, S3BucketName=bucket)
    ct.create_trail(Name=other, S3BucketName=bucket)
    return user, other


def test_policy_variable_username_in_resource(server, ct):
    user, other = _own_trail_setup(server, ct, "2012-10-17")
    cli = client_as(server, user.key, user.secret)
    assert cli.get_trail(Name=user.name)["Trail"]["Name"] == user.name
    assert cli.get_trail(Name=trail_arn(user.name))["Trail"]["Name"] == user.name
    expect_denied(cli, "get_trail", user.name, trail_arn(other), Name=other)
    expect_denied(cli, "get_trail_status", user.name, trail_arn(user.name), Name=user.name)


def test_policy_variable_needs_version_2012(server, ct):
    # With Version 2008-10-17 "${aws:username}" is a literal, not a variable.
    user, _ = _own_trail_setup(server, ct, "2008-10-17")
    expect_denied(client_as(server, user.key, user.secret), "get_trail", user.name,
                  trail_arn(user.name), Name=user.name)


def test_condition_requested_region(server):
    user = new_user(server, "region", inline=policy(
        allow(DESCRIBE, Condition={"StringEquals": {"aws:RequestedRegion": "eu-west-1"}})))
    assert can_describe(user, server, region="eu-west-1") is True
    expect_denied(client_as(server, user.key, user.secret, "us-east-1"), "describe_trails", user.name)


# ---------------------------------------------------------------------------
# 4. Native ingest
# ---------------------------------------------------------------------------


def _post_events(sess: requests.Session | None, server, records: list[dict]) -> requests.Response:
    poster = sess.post if sess is not None else requests.post
    return poster(f"{server.url}/v1/events", json={"Records": records}, timeout=60)


def test_ingest_authorization(server, ct):
    since = utcnow() - dt.timedelta(seconds=2)
    full = new_user(server, "ingfull", managed=("OpenTrailFullAccess",))
    ro = new_user(server, "ingro", managed=("OpenTrailReadOnlyAccess",))
    scoped = new_user(server, "ingscoped", inline=policy(
        allow("opentrail:IngestEvents", f"arn:aws:opentrail::{ACCOUNT_ID}:events")))

    def rec(tag: str, **kw: Any) -> dict:
        return make_record(eventName=f"Iam{tag}{uid()}", **kw)

    # Refused: read-only user.
    ro_recs = [rec("RoIngest"), rec("RoIngest")]
    r = _post_events(signed_session(ro.key, ro.secret), server, ro_recs)
    assert r.status_code == 403, r.text
    body = r.json()
    assert body["__type"] == "AccessDeniedException", body
    assert body["Message"] == denied_message(ro.name, "opentrail:IngestEvents",
                                             f"arn:aws:opentrail::{ACCOUNT_ID}:events"), body

    # Refused whole: a batch with one foreign-account record.
    mixed = [rec("MixedOwn"), rec("MixedForeign", recipientAccountId="444455556666"), rec("MixedOwn")]
    r = _post_events(signed_session(scoped.key, scoped.secret), server, mixed)
    assert r.status_code == 403, r.text
    body = r.json()
    assert body["__type"] == "AccessDeniedException", body
    assert body["Message"] == denied_message(scoped.name, "opentrail:IngestEvents",
                                             "arn:aws:opentrail::444455556666:events"), body

    # Refused: unsigned.
    unsigned_recs = [rec("Unsigned")]
    r = _post_events(None, server, unsigned_recs)
    assert r.status_code == 403, r.text
    body = r.json()
    assert body["__type"] == "MissingAuthenticationTokenException", body
    assert body["Message"] == "Missing Authentication Token", body

    # Accepted: the FullAccess user, and the scoped user for its own account
    # (explicitly, and by the default recipientAccountId).
    full_recs = [rec("FullIngest")]
    r = _post_events(signed_session(full.key, full.secret), server, full_recs)
    assert r.status_code == 200, r.text
    assert len(r.json()["EventIds"]) == 1
    scoped_recs = [rec("ScopedIngest"), rec("ScopedIngest")]
    scoped_recs[1].pop("recipientAccountId")
    r = _post_events(signed_session(scoped.key, scoped.secret), server, scoped_recs)
    assert r.status_code == 200, r.text
    assert len(r.json()["EventIds"]) == 2

    for sent in full_recs + scoped_recs:
        poll_until(f"ingested {sent['eventName']}",
                   lambda: events_named(ct, sent["eventName"], since - dt.timedelta(hours=1)), VISIBLE_S)
    time.sleep(1.0)
    for sent in ro_recs + mixed + unsigned_recs:
        assert events_named(ct, sent["eventName"], since - dt.timedelta(hours=1)) == [], (
            f"refused record {sent['eventName']} was stored")

    # The refusals are self-audited; the accepted ingests are not.
    def ingest_audit(match: Callable[[dict], bool]) -> list[dict]:
        return audit_records(ct, "IngestEvents", since,
                             lambda r: r.get("eventSource") == "opentrail.amazonaws.com" and match(r))

    def by_user(name: str) -> Callable[[dict], bool]:
        return lambda r: (r.get("userIdentity") or {}).get("userName") == name

    for who in (ro, scoped):
        recs = ingest_audit(by_user(who.name))
        assert len(recs) == 1, recs
        a = recs[0]
        assert a["eventName"] == "IngestEvents"
        assert a["errorCode"] == "AccessDenied", a
        assert "requestParameters" in a and a["requestParameters"] is None, a
        assert a["userIdentity"]["accessKeyId"] == who.key
    unsigned_audit = ingest_audit(lambda r: r.get("errorCode") == "MissingAuthenticationTokenException")
    assert len(unsigned_audit) == 1, unsigned_audit
    assert unsigned_audit[0]["requestParameters"] is None
    for ev in events_named(ct, "IngestEvents", since):
        a = json.loads(ev["CloudTrailEvent"])
        assert (a.get("userIdentity") or {}).get("userName") != full.name, a
        assert a.get("errorCode"), f"a successful ingest was audited: {a}"


# ---------------------------------------------------------------------------
# 5. /metrics
# ---------------------------------------------------------------------------


def _presigned_metrics(server, key: str, secret: str, expires: int) -> str:
    req = AWSRequest(method="GET", url=f"{server.url}/metrics")
    SigV4QueryAuth(Credentials(key, secret), "opentrail", "us-east-1", expires=expires).add_auth(req)
    return req.url


def test_metrics_authorization(server, ct):
    since = utcnow() - dt.timedelta(seconds=2)
    r = signed_session().get(f"{server.url}/metrics", timeout=30)
    assert r.status_code == 200, r.text
    assert r.text.strip()

    ro = new_user(server, "metro", managed=("OpenTrailReadOnlyAccess",))
    r = signed_session(ro.key, ro.secret).get(f"{server.url}/metrics", timeout=30)
    assert r.status_code == 200, r.text

    nopol = new_user(server, "metnone")
    r = signed_session(nopol.key, nopol.secret).get(f"{server.url}/metrics", timeout=30)
    assert r.status_code == 403, r.text
    assert error_code(r.json()["__type"]) == "AccessDeniedException", r.text
    assert "opentrail:GetMetrics" in r.json()["Message"], r.text

    r = requests.get(f"{server.url}/metrics", timeout=30)
    assert r.status_code == 403, r.text
    assert error_code(r.json()["__type"]) == "MissingAuthenticationTokenException", r.text

    # The refused scrape is self-audited.
    recs = audit_records(ct, "GetMetrics", since,
                         lambda a: (a.get("userIdentity") or {}).get("userName") == nopol.name)
    assert recs[0]["eventSource"] == "opentrail.amazonaws.com"
    assert recs[0]["errorCode"] == "AccessDenied"


def test_metrics_presigned_url(server):
    url = _presigned_metrics(server, FAKE_ACCESS_KEY, FAKE_SECRET_KEY, 60)
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=60" in url
    r = requests.get(url, timeout=30)
    assert r.status_code == 200, r.text

    ro = new_user(server, "metpre", managed=("OpenTrailReadOnlyAccess",))
    r = requests.get(_presigned_metrics(server, ro.key, ro.secret, 60), timeout=30)
    assert r.status_code == 200, r.text

    short = _presigned_metrics(server, FAKE_ACCESS_KEY, FAKE_SECRET_KEY, 1)
    assert "X-Amz-Expires=1&" in short or short.endswith("X-Amz-Expires=1")
    time.sleep(2.0)
    r = requests.get(short, timeout=30)
    assert r.status_code == 403, r.text
    body = r.json()
    assert error_code(body["__type"]) == "SignatureDoesNotMatch", body
    assert body["Message"].startswith("Request has expired"), body


# ---------------------------------------------------------------------------
# 6. Self-audit of the admin API, and secrecy of secret keys
# ---------------------------------------------------------------------------


def test_admin_calls_are_self_audited(server, ct):
    since = utcnow() - dt.timedelta(seconds=2)
    name = f"audited-{uid()}"
    iam_ok(server, "create-user", "--user-name", name)
    key, _ = create_key(server, name)
    iam_quiet(server, "attach-user-policy", "--user-name", name, "--policy-name", "OpenTrailReadOnlyAccess")
    iam_quiet(server, "put-user-policy", "--user-name", name, "--policy-name", "audited-inline",
              "--policy-document", json.dumps(policy(allow("cloudtrail:ListTrails"))))
    iam_quiet(server, "update-access-key", "--user-name", name, "--access-key-id", key, "--status", "Inactive")
    iam_quiet(server, "delete-access-key", "--user-name", name, "--access-key-id", key)
    iam_quiet(server, "detach-user-policy", "--user-name", name, "--policy-name", "OpenTrailReadOnlyAccess")
    iam_quiet(server, "delete-user-policy", "--user-name", name, "--policy-name", "audited-inline")
    iam_quiet(server, "delete-user", "--user-name", name)

    def for_user(r: dict) -> bool:
        return (r.get("requestParameters") or {}).get("userName") == name

    found = {}
    for action in ("CreateUser", "CreateAccessKey", "AttachUserPolicy", "PutUserPolicy",
                   "UpdateAccessKey", "DeleteUser"):
        recs = audit_records(ct, action, since, for_user)
        assert len(recs) == 1, (action, recs)
        rec = recs[0]
        assert rec["eventSource"] == "iam.amazonaws.com", rec
        assert rec["eventName"] == action, rec
        assert "errorCode" not in rec, rec
        assert rec["recipientAccountId"] == ACCOUNT_ID
        ident = rec["userIdentity"]
        assert ident["type"] == "Root", ident
        assert ident["arn"] == ROOT_ARN, ident
        assert ident["accountId"] == ACCOUNT_ID, ident
        assert ident["accessKeyId"] == FAKE_ACCESS_KEY, ident
        assert "userName" not in ident, ident
        found[action] = rec

    assert found["CreateUser"]["requestParameters"] == {"userName": name}
    assert found["UpdateAccessKey"]["requestParameters"].get("accessKeyId") == key
    assert found["UpdateAccessKey"]["requestParameters"].get("status") == "Inactive"
    resp = found["CreateAccessKey"]["responseElements"]
    assert set(resp["accessKey"]) == {"userName", "accessKeyId", "status", "createDate"}, resp
    assert resp["accessKey"]["accessKeyId"] == key
    assert resp["accessKey"]["userName"] == name
    assert resp["accessKey"]["status"] == "Active"
    assert "secretaccesskey" not in json.dumps(found["CreateAccessKey"]).lower()

    # LookupEvents' own view of one of them.
    evs = [e for e in events_named(ct, "CreateUser", since)
           if json.loads(e["CloudTrailEvent"])["eventID"] == found["CreateUser"]["eventID"]]
    assert len(evs) == 1 and evs[0]["EventSource"] == "iam.amazonaws.com"


def test_secret_keys_never_recorded_or_logged(server, ct, module_start):
    """Runs last: every secret created in this module against every event the
    module's server holds for the module's time window, and its log."""
    new_user(server, "lastkey")
    assert SECRETS, "no secrets were collected"
    time.sleep(1.0)  # the last calls' audit records become visible
    events = lookup_all(ct, StartTime=module_start - dt.timedelta(minutes=1),
                        EndTime=utcnow() + dt.timedelta(minutes=1))
    names = {e["EventName"] for e in events}
    assert {"CreateAccessKey", "CreateUser", "PutUserPolicy"} <= names, names
    texts = []
    for ev in events:
        texts.append(json.dumps(ev, default=str))
        texts.append(ev.get("CloudTrailEvent", ""))
    leaked = [(s, t[:300]) for t in texts for s in SECRETS if s in t]
    assert not leaked, f"secret access keys found in event records: {leaked[:3]}"
    log = server.log_text()
    assert log, "empty server log"
    in_log = [s for s in SECRETS if s in log]
    assert not in_log, f"{len(in_log)} secret access keys found in {server.log_path}"


# ---------------------------------------------------------------------------
# 7. Root key bootstrap (a server of its own)
# ---------------------------------------------------------------------------


class NoRootKeyServer(OpenTrailServer):
    """A server started without OPENTRAIL_ROOT_ACCESS_KEY_ID / _SECRET_ACCESS_KEY."""

    def _env(self) -> dict:
        env = super()._env()
        env.pop("OPENTRAIL_ROOT_ACCESS_KEY_ID", None)
        env.pop("OPENTRAIL_ROOT_SECRET_ACCESS_KEY", None)
        return env


def test_root_key_bootstrap(opentrail_bin, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    srv = NoRootKeyServer(opentrail_bin, data_dir, tmp_path / "server.log", free_port())
    assert "OPENTRAIL_ROOT_ACCESS_KEY_ID" not in srv._env()
    assert "OPENTRAIL_ROOT_SECRET_ACCESS_KEY" not in srv._env()
    srv.start()
    try:
        cred_path = data_dir / "root-credentials.json"
        assert cred_path.is_file(), f"{cred_path} not written"
        st = cred_path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
        raw = cred_path.read_bytes()
        creds = json.loads(raw)
        assert set(creds) == {"AccessKeyId", "SecretAccessKey", "AccountId"}, creds.keys()
        assert ACCESS_KEY_RE.match(creds["AccessKeyId"]), creds["AccessKeyId"]
        assert isinstance(creds["SecretAccessKey"], str) and len(creds["SecretAccessKey"]) == 40
        assert creds["AccountId"] == ACCOUNT_ID
        key, secret = creds["AccessKeyId"], creds["SecretAccessKey"]

        client_as(srv, key, secret).describe_trails()
        # The well-known test key is not configured on this server.
        expect_error("InvalidClientTokenId", client_as(srv, FAKE_ACCESS_KEY, FAKE_SECRET_KEY).describe_trails,
                     status=403)
        log = srv.log_text()
        assert secret not in log, "the generated root secret is in the server log"
        assert key in log, "the log does not name the generated root key id"
        assert "root-credentials.json" in log, "the log does not name the credentials file"

        srv.restart()
        assert cred_path.read_bytes() == raw, "root-credentials.json changed across a restart"
        st2 = cred_path.stat()
        assert st2.st_mtime_ns == st.st_mtime_ns, "root-credentials.json was rewritten"
        assert stat.S_IMODE(st2.st_mode) == 0o600
        client_as(srv, key, secret).describe_trails()
        assert secret not in srv.log_text(), "the generated root secret is in the server log after restart"
    finally:
        srv.stop()
