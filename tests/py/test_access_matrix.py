"""Access control, table-driven: every one of the 18 CloudTrail operations OpenTrail implements,
called by each of seven principals, through boto3 and through the real AWS CLI v1.

Principals (made once per module by the root key through the admin API, ``OpenTrailIAM.*``):

==============  ===============================================================================
full            IAM user with ``OpenTrailFullAccess``
readonly        IAM user with ``OpenTrailReadOnlyAccess``
nopolicy        IAM user without any policy
denystop        ``OpenTrailFullAccess`` + an inline explicit Deny of ``cloudtrail:StopLogging``
inactive        ``OpenTrailFullAccess``, but its access key was made Inactive
wrongsecret     a real access key id (of a full-access user) signed with a wrong secret
skewed          the full-access user's key, signing with a clock 20 minutes in the past
==============  ===============================================================================

Every principal gets its own trail for each client (created by root, logging, tagged, with
Insights on), so mutations never interfere; ``DeleteTrail`` comes last in each sequence and
``CreateTrail`` uses a fresh name.  For each cell the exact outcome is asserted (success, or the
error code + HTTP status + message), a denied mutation is shown to change nothing (root's view of
the trail before and after), and the call's self-audit record is found by its request id with the
right errorCode and userIdentity.  Separate tests cover the 15-minute skew window and unsigned,
malformed and tampered requests.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.auth
import pytest
import requests
from botocore import xform_name
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from conftest import (
    ACCOUNT_ID,
    AMZ_JSON,
    AWS_CLI,
    TARGET_PREFIX,
    attrs,
    cloudtrail_client,
    error_code,
    lookup_all,
    signed_session,
    uid,
    utcnow,
)

SERVER_ENV = {"OPENTRAIL_MAX_TRAILS_PER_REGION": "200"}

REGION = "us-east-1"
SKEW_MINUTES = -20
AUDIT_TIMEOUT_S = 5.0
CLI_WORKERS = 4

# The order each principal calls them in: reads first, then mutations, DeleteTrail last.
OPS = [
    "LookupEvents",
    "ListTrails",
    "DescribeTrails",
    "GetTrail",
    "GetTrailStatus",
    "ListPublicKeys",
    "ListTags",
    "GetEventSelectors",
    "GetInsightSelectors",
    "CreateTrail",
    "UpdateTrail",
    "StopLogging",
    "StartLogging",
    "AddTags",
    "RemoveTags",
    "PutEventSelectors",
    "PutInsightSelectors",
    "DeleteTrail",
]
assert len(set(OPS)) == 18
READ_ONLY_OPS = {
    "LookupEvents", "GetTrail", "DescribeTrails", "ListTrails", "GetTrailStatus", "ListTags",
    "ListPublicKeys", "GetEventSelectors", "GetInsightSelectors",
}
MUTATING_OPS = [op for op in OPS if op not in READ_ONLY_OPS]
# Operations authorized on resource "*" (the others on the trail they name).
STAR_OPS = {"LookupEvents", "DescribeTrails", "ListTrails", "ListPublicKeys"}

PRINCIPALS = ["full", "readonly", "nopolicy", "denystop", "inactive", "wrongsecret", "skewed"]
CLIENTS = ["boto3", "cli"]

BASE_INSIGHTS = [{"InsightType": "ApiCallRateInsight"}]
NEW_INSIGHTS = [{"InsightType": "ApiErrorRateInsight"}]
NEW_EVENT_SELECTORS = [{"ReadWriteType": "WriteOnly", "IncludeManagementEvents": True}]
DENY_STOP_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Deny", "Action": "cloudtrail:StopLogging", "Resource": "*"}],
}

MSG_INVALID_TOKEN = "The security token included in the request is invalid."
MSG_BAD_SIGNATURE = "The request signature we calculated does not match"

# (client, principal, op) -> reason: cells where the server disagrees with the contract.
DISAGREEMENTS: dict[tuple[str, str, str], str] = {}


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    label: str
    user_name: str
    user_id: str
    access_key_id: str
    secret: str  # what this principal signs with (a wrong one for "wrongsecret")
    skew_minutes: float = 0

    @property
    def arn(self) -> str:
        return f"arn:aws:iam::{ACCOUNT_ID}:user/{self.user_name}"


@dataclass(frozen=True)
class Target:
    """The trail a principal works on (made by root) and the name its CreateTrail uses."""
    name: str
    arn: str
    fresh: str
    bucket: str


@dataclass(frozen=True)
class Expect:
    code: str | None  # None: success
    status: int
    message: str | None = None  # exact message
    prefix: str | None = None  # message prefix
    audit_code: str | None = None  # errorCode of the self-audit record

    @property
    def denied(self) -> bool:
        return self.code == "AccessDeniedException"

    @property
    def auth_failure(self) -> bool:
        return self.code is not None and not self.denied


@dataclass
class Outcome:
    status: int | None
    code: str | None
    message: str | None
    request_id: str | None
    body: Any
    requests: int  # HTTP requests the client made for the call
    rc: int | None = None  # AWS CLI exit status
    detail: str = ""  # for assertion messages
    before: dict | None = None  # root's view of the trail around a denied mutation
    after: dict | None = None


@dataclass
class Matrix:
    client: str
    targets: dict[str, Target]
    expected: dict[tuple[str, str], Expect] = field(default_factory=dict)
    results: dict[tuple[str, str], Outcome] = field(default_factory=dict)


def trail_arn(name: str) -> str:
    return f"arn:aws:cloudtrail:{REGION}:{ACCOUNT_ID}:trail/{name}"


def strip_meta(resp: dict) -> dict:
    return {k: v for k, v in resp.items() if k != "ResponseMetadata"}


# ---------------------------------------------------------------------------
# Admin API and principals
# ---------------------------------------------------------------------------


def iam(server, action: str, **body: Any) -> dict:
    """An admin API call signed by the root key; asserts success."""
    r = signed_session().post(
        server.url + "/",
        data=json.dumps(body).encode(),
        headers={"X-Amz-Target": f"OpenTrailIAM.{action}", "Content-Type": AMZ_JSON},
        timeout=30,
    )
    assert r.status_code == 200, f"{action} {body}: HTTP {r.status_code} {r.text[:1000]}"
    return r.json() if r.content.strip() else {}


def make_user(server, name: str, policies: list[str], inline: dict | None = None,
              inactive: bool = False) -> tuple[str, str, str]:
    """Creates a user with the given managed policies (and inline policy); returns
    (UserId, AccessKeyId, SecretAccessKey)."""
    user = iam(server, "CreateUser", UserName=name)["User"]
    for policy in policies:
        iam(server, "AttachUserPolicy", UserName=name,
            PolicyArn=f"arn:aws:iam::aws:policy/{policy}")
    if inline is not None:
        iam(server, "PutUserPolicy", UserName=name, PolicyName="DenyStopLogging",
            PolicyDocument=json.dumps(inline))
    key = iam(server, "CreateAccessKey", UserName=name)["AccessKey"]
    if inactive:
        iam(server, "UpdateAccessKey", UserName=name, AccessKeyId=key["AccessKeyId"],
            Status="Inactive")
        listed = iam(server, "ListAccessKeys", UserName=name)["AccessKeyMetadata"]
        assert [k["Status"] for k in listed] == ["Inactive"], listed
    return user["UserId"], key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture(scope="module")
def since() -> dt.datetime:
    return utcnow() - dt.timedelta(minutes=1)


@pytest.fixture(scope="module")
def principals(server, since) -> dict[str, Principal]:
    tag = uid()
    out: dict[str, Principal] = {}

    def add(label: str, policies: list[str], inline: dict | None = None,
            inactive: bool = False) -> Principal:
        name = f"acc-{label}-{tag}"
        user_id, key_id, secret = make_user(server, name, policies, inline, inactive)
        out[label] = Principal(label, name, user_id, key_id, secret)
        return out[label]

    full = add("full", ["OpenTrailFullAccess"])
    add("readonly", ["OpenTrailReadOnlyAccess"])
    add("nopolicy", [])
    add("denystop", ["OpenTrailFullAccess"], inline=DENY_STOP_POLICY)
    add("inactive", ["OpenTrailFullAccess"], inactive=True)
    real = add("wrongsecret", ["OpenTrailFullAccess"])
    wrong = "WrongSecret" + real.secret[11:]
    assert wrong != real.secret
    out["wrongsecret"] = Principal("wrongsecret", real.user_name, real.user_id,
                                   real.access_key_id, wrong)
    out["skewed"] = Principal("skewed", full.user_name, full.user_id, full.access_key_id,
                              full.secret, skew_minutes=SKEW_MINUTES)
    assert list(out) == PRINCIPALS
    return out


@pytest.fixture(scope="module")
def bucket(server) -> str:
    name = f"acc-bucket-{uid()}"
    proc = subprocess.run(
        [server.binary, "buckets", "create", name, "--data-dir", str(server.data_dir)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return name


def make_targets(server, bucket: str, client: str) -> dict[str, Target]:
    """One trail per principal, made by root: logging, tagged base=1, Insights on."""
    root = cloudtrail_client(server)
    out = {}
    for label in PRINCIPALS:
        name = f"acc-{client}-{label}-{uid()}"
        arn = root.create_trail(Name=name, S3BucketName=bucket)["TrailARN"]
        assert arn == trail_arn(name)
        root.start_logging(Name=name)
        root.add_tags(ResourceId=arn, TagsList=[{"Key": "base", "Value": "1"}])
        root.put_insight_selectors(TrailName=name, InsightSelectors=BASE_INSIGHTS)
        out[label] = Target(name, arn, f"acc-new-{client}-{label}-{uid()}", bucket)
    return out


# ---------------------------------------------------------------------------
# Requests and expectations
# ---------------------------------------------------------------------------


def op_params(op: str, t: Target) -> dict:
    """A valid request for ``op`` on the principal's trail (boto3 / API member names)."""
    return {
        "LookupEvents": {"LookupAttributes": attrs(("EventName", f"NoSuchEvent{uid()}")),
                         "MaxResults": 1},
        "CreateTrail": {"Name": t.fresh, "S3BucketName": t.bucket},
        "UpdateTrail": {"Name": t.name, "S3KeyPrefix": "updated"},
        "DeleteTrail": {"Name": t.name},
        "GetTrail": {"Name": t.name},
        "DescribeTrails": {},
        "ListTrails": {},
        "GetTrailStatus": {"Name": t.name},
        "StartLogging": {"Name": t.name},
        "StopLogging": {"Name": t.name},
        "AddTags": {"ResourceId": t.arn, "TagsList": [{"Key": "added", "Value": "yes"}]},
        "RemoveTags": {"ResourceId": t.arn, "TagsList": [{"Key": "base"}]},
        "ListTags": {"ResourceIdList": [t.arn]},
        "ListPublicKeys": {},
        "PutEventSelectors": {"TrailName": t.name, "EventSelectors": NEW_EVENT_SELECTORS},
        "GetEventSelectors": {"TrailName": t.name},
        "PutInsightSelectors": {"TrailName": t.name, "InsightSelectors": NEW_INSIGHTS},
        "GetInsightSelectors": {"TrailName": t.name},
    }[op]


def cli_params(params: dict) -> list[str]:
    args: list[str] = []
    for key, value in params.items():
        args.append("--" + xform_name(key, "-"))
        args.append(json.dumps(value) if isinstance(value, (list, dict)) else str(value))
    return args


def resource_of(op: str, t: Target) -> str:
    if op in STAR_OPS:
        return "*"
    return trail_arn(t.fresh if op == "CreateTrail" else t.name)


def expected(p: Principal, op: str, t: Target) -> Expect:
    if p.label == "inactive":
        return Expect("InvalidClientTokenId", 403, message=MSG_INVALID_TOKEN,
                      audit_code="InvalidClientTokenId")
    if p.label == "wrongsecret":
        return Expect("SignatureDoesNotMatch", 403, prefix=MSG_BAD_SIGNATURE,
                      audit_code="SignatureDoesNotMatch")
    if p.label == "skewed":
        return Expect("SignatureDoesNotMatch", 403, prefix="Signature expired:",
                      audit_code="SignatureDoesNotMatch")
    action = f"cloudtrail:{op}"
    head = f"User: {p.arn} is not authorized to perform: {action} on resource: {resource_of(op, t)}"
    implicit = f"{head} because no identity-based policy allows the {action} action"
    explicit = f"{head} with an explicit deny in an identity-based policy"
    if p.label == "full":
        return Expect(None, 200)
    if p.label == "readonly":
        if op in READ_ONLY_OPS:
            return Expect(None, 200)
        return Expect("AccessDeniedException", 403, message=implicit, audit_code="AccessDenied")
    if p.label == "nopolicy":
        return Expect("AccessDeniedException", 403, message=implicit, audit_code="AccessDenied")
    if p.label == "denystop":
        if op == "StopLogging":
            return Expect("AccessDeniedException", 403, message=explicit,
                          audit_code="AccessDenied")
        return Expect(None, 200)
    raise AssertionError(p.label)


def check_success_body(op: str, body: Any, t: Target) -> None:
    """Light checks that a successful call really did what it was asked."""
    if op in ("StartLogging", "StopLogging", "AddTags", "RemoveTags", "DeleteTrail"):
        assert body in ({}, None), body
        return
    assert isinstance(body, dict), body
    if op == "LookupEvents":
        assert body["Events"] == [], body
    elif op == "CreateTrail":
        assert (body["Name"], body["TrailARN"]) == (t.fresh, trail_arn(t.fresh)), body
    elif op == "UpdateTrail":
        assert (body["Name"], body["S3KeyPrefix"]) == (t.name, "updated"), body
    elif op == "GetTrail":
        assert body["Trail"]["TrailARN"] == t.arn, body
    elif op == "DescribeTrails":
        assert t.name in [x["Name"] for x in body["trailList"]], body
    elif op == "ListTrails":
        assert isinstance(body["Trails"], list), body
    elif op == "GetTrailStatus":
        assert body["IsLogging"] is True, body
    elif op == "ListTags":
        assert [x["ResourceId"] for x in body["ResourceTagList"]] == [t.arn], body
    elif op == "ListPublicKeys":
        assert isinstance(body.get("PublicKeyList", []), list), body
    elif op in ("GetEventSelectors", "PutEventSelectors"):
        assert body["TrailARN"] == t.arn, body
    elif op == "GetInsightSelectors":
        assert (body["TrailARN"], body["InsightSelectors"]) == (t.arn, BASE_INSIGHTS), body
    elif op == "PutInsightSelectors":
        assert (body["TrailARN"], body["InsightSelectors"]) == (t.arn, NEW_INSIGHTS), body
    else:
        raise AssertionError(op)


# ---------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------


@contextmanager
def skewed_clock(minutes: float):
    """botocore signs with a clock ``minutes`` off (botocore v1 does not correct skew)."""
    if not minutes:
        yield
        return
    original = botocore.auth.get_current_datetime

    def skewed() -> dt.datetime:
        return (dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
                + dt.timedelta(minutes=minutes))

    botocore.auth.get_current_datetime = skewed
    try:
        yield
    finally:
        botocore.auth.get_current_datetime = original


def boto3_client(server, key: str, secret: str):
    return boto3.session.Session().client(
        "cloudtrail",
        region_name=REGION,
        endpoint_url=server.url,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=60),
    )


def call_boto3(client, op: str, params: dict, skew: float = 0) -> Outcome:
    method = getattr(client, xform_name(op))
    with skewed_clock(skew):
        try:
            resp = method(**params)
        except ClientError as e:
            r = e.response
            meta = r["ResponseMetadata"]
            return Outcome(meta.get("HTTPStatusCode"), r["Error"].get("Code"),
                           r["Error"].get("Message"), meta.get("RequestId"), None,
                           meta.get("RetryAttempts", 0) + 1, detail=repr(r))
    meta = resp["ResponseMetadata"]
    return Outcome(meta.get("HTTPStatusCode"), None, None, meta.get("RequestId"),
                   strip_meta(resp), meta.get("RetryAttempts", 0) + 1, detail=repr(resp))


# Runs the AWS CLI v1 with botocore's clock patched: argv = [skew minutes, CLI args...].
SKEW_WRAPPER = r"""
import datetime, sys
import botocore.auth
_skew = datetime.timedelta(minutes=float(sys.argv.pop(1)))
botocore.auth.get_current_datetime = (
    lambda: datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) + _skew)
from awscli.clidriver import main
sys.exit(main())
"""

# botocore adds " (reached max retries: N)" when the error was one it would retry (clock skew).
CLI_ERROR = re.compile(
    r"^An error occurred \(([^)]+)\) when calling the (\w+) operation"
    r"(?: \(reached max retries: \d+\))?: (.*)$", re.M)


def cli_env(key: str, secret: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_PAGER": "",
        "AWS_MAX_ATTEMPTS": "1",
    })
    return env


def call_cli(server, key: str, secret: str, op: str, params: dict, skew: float = 0) -> Outcome:
    """One AWS CLI command (``--debug``: the HTTP status and the x-amzn-RequestId are read from
    its log). ``skew`` runs it through the clock-patching wrapper."""
    if not AWS_CLI.exists():
        pytest.fail(f"AWS CLI not found at {AWS_CLI}", pytrace=False)
    args = ["--endpoint-url", server.url, "--region", REGION, "--output", "json", "--debug",
            "--no-paginate", "cloudtrail", xform_name(op, "-"), *cli_params(params)]
    if skew:
        cmd = [sys.executable, "-c", SKEW_WRAPPER, str(skew), *args]
    else:
        cmd = [str(AWS_CLI), *args]
    proc = subprocess.run(cmd, env=cli_env(key, secret), capture_output=True, text=True,
                          timeout=120)
    err = proc.stderr
    statuses = re.findall(r'"POST / HTTP/1\.1" (\d{3})', err)
    request_ids = re.findall(r"'x-amzn-requestid': '([^']+)'", err, re.I)
    errors = CLI_ERROR.findall(err)
    body = None
    if proc.stdout.strip():
        try:
            body = json.loads(proc.stdout)
        except ValueError:
            body = proc.stdout
    code = message = None
    if errors:
        code, called, message = errors[-1]
        assert called == op, errors[-1]
    detail = (f"cmd={' '.join(cmd[-len(args):])!r} rc={proc.returncode} stdout={proc.stdout[-1500:]!r} "
              f"stderr tail={err[-1500:]!r}")
    return Outcome(int(statuses[-1]) if statuses else None, code, message,
                   request_ids[-1] if request_ids else None,
                   body if proc.returncode == 0 else None, len(statuses), rc=proc.returncode,
                   detail=detail)


# ---------------------------------------------------------------------------
# Root's view of a trail
# ---------------------------------------------------------------------------


def snapshot(root, t: Target) -> dict:
    """Everything a denied mutation could have changed, as root sees it."""
    try:
        root.get_trail(Name=t.fresh)
        fresh_exists = True
    except ClientError as e:
        assert e.response["Error"]["Code"] == "TrailNotFoundException", e.response
        fresh_exists = False
    try:
        status = root.get_trail_status(Name=t.name)
    except ClientError as e:
        assert e.response["Error"]["Code"] == "TrailNotFoundException", e.response
        return {"GetTrail": "TrailNotFoundException", "CreateTrail's new name exists": fresh_exists}
    return {
        "GetTrail": root.get_trail(Name=t.name)["Trail"],
        "GetTrailStatus": {k: status.get(k) for k in
                           ("IsLogging", "StartLoggingTime", "StopLoggingTime")},
        "GetEventSelectors": strip_meta(root.get_event_selectors(TrailName=t.name)),
        "GetInsightSelectors": strip_meta(root.get_insight_selectors(TrailName=t.name)),
        "ListTags": root.list_tags(ResourceIdList=[t.arn])["ResourceTagList"],
        "CreateTrail's new name exists": fresh_exists,
    }


# ---------------------------------------------------------------------------
# Running the matrix
# ---------------------------------------------------------------------------


def run_sequence(server, client: str, p: Principal, t: Target) -> dict[str, tuple[Expect, Outcome]]:
    """One principal's 18 calls, in OPS order, through ``client``."""
    root = cloudtrail_client(server)
    b3 = boto3_client(server, p.access_key_id, p.secret) if client == "boto3" else None
    out = {}
    for op in OPS:
        if op == "StartLogging":
            # StopLogging came just before; make StartLogging meaningful for everyone.
            root.stop_logging(Name=t.name)
        exp = expected(p, op, t)
        # Root's view around each denied mutation, and (as a control) around the full-access
        # user's allowed ones.
        watch = op not in READ_ONLY_OPS and (exp.denied or p.label == "full")
        before = snapshot(root, t) if watch else None
        params = op_params(op, t)
        if client == "boto3":
            res = call_boto3(b3, op, params, p.skew_minutes)
        else:
            res = call_cli(server, p.access_key_id, p.secret, op, params, p.skew_minutes)
        if watch:
            res.before, res.after = before, snapshot(root, t)
        out[op] = (exp, res)
    return out


def run_matrix(server, principals, bucket, client: str) -> Matrix:
    m = Matrix(client, make_targets(server, bucket, client))
    labels = list(principals)

    def one(label):
        return label, run_sequence(server, client, principals[label], m.targets[label])

    if client == "boto3":
        # Sequential: the skewed principal patches botocore's clock process-wide.
        done = [one(label) for label in labels]
    else:
        with concurrent.futures.ThreadPoolExecutor(CLI_WORKERS) as pool:
            done = list(pool.map(one, labels))
    for label, seq in done:
        for op, (exp, res) in seq.items():
            m.expected[(label, op)] = exp
            m.results[(label, op)] = res
    return m


@pytest.fixture(scope="module")
def boto3_matrix(server, principals, bucket) -> Matrix:
    return run_matrix(server, principals, bucket, "boto3")


@pytest.fixture(scope="module")
def cli_matrix(server, principals, bucket) -> Matrix:
    return run_matrix(server, principals, bucket, "cli")


@pytest.fixture(scope="module")
def audit_records(server, principals, since, boto3_matrix, cli_matrix) -> dict[str, list]:
    """requestID -> [(LookupEvents event, parsed record)] for every call made with a
    principal's key, once every matrix call's record is visible (or time is up)."""
    root = cloudtrail_client(server)
    want = {r.request_id for m in (boto3_matrix, cli_matrix) for r in m.results.values()
            if r.request_id}
    keys = sorted({p.access_key_id for p in principals.values()})
    deadline = time.monotonic() + AUDIT_TIMEOUT_S
    while True:
        found: dict[str, list] = {}
        for key in keys:
            for ev in lookup_all(root, LookupAttributes=attrs(("AccessKeyId", key)),
                                 StartTime=since):
                rec = json.loads(ev["CloudTrailEvent"])
                found.setdefault(rec.get("requestID"), []).append((ev, rec))
        if want <= found.keys() or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def cells(extra_marks: dict | None = None):
    out = []
    for client in CLIENTS:
        for label in PRINCIPALS:
            for op in OPS:
                marks = []
                reason = DISAGREEMENTS.get((client, label, op))
                if reason:
                    marks.append(pytest.mark.xfail(strict=True, reason=reason))
                out.append(pytest.param(client, label, op, marks=marks,
                                        id=f"{client}-{label}-{op}"))
    return out


def matrix_of(request, client: str) -> Matrix:
    return request.getfixturevalue(f"{client}_matrix")


# ---------------------------------------------------------------------------
# 2. The matrix: 18 operations x 7 principals x {boto3, AWS CLI}
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("client,principal,op", cells())
def test_matrix_outcome(request, client, principal, op):
    m = matrix_of(request, client)
    exp, res, t = m.expected[(principal, op)], m.results[(principal, op)], m.targets[principal]
    ctx = f"{client} {principal} {op}: {res.detail}"
    assert res.requests == 1, f"expected exactly one HTTP request; {ctx}"
    assert res.request_id, f"no x-amzn-RequestId; {ctx}"
    if exp.code is None:
        assert (res.code, res.status) == (None, 200), ctx
        if client == "cli":
            assert res.rc == 0, ctx
        check_success_body(op, res.body, t)
        return
    assert (res.code, res.status) == (exp.code, exp.status), ctx
    if client == "cli":
        assert res.rc != 0, ctx
    if exp.message is not None:
        assert res.message == exp.message, ctx
    if exp.prefix is not None:
        assert (res.message or "").startswith(exp.prefix), ctx


# ---------------------------------------------------------------------------
# 4. A denied call changes nothing
# ---------------------------------------------------------------------------


DENIED_MUTATIONS = [
    pytest.param(client, label, op, id=f"{client}-{label}-{op}")
    for client in CLIENTS
    for label in ("readonly", "nopolicy")
    for op in MUTATING_OPS
] + [pytest.param(client, "denystop", "StopLogging", id=f"{client}-denystop-StopLogging")
     for client in CLIENTS]


@pytest.mark.parametrize("client,principal,op", DENIED_MUTATIONS)
def test_denied_mutation_changes_nothing(request, client, principal, op):
    m = matrix_of(request, client)
    res = m.results[(principal, op)]
    assert m.expected[(principal, op)].denied
    assert res.code == "AccessDeniedException", res.detail
    assert res.before is not None and res.after is not None
    assert res.after == res.before, (
        f"{client} {principal} {op} was denied but root's view changed:\n"
        f"before={res.before!r}\nafter={res.after!r}")
    if m.expected[(principal, "CreateTrail")].denied:
        assert res.before["CreateTrail's new name exists"] is False
    if op == "StopLogging":
        assert res.before["GetTrailStatus"]["IsLogging"] is True
    if op == "StartLogging":
        assert res.before["GetTrailStatus"]["IsLogging"] is False


# What each mutation changes in root's view when it is allowed.
CHANGES = {
    "CreateTrail": "CreateTrail's new name exists",
    "UpdateTrail": "GetTrail",
    "StopLogging": "GetTrailStatus",
    "StartLogging": "GetTrailStatus",
    "AddTags": "ListTags",
    "RemoveTags": "ListTags",
    "PutEventSelectors": "GetEventSelectors",
    "PutInsightSelectors": "GetInsightSelectors",
    "DeleteTrail": "GetTrail",
}
assert set(CHANGES) == set(MUTATING_OPS)


@pytest.mark.parametrize("client,op", [pytest.param(c, op, id=f"{c}-full-{op}")
                                       for c in CLIENTS for op in MUTATING_OPS])
def test_allowed_mutation_is_visible_to_root(request, client, op):
    """Control for the test above: the same request, allowed (full-access user), does change
    what root sees, so an unchanged view after a denial means something."""
    m = matrix_of(request, client)
    res = m.results[("full", op)]
    assert res.code is None, res.detail
    assert res.before is not None and res.after is not None
    key = CHANGES[op]
    assert res.after[key] != res.before[key], (op, key, res.before, res.after)


# ---------------------------------------------------------------------------
# 5. Every matrix call is in event history with the right identity and errorCode
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("client,principal,op", cells())
def test_matrix_call_is_audited(request, principals, audit_records, client, principal, op):
    m = matrix_of(request, client)
    exp, res = m.expected[(principal, op)], m.results[(principal, op)]
    p = principals[principal]
    assert res.request_id, res.detail
    hits = audit_records.get(res.request_id, [])
    assert len(hits) == 1, (
        f"{client} {principal} {op}: {len(hits)} self-audit records with requestID "
        f"{res.request_id} (looked up by AccessKeyId {p.access_key_id}): {hits!r}")
    ev, rec = hits[0]
    assert rec["eventSource"] == "cloudtrail.amazonaws.com", rec
    assert rec["eventName"] == op, rec
    assert ev["EventName"] == op and ev["EventSource"] == "cloudtrail.amazonaws.com", ev
    assert rec["awsRegion"] == REGION, rec
    assert rec["recipientAccountId"] == ACCOUNT_ID, rec
    ident = rec["userIdentity"]
    if exp.auth_failure:
        assert ident == {"type": "Unknown", "accessKeyId": p.access_key_id}, rec
        assert rec.get("errorCode") == exp.audit_code, rec
        assert isinstance(rec.get("errorMessage"), str) and rec["errorMessage"], rec
        if exp.message is not None:
            assert rec["errorMessage"] == exp.message, rec
        if exp.prefix is not None:
            assert rec["errorMessage"].startswith(exp.prefix), rec
        return
    assert ident == {
        "type": "IAMUser",
        "principalId": p.user_id,
        "arn": p.arn,
        "accountId": ACCOUNT_ID,
        "accessKeyId": p.access_key_id,
        "userName": p.user_name,
    }, rec
    assert p.user_id.startswith("AIDA"), p
    assert ev.get("Username") == p.user_name, ev
    if exp.denied:
        assert rec.get("errorCode") == "AccessDenied", rec
        assert rec.get("errorMessage") == exp.message, rec
    else:
        assert "errorCode" not in rec and "errorMessage" not in rec, rec


# ---------------------------------------------------------------------------
# 3. The 15-minute window: 10 minutes of skew is fine, 20 in the future is not
# ---------------------------------------------------------------------------


def find_audit(server, key: str, request_id: str) -> dict:
    root = cloudtrail_client(server)
    deadline = time.monotonic() + AUDIT_TIMEOUT_S
    while True:
        hits = [json.loads(ev["CloudTrailEvent"]) for ev in
                lookup_all(root, LookupAttributes=attrs(("AccessKeyId", key)),
                           StartTime=utcnow() - dt.timedelta(minutes=5))]
        hits = [r for r in hits if r.get("requestID") == request_id]
        if hits:
            assert len(hits) == 1, hits
            return hits[0]
        if time.monotonic() > deadline:
            pytest.fail(f"no self-audit record with requestID {request_id} (key {key})")
        time.sleep(0.2)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("minutes", [-10, 10])
def test_ten_minute_skew_accepted(server, principals, client, minutes):
    p = principals["full"]
    if client == "boto3":
        res = call_boto3(boto3_client(server, p.access_key_id, p.secret), "ListTrails", {},
                         minutes)
    else:
        res = call_cli(server, p.access_key_id, p.secret, "ListTrails", {}, minutes)
    assert (res.code, res.status) == (None, 200), res.detail
    rec = find_audit(server, p.access_key_id, res.request_id)
    assert rec["userIdentity"]["type"] == "IAMUser" and "errorCode" not in rec, rec


@pytest.mark.parametrize("client", CLIENTS)
def test_twenty_minutes_in_the_future_refused(server, principals, client):
    p = principals["full"]
    if client == "boto3":
        res = call_boto3(boto3_client(server, p.access_key_id, p.secret), "ListTrails", {}, 20)
    else:
        res = call_cli(server, p.access_key_id, p.secret, "ListTrails", {}, 20)
    assert (res.code, res.status) == ("SignatureDoesNotMatch", 403), res.detail
    assert (res.message or "").startswith("Signature not yet current:"), res.detail
    rec = find_audit(server, p.access_key_id, res.request_id)
    assert rec["userIdentity"] == {"type": "Unknown", "accessKeyId": p.access_key_id}, rec
    assert rec["errorCode"] == "SignatureDoesNotMatch", rec
    assert rec["eventName"] == "ListTrails", rec


# ---------------------------------------------------------------------------
# 6. Unsigned, malformed and tampered requests
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def victim(server, bucket) -> Target:
    """A trail (logging, tagged, Insights on) that unauthenticated calls aim at."""
    root = cloudtrail_client(server)
    name = f"acc-victim-{uid()}"
    arn = root.create_trail(Name=name, S3BucketName=bucket)["TrailARN"]
    root.start_logging(Name=name)
    root.add_tags(ResourceId=arn, TagsList=[{"Key": "base", "Value": "1"}])
    root.put_insight_selectors(TrailName=name, InsightSelectors=BASE_INSIGHTS)
    return Target(name, arn, f"acc-victim-new-{uid()}", bucket)


def post_raw(server, op: str, body: bytes, headers: dict | None = None) -> requests.Response:
    hdrs = {"X-Amz-Target": f"{TARGET_PREFIX}.{op}", "Content-Type": AMZ_JSON}
    hdrs.update(headers or {})
    return requests.post(server.url + "/", data=body, headers=hdrs, timeout=30)


def sign_headers(server, op: str, body: bytes, key: str, secret: str) -> dict:
    """The headers of a correctly signed CloudTrail call of ``op`` with ``body``."""
    req = AWSRequest(method="POST", url=server.url + "/", data=body,
                     headers={"X-Amz-Target": f"{TARGET_PREFIX}.{op}", "Content-Type": AMZ_JSON})
    SigV4Auth(Credentials(key, secret), "cloudtrail", REGION).add_auth(req)
    return dict(req.headers.items())


def error_of(r: requests.Response) -> tuple[int, str, str]:
    body = r.json()
    return r.status_code, error_code(body["__type"]), body.get("Message", body.get("message"))


@pytest.mark.parametrize("op", OPS)
def test_unsigned_request_refused(server, victim, op):
    root = cloudtrail_client(server)
    before = snapshot(root, victim)
    r = post_raw(server, op, json.dumps(op_params(op, victim)).encode())
    assert error_of(r) == (403, "MissingAuthenticationTokenException",
                           "Missing Authentication Token"), r.text
    assert snapshot(root, victim) == before


def _strip_signature(auth: str) -> str:
    return re.sub(r",\s*Signature=[0-9a-f]+", "", auth)


def _bad_credential(auth: str) -> str:
    return re.sub(r"Credential=[^,]+", "Credential=garbage", auth)


def _host_not_signed(auth: str) -> str:
    m = re.search(r"SignedHeaders=([^,]+)", auth)
    signed = [h for h in m.group(1).split(";") if h != "host"]
    return auth.replace(m.group(0), "SignedHeaders=" + ";".join(signed))


MALFORMED = {
    "missing-signature": _strip_signature,
    "bad-credential": _bad_credential,
    "host-not-signed": _host_not_signed,
}


@pytest.mark.parametrize("variant", list(MALFORMED))
def test_malformed_authorization_header(server, principals, variant):
    p = principals["full"]
    body = b"{}"
    headers = sign_headers(server, "ListTrails", body, p.access_key_id, p.secret)
    headers["Authorization"] = MALFORMED[variant](headers["Authorization"])
    r = post_raw(server, "ListTrails", body, headers)
    status, code, message = error_of(r)
    assert (status, code) == (400, "IncompleteSignature"), (headers["Authorization"], r.text)
    assert message, r.text


def test_tampered_body_after_signing(server, principals, victim):
    p = principals["full"]
    signed_body = json.dumps({"Name": victim.name}).encode()
    headers = sign_headers(server, "GetTrail", signed_body, p.access_key_id, p.secret)
    # Control: the untouched request is accepted.
    ok = post_raw(server, "GetTrail", signed_body, headers)
    assert ok.status_code == 200, ok.text
    assert ok.json()["Trail"]["Name"] == victim.name

    headers = sign_headers(server, "UpdateTrail", json.dumps({"Name": victim.name}).encode(),
                           p.access_key_id, p.secret)
    root = cloudtrail_client(server)
    before = snapshot(root, victim)
    tampered = json.dumps({"Name": victim.name, "S3KeyPrefix": "tampered"}).encode()
    r = post_raw(server, "UpdateTrail", tampered, headers)
    status, code, message = error_of(r)
    assert (status, code) == (403, "SignatureDoesNotMatch"), r.text
    assert message.startswith(MSG_BAD_SIGNATURE), r.text
    assert snapshot(root, victim) == before
    rec = find_audit(server, p.access_key_id, r.headers.get("x-amzn-RequestId"))
    assert rec["userIdentity"] == {"type": "Unknown", "accessKeyId": p.access_key_id}, rec
    assert rec["errorCode"] == "SignatureDoesNotMatch", rec
    assert rec["eventName"] == "UpdateTrail", rec
