"""CloudTrail-compatible trail operations: CreateTrail, GetTrail,
DescribeTrails, ListTrails, UpdateTrail, DeleteTrail, Start/StopLogging,
GetTrailStatus, AddTags/RemoveTags/ListTags and ListPublicKeys.

Driven through boto3 (the full matrix) and the real AWS CLI v1 (the main
commands and a few error cases).  The module's server is configured with
one SNS topic, one KMS key (plus an alias), one CloudWatch Logs log group,
an organization whose management account is the caller, and a quota of
five trails per region (``SERVER_ENV`` below).

Every test uses uuid-suffixed trail names and deletes the trails it made
(the ``trails`` fixture), so that per-region counts stay predictable: the
quota test works in regions (ap-south-1, ap-south-2) no other test uses.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from botocore import xform_name
from botocore.exceptions import ClientError

from conftest import (
    ACCOUNT_ID,
    attrs,
    aws,
    cloudtrail_client,
    lookup_all,
    parse_event_time,
    to_epoch,
    uid,
    utcnow,
)

TOPIC = "trail-topic"
TOPIC_ARN = f"arn:aws:sns:us-east-1:{ACCOUNT_ID}:{TOPIC}"
KEY_ID = "11111111-2222-3333-4444-555555555555"
KEY_ARN = f"arn:aws:kms:us-east-1:{ACCOUNT_ID}:key/{KEY_ID}"
KEY_ALIAS = "alias/trail-key"
KEY_ALIAS_ARN = f"arn:aws:kms:us-east-1:{ACCOUNT_ID}:{KEY_ALIAS}"
LOG_GROUP_ARN = f"arn:aws:logs:us-east-1:{ACCOUNT_ID}:log-group:CloudTrail:*"
CW_ROLE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/CloudTrail_CW"
MAX_TRAILS = 5

SERVER_ENV = {
    "OPENTRAIL_SNS_TOPICS": TOPIC,
    "OPENTRAIL_KMS_KEYS": f"{KEY_ID},{KEY_ALIAS}={KEY_ID}",
    "OPENTRAIL_CLOUDWATCH_LOG_GROUPS": LOG_GROUP_ARN,
    "OPENTRAIL_ORGANIZATION_ID": "o-exampleorg1",
    "OPENTRAIL_ORGANIZATION_MANAGEMENT_ACCOUNT": ACCOUNT_ID,
    "OPENTRAIL_ORGANIZATION_MEMBERS": "222233334444",
    "OPENTRAIL_MAX_TRAILS_PER_REGION": str(MAX_TRAILS),
}

HOME = "us-east-1"
OTHER = "eu-west-1"
CLI_ERROR_RCS = (254, 255)
AUDIT_TIMEOUT_S = 2.0
CLOCK_SLACK_S = 5.0

# Keys CreateTrail/UpdateTrail must never return (GetTrail/DescribeTrails only).
TRAIL_ONLY_KEYS = {"HomeRegion", "HasCustomEventSelectors", "HasInsightSelectors"}


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def tname(prefix: str = "trail") -> str:
    return f"{prefix}-{uid()}"


def trail_arn(name: str, region: str = HOME) -> str:
    return f"arn:aws:cloudtrail:{region}:{ACCOUNT_ID}:trail/{name}"


def region_of(arn: str) -> str:
    return arn.split(":")[3]


def make_bucket(server, name: str | None = None) -> str:
    name = name or f"bucket-{uid()}"
    os.makedirs(Path(server.data_dir) / "buckets" / name)
    return name


def body(resp: dict) -> dict:
    """A boto3 response without ResponseMetadata."""
    return {k: v for k, v in resp.items() if k != "ResponseMetadata"}


def expect_error(code: str, status: int | None, fn: Callable, *args: Any, **kwargs: Any) -> dict:
    """Call ``fn`` and assert that it fails with ``code`` (and HTTP ``status``)."""
    with pytest.raises(ClientError) as ei:
        fn(*args, **kwargs)
    resp = ei.value.response
    assert resp["Error"]["Code"] == code, resp
    if status is not None:
        assert resp["ResponseMetadata"]["HTTPStatusCode"] == status, resp
    return resp


def expect_cli_error(code: str, server, *args: str, region: str = HOME) -> str:
    rc, out, err = aws(server, *args, region=region)
    assert rc in CLI_ERROR_RCS, (rc, out, err)
    assert code in err, err
    return err


def cli_ok(server, *args: str, region: str = HOME) -> Any:
    rc, out, err = aws(server, *args, region=region)
    assert rc == 0, (rc, out, err)
    return out


def call_raw(server, region: str, operation: str, **params: Any) -> tuple[dict, Any]:
    """Call ``operation`` through boto3 (signed for ``region``) and return the
    parsed response plus the raw JSON body the server sent (boto3 drops
    members that are not in the model, so absences are checked on the raw
    body)."""
    client = cloudtrail_client(server, region)
    box: dict = {}

    def grab(http_response, **_kw):
        box["body"] = http_response.content

    client.meta.events.register(f"after-call.cloudtrail.{operation}", grab)
    parsed = getattr(client, xform_name(operation))(**params)
    raw = box["body"]
    return parsed, (json.loads(raw) if raw.strip() else None)


def tags_of(client, arn: str) -> dict:
    resp = client.list_tags(ResourceIdList=[arn])
    lst = resp["ResourceTagList"]
    assert [e["ResourceId"] for e in lst] == [arn], resp
    tags = lst[0].get("TagsList", [])
    keys = [t["Key"] for t in tags]
    assert len(keys) == len(set(keys)), tags
    return {t["Key"]: t.get("Value") for t in tags}


def tag_list(d: dict) -> list[dict]:
    return [{"Key": k, "Value": v} for k, v in d.items()]


def assert_recent(value: Any, before: float, after: float) -> None:
    t = to_epoch(value)
    assert before - CLOCK_SLACK_S <= t <= after + CLOCK_SLACK_S, (value, before, after)


class Trails:
    """Creates trails and deletes them all (in their home regions) at the end
    of the test."""

    def __init__(self, server, bucket: str):
        self.server = server
        self.bucket = bucket
        self.arns: list[str] = []

    def client(self, region: str = HOME):
        return cloudtrail_client(self.server, region)

    def create(self, name: str | None = None, region: str = HOME, **params: Any) -> dict:
        params.setdefault("S3BucketName", self.bucket)
        resp = self.client(region).create_trail(Name=name or tname(), **params)
        self.track(resp["TrailARN"])
        return resp

    def track(self, arn: str) -> None:
        if arn not in self.arns:
            self.arns.append(arn)

    def delete(self, arn: str) -> None:
        self.client(region_of(arn)).delete_trail(Name=arn)
        self.arns.remove(arn)

    def cleanup(self) -> None:
        for arn in reversed(self.arns):
            try:
                self.client(region_of(arn)).delete_trail(Name=arn)
            except ClientError as e:
                if e.response["Error"]["Code"] != "TrailNotFoundException":
                    raise
        self.arns.clear()


@pytest.fixture(scope="module")
def ct(server):
    return cloudtrail_client(server, HOME)


@pytest.fixture(scope="module")
def ct_other(server):
    return cloudtrail_client(server, OTHER)


@pytest.fixture(scope="module")
def bucket(server) -> str:
    return make_bucket(server)


@pytest.fixture
def trails(server, bucket):
    t = Trails(server, bucket)
    try:
        yield t
    finally:
        t.cleanup()


def expected_create_response(name: str, bucket: str, region: str = HOME, **extra: Any) -> dict:
    base = {
        "Name": name,
        "S3BucketName": bucket,
        "IncludeGlobalServiceEvents": True,
        "IsMultiRegionTrail": False,
        "TrailARN": trail_arn(name, region),
        "LogFileValidationEnabled": False,
        "IsOrganizationTrail": False,
    }
    base.update(extra)
    return base


# ---------------------------------------------------------------------------
# CreateTrail: happy paths and response shape
# ---------------------------------------------------------------------------


def test_create_minimal_trail_response_shape(server, trails, bucket):
    name = tname()
    parsed, raw = call_raw(server, HOME, "CreateTrail", Name=name, S3BucketName=bucket)
    trails.track(parsed["TrailARN"])
    assert body(parsed) == expected_create_response(name, bucket)
    assert parsed["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert isinstance(raw, dict), raw
    assert not (TRAIL_ONLY_KEYS & raw.keys()), raw
    for absent in ("S3KeyPrefix", "SnsTopicName", "SnsTopicARN", "KmsKeyId",
                   "CloudWatchLogsLogGroupArn", "CloudWatchLogsRoleArn"):
        assert absent not in raw, raw


def test_create_trail_with_every_option(server, trails, bucket):
    name = tname("full")
    parsed, raw = call_raw(
        server, HOME, "CreateTrail",
        Name=name,
        S3BucketName=bucket,
        S3KeyPrefix="logs/prefix",
        SnsTopicName=TOPIC,
        IncludeGlobalServiceEvents=True,
        IsMultiRegionTrail=True,
        EnableLogFileValidation=True,
        CloudWatchLogsLogGroupArn=LOG_GROUP_ARN,
        CloudWatchLogsRoleArn=CW_ROLE_ARN,
        KmsKeyId=KEY_ALIAS,
        IsOrganizationTrail=True,
        TagsList=[{"Key": "team", "Value": "security"}],
    )
    trails.track(parsed["TrailARN"])
    assert body(parsed) == expected_create_response(
        name, bucket,
        S3KeyPrefix="logs/prefix",
        SnsTopicName=TOPIC,
        SnsTopicARN=TOPIC_ARN,
        IsMultiRegionTrail=True,
        LogFileValidationEnabled=True,
        CloudWatchLogsLogGroupArn=LOG_GROUP_ARN,
        CloudWatchLogsRoleArn=CW_ROLE_ARN,
        KmsKeyId=KEY_ARN,
        IsOrganizationTrail=True,
    )
    assert not (TRAIL_ONLY_KEYS & raw.keys()), raw

    got = trails.client().get_trail(Name=name)["Trail"]
    expected = dict(body(parsed), HomeRegion=HOME, HasCustomEventSelectors=False,
                    HasInsightSelectors=False)
    assert got == expected
    assert tags_of(trails.client(), parsed["TrailARN"]) == {"team": "security"}


@pytest.mark.parametrize("name", [
    "abc",
    "x" * 128,
    "ok.name_with-specials",
    "Trail.2024",
    "9lives",
])
def test_valid_trail_names_accepted(trails, name):
    # Suffix-free names are fine: each is created and deleted in this test.
    resp = trails.create(name=name)
    assert resp["Name"] == name
    assert resp["TrailARN"] == trail_arn(name)
    trails.delete(resp["TrailARN"])


@pytest.mark.parametrize("name", [
    "ab",                  # too short
    "a" * 129,             # too long
    "my trail",            # space
    "tr@il",               # bad character
    "-abc",                # starts with a special character
    "abc_",                # ends with a special character
    "my--trail",           # adjacent specials
    "my-_trail",           # adjacent specials (mixed)
    "192.168.5.4",         # IP-address shaped
])
def test_invalid_trail_names_rejected(ct, bucket, name):
    expect_error("InvalidTrailNameException", 400, ct.create_trail, Name=name, S3BucketName=bucket)


def test_duplicate_name_same_region_rejected_other_region_allowed(trails, ct, ct_other, bucket):
    name = tname("dup")
    first = trails.create(name=name)
    expect_error("TrailAlreadyExistsException", 400, ct.create_trail, Name=name, S3BucketName=bucket)

    second = trails.create(name=name, region=OTHER)
    assert second["TrailARN"] == trail_arn(name, OTHER)
    assert first["TrailARN"] == trail_arn(name, HOME)

    # A bare name resolves to the trail homed in the caller's region.
    assert ct.get_trail(Name=name)["Trail"]["TrailARN"] == first["TrailARN"]
    assert ct_other.get_trail(Name=name)["Trail"]["TrailARN"] == second["TrailARN"]
    assert ct_other.get_trail(Name=name)["Trail"]["HomeRegion"] == OTHER


# ---------------------------------------------------------------------------
# CreateTrail: S3 bucket and prefix
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad_bucket", ["My_Bucket", "ab", "bucket-", "my..bucket", "192.168.1.1"])
def test_invalid_bucket_name(ct, bad_bucket):
    expect_error("InvalidS3BucketNameException", 400,
                 ct.create_trail, Name=tname(), S3BucketName=bad_bucket)


def test_missing_bucket(ct):
    name = tname()
    expect_error("S3BucketDoesNotExistException", 404,
                 ct.create_trail, Name=name, S3BucketName=f"no-such-bucket-{uid()}")
    # Nothing was created.
    expect_error("TrailNotFoundException", 404, ct.get_trail, Name=name)


def test_s3_key_prefix_length(trails, ct, bucket):
    expect_error("InvalidS3PrefixException", 400,
                 ct.create_trail, Name=tname(), S3BucketName=bucket, S3KeyPrefix="p" * 201)
    resp = trails.create(S3KeyPrefix="p" * 200)
    assert resp["S3KeyPrefix"] == "p" * 200


def test_multi_region_requires_global_service_events(ct, bucket):
    expect_error("InvalidParameterCombinationException", 400,
                 ct.create_trail, Name=tname(), S3BucketName=bucket,
                 IsMultiRegionTrail=True, IncludeGlobalServiceEvents=False)


def test_single_region_without_global_events_is_fine(trails):
    resp = trails.create(IncludeGlobalServiceEvents=False)
    assert resp["IncludeGlobalServiceEvents"] is False
    assert resp["IsMultiRegionTrail"] is False


# ---------------------------------------------------------------------------
# CreateTrail: SNS, KMS, CloudWatch Logs, organization, tags
# ---------------------------------------------------------------------------


def test_sns_topic_validation(ct, bucket):
    expect_error("InvalidSnsTopicNameException", 400,
                 ct.create_trail, Name=tname(), S3BucketName=bucket, SnsTopicName="bad.topic")
    expect_error("InsufficientSnsTopicPolicyException", 403,
                 ct.create_trail, Name=tname(), S3BucketName=bucket, SnsTopicName="unknown-topic")


@pytest.mark.parametrize("topic", [TOPIC, TOPIC_ARN])
def test_sns_topic_by_name_or_arn(trails, topic):
    resp = trails.create(SnsTopicName=topic)
    assert resp["SnsTopicARN"] == TOPIC_ARN
    got = trails.client().get_trail(Name=resp["TrailARN"])["Trail"]
    assert got["SnsTopicARN"] == TOPIC_ARN


@pytest.mark.parametrize("key", [KEY_ID, KEY_ARN, KEY_ALIAS, KEY_ALIAS_ARN])
def test_kms_key_forms_resolve_to_key_arn(trails, key):
    resp = trails.create(KmsKeyId=key)
    assert resp["KmsKeyId"] == KEY_ARN
    assert trails.client().get_trail(Name=resp["Name"])["Trail"]["KmsKeyId"] == KEY_ARN
    trails.delete(resp["TrailARN"])


@pytest.mark.parametrize("key, code", [
    ("not a key", "InvalidKmsKeyIdException"),
    ("99999999-2222-3333-4444-555555555555", "KmsKeyNotFoundException"),
    ("alias/unknown", "KmsKeyNotFoundException"),
])
def test_kms_key_errors(ct, bucket, key, code):
    expect_error(code, 400, ct.create_trail, Name=tname(), S3BucketName=bucket, KmsKeyId=key)


@pytest.mark.parametrize("params, code", [
    ({"CloudWatchLogsLogGroupArn": LOG_GROUP_ARN}, "InvalidCloudWatchLogsRoleArnException"),
    ({"CloudWatchLogsRoleArn": CW_ROLE_ARN}, "InvalidCloudWatchLogsLogGroupArnException"),
    ({"CloudWatchLogsLogGroupArn": "not-an-arn", "CloudWatchLogsRoleArn": CW_ROLE_ARN},
     "InvalidCloudWatchLogsLogGroupArnException"),
    ({"CloudWatchLogsLogGroupArn": f"arn:aws:logs:us-east-1:{ACCOUNT_ID}:log-group:Other:*",
      "CloudWatchLogsRoleArn": CW_ROLE_ARN},
     "InvalidCloudWatchLogsLogGroupArnException"),
    ({"CloudWatchLogsLogGroupArn": LOG_GROUP_ARN,
      "CloudWatchLogsRoleArn": f"arn:aws:iam::{ACCOUNT_ID}:user/x"},
     "InvalidCloudWatchLogsRoleArnException"),
], ids=["group-without-role", "role-without-group", "group-not-arn", "unknown-group", "role-is-user"])
def test_cloudwatch_logs_errors(ct, bucket, params, code):
    expect_error(code, 400, ct.create_trail, Name=tname(), S3BucketName=bucket, **params)


def test_cloudwatch_logs_ok(trails):
    resp = trails.create(CloudWatchLogsLogGroupArn=LOG_GROUP_ARN, CloudWatchLogsRoleArn=CW_ROLE_ARN)
    assert resp["CloudWatchLogsLogGroupArn"] == LOG_GROUP_ARN
    assert resp["CloudWatchLogsRoleArn"] == CW_ROLE_ARN
    got = trails.client().get_trail(Name=resp["Name"])["Trail"]
    assert got["CloudWatchLogsLogGroupArn"] == LOG_GROUP_ARN
    assert got["CloudWatchLogsRoleArn"] == CW_ROLE_ARN


def test_organization_trail_from_management_account(trails):
    resp = trails.create(IsOrganizationTrail=True)
    assert resp["IsOrganizationTrail"] is True
    assert trails.client().get_trail(Name=resp["Name"])["Trail"]["IsOrganizationTrail"] is True


def test_organization_trail_seen_but_not_changed_by_a_member(server, ct, bucket):
    """An organization trail appears in a member account (by ARN and in DescribeTrails) but the
    member can neither change it nor create organization trails of its own."""
    org_name, own_name = tname(), tname()
    org = ct.create_trail(Name=org_name, S3BucketName=bucket, IsOrganizationTrail=True)
    ct.create_trail(Name=own_name, S3BucketName=bucket)
    server.extra_env["OPENTRAIL_ACCOUNT_ID"] = "222233334444"
    try:
        server.restart()
        member = cloudtrail_client(server, HOME)
        listed = {t["TrailARN"]: t for t in member.describe_trails()["trailList"]}
        assert org["TrailARN"] in listed
        assert listed[org["TrailARN"]]["IsOrganizationTrail"] is True
        assert all(t["Name"] != own_name for t in listed.values())
        assert member.get_trail(Name=org["TrailARN"])["Trail"]["Name"] == org_name
        # A bare name looks in the member's own account only.
        expect_error("TrailNotFoundException", 404, member.get_trail, Name=org_name)
        expect_error("NotOrganizationMasterAccountException", 400,
                     member.stop_logging, Name=org["TrailARN"])
        expect_error("NotOrganizationMasterAccountException", 400,
                     member.delete_trail, Name=org["TrailARN"])
        expect_error("NotOrganizationMasterAccountException", 400,
                     member.create_trail, Name=tname(), S3BucketName=bucket, IsOrganizationTrail=True)
    finally:
        server.extra_env.pop("OPENTRAIL_ACCOUNT_ID", None)
        server.restart()
        ct.delete_trail(Name=org_name)
        ct.delete_trail(Name=own_name)


def test_create_tags_limits(trails, ct, bucket):
    too_many = [{"Key": f"k{i}", "Value": "v"} for i in range(51)]
    expect_error("TagsLimitExceededException", 400,
                 ct.create_trail, Name=tname(), S3BucketName=bucket, TagsList=too_many)
    dup = [{"Key": "k", "Value": "a"}, {"Key": "k", "Value": "b"}]
    expect_error("InvalidTagParameterException", 400,
                 ct.create_trail, Name=tname(), S3BucketName=bucket, TagsList=dup)

    resp = trails.create(TagsList=too_many[:50])
    assert tags_of(ct, resp["TrailARN"]) == {f"k{i}": "v" for i in range(50)}


# ---------------------------------------------------------------------------
# Quota
# ---------------------------------------------------------------------------


def test_trails_per_region_quota(trails):
    region = "ap-south-1"
    client = trails.client(region)
    made = [trails.create(region=region)["TrailARN"] for _ in range(MAX_TRAILS)]
    resp = expect_error("MaximumNumberOfTrailsExceededException", 403,
                        client.create_trail, Name=tname(), S3BucketName=trails.bucket)
    # The failed call created nothing.
    assert len(client.describe_trails(includeShadowTrails=False)["trailList"]) == MAX_TRAILS, resp

    # Freeing a slot makes room again.
    trails.delete(made[0])
    trails.create(region=region)
    expect_error("MaximumNumberOfTrailsExceededException", 403,
                 client.create_trail, Name=tname(), S3BucketName=trails.bucket)


def test_multi_region_trail_counts_in_every_region(trails):
    home, elsewhere = "ap-south-2", "ap-south-1"
    trails.create(region=home, IsMultiRegionTrail=True)
    for _ in range(MAX_TRAILS - 1):
        trails.create(region=elsewhere)
    expect_error("MaximumNumberOfTrailsExceededException", 403,
                 trails.client(elsewhere).create_trail, Name=tname(), S3BucketName=trails.bucket)
    # In its home region it counts as well.
    for _ in range(MAX_TRAILS - 1):
        trails.create(region=home)
    expect_error("MaximumNumberOfTrailsExceededException", 403,
                 trails.client(home).create_trail, Name=tname(), S3BucketName=trails.bucket)


def test_new_multi_region_trail_must_fit_in_every_region(trails):
    """A trail that becomes multi-region (created so, or updated to it) would
    count in a region that is already full: refused either way."""
    full, home = "ap-south-1", "ap-south-2"
    for _ in range(MAX_TRAILS):
        trails.create(region=full)
    client = trails.client(home)
    single = trails.create(region=home)

    expect_error("MaximumNumberOfTrailsExceededException", 403,
                 client.create_trail, Name=tname(), S3BucketName=trails.bucket,
                 IsMultiRegionTrail=True)
    expect_error("MaximumNumberOfTrailsExceededException", 403,
                 client.update_trail, Name=single["Name"], IsMultiRegionTrail=True)
    assert client.get_trail(Name=single["Name"])["Trail"]["IsMultiRegionTrail"] is False
    assert len(trails.client(full).describe_trails()["trailList"]) == MAX_TRAILS


# ---------------------------------------------------------------------------
# GetTrail
# ---------------------------------------------------------------------------


def test_get_trail_by_name_and_arn(trails, ct):
    created = body(trails.create(S3KeyPrefix="k"))
    expected = dict(created, HomeRegion=HOME, HasCustomEventSelectors=False, HasInsightSelectors=False)
    by_name = ct.get_trail(Name=created["Name"])
    by_arn = ct.get_trail(Name=created["TrailARN"])
    assert body(by_name) == {"Trail": expected}
    assert body(by_arn) == {"Trail": expected}


def test_get_trail_errors(ct):
    expect_error("TrailNotFoundException", 404, ct.get_trail, Name=f"missing-{uid()}")
    expect_error("TrailNotFoundException", 404, ct.get_trail, Name=trail_arn(f"missing-{uid()}"))
    expect_error("CloudTrailARNInvalidException", 400, ct.get_trail,
                 Name="arn:aws:cloudtrail:us-east-1:123:trail/x")


def test_get_trail_invalid_name(ct):
    expect_error("InvalidTrailNameException", 400, ct.get_trail, Name="my trail")


def test_get_trail_from_other_region(trails, ct_other):
    created = trails.create()
    # A bare name only finds trails homed in the caller's region ...
    expect_error("TrailNotFoundException", 404, ct_other.get_trail, Name=created["Name"])
    # ... but the ARN finds it from anywhere.
    got = ct_other.get_trail(Name=created["TrailARN"])["Trail"]
    assert got["TrailARN"] == created["TrailARN"]
    assert got["HomeRegion"] == HOME


# ---------------------------------------------------------------------------
# DescribeTrails / ListTrails
# ---------------------------------------------------------------------------


@pytest.fixture
def three_trails(trails):
    """A single-region trail and a multi-region trail homed in us-east-1,
    and a single-region trail homed in eu-west-1."""
    local = trails.create(name=tname("local"))
    multi = trails.create(name=tname("multi"), IsMultiRegionTrail=True)
    other = trails.create(name=tname("other"), region=OTHER)
    return local, multi, other


def by_arn(trail_list: list[dict]) -> dict:
    out = {t["TrailARN"]: t for t in trail_list}
    assert len(out) == len(trail_list), trail_list
    return out


def test_describe_trails_default_includes_shadows(three_trails, ct, ct_other):
    local, multi, other = three_trails

    home_list = by_arn(ct.describe_trails()["trailList"])
    assert local["TrailARN"] in home_list and multi["TrailARN"] in home_list
    assert other["TrailARN"] not in home_list
    assert home_list[local["TrailARN"]]["HomeRegion"] == HOME
    assert home_list[multi["TrailARN"]]["HomeRegion"] == HOME
    assert home_list[local["TrailARN"]]["Name"] == local["Name"]
    for key, value in body(local).items():
        assert home_list[local["TrailARN"]][key] == value, key

    other_list = by_arn(ct_other.describe_trails()["trailList"])
    assert other["TrailARN"] in other_list
    assert multi["TrailARN"] in other_list, "multi-region trail's shadow missing"
    assert local["TrailARN"] not in other_list
    assert other_list[multi["TrailARN"]]["HomeRegion"] == HOME
    assert other_list[multi["TrailARN"]]["IsMultiRegionTrail"] is True
    assert other_list[other["TrailARN"]]["HomeRegion"] == OTHER
    for t in other_list.values():
        assert t["HomeRegion"] == OTHER or t["IsMultiRegionTrail"] is True, t

    # Explicit includeShadowTrails=True is the default.
    assert by_arn(ct_other.describe_trails(includeShadowTrails=True)["trailList"]).keys() == other_list.keys()


def test_describe_trails_without_shadows(three_trails, ct_other):
    local, multi, other = three_trails
    lst = by_arn(ct_other.describe_trails(includeShadowTrails=False)["trailList"])
    assert other["TrailARN"] in lst
    assert multi["TrailARN"] not in lst
    assert local["TrailARN"] not in lst
    assert all(t["HomeRegion"] == OTHER for t in lst.values()), lst


def test_describe_trails_by_names_and_arns(three_trails, ct):
    local, multi, other = three_trails
    resp = ct.describe_trails(trailNameList=[local["Name"], other["TrailARN"], f"no-such-{uid()}"])
    lst = by_arn(resp["trailList"])
    assert set(lst) == {local["TrailARN"], other["TrailARN"]}
    assert lst[other["TrailARN"]]["HomeRegion"] == OTHER
    assert lst[local["TrailARN"]]["HomeRegion"] == HOME

    assert ct.describe_trails(trailNameList=[f"no-such-{uid()}"])["trailList"] == []
    expect_error("InvalidTrailNameException", 400, ct.describe_trails, trailNameList=["bad name"])


def list_trails_all(client) -> list[dict]:
    out: list[dict] = []
    for page in client.get_paginator("list_trails").paginate():
        out.extend(page.get("Trails", []))
    return out


def test_list_trails_matches_describe_trails(three_trails, ct, ct_other):
    local, multi, other = three_trails
    for client, region in ((ct, HOME), (ct_other, OTHER)):
        listed = list_trails_all(client)
        for t in listed:
            assert set(t) == {"TrailARN", "Name", "HomeRegion"}, t
        listed_map = by_arn(listed)
        described = by_arn(client.describe_trails()["trailList"])
        assert listed_map.keys() == described.keys(), region
        for arn, t in listed_map.items():
            assert t["Name"] == described[arn]["Name"]
            assert t["HomeRegion"] == described[arn]["HomeRegion"]
    other_listed = by_arn(list_trails_all(ct_other))
    assert other_listed[multi["TrailARN"]] == {
        "TrailARN": multi["TrailARN"], "Name": multi["Name"], "HomeRegion": HOME}
    assert other_listed[other["TrailARN"]] == {
        "TrailARN": other["TrailARN"], "Name": other["Name"], "HomeRegion": OTHER}
    assert local["TrailARN"] not in other_listed


def test_cli_list_trails(server, three_trails):
    local, multi, other = three_trails
    out = cli_ok(server, "cloudtrail", "list-trails", region=OTHER)
    listed = by_arn(out["Trails"])
    assert listed[multi["TrailARN"]]["HomeRegion"] == HOME
    assert listed[multi["TrailARN"]]["Name"] == multi["Name"]
    assert listed[other["TrailARN"]]["HomeRegion"] == OTHER
    assert local["TrailARN"] not in listed


def test_cli_describe_trails(server, three_trails):
    local, multi, other = three_trails
    out = cli_ok(server, "cloudtrail", "describe-trails", "--no-include-shadow-trails", region=OTHER)
    lst = by_arn(out["trailList"])
    assert other["TrailARN"] in lst and multi["TrailARN"] not in lst
    out = cli_ok(server, "cloudtrail", "describe-trails", "--trail-name-list",
                 local["Name"], multi["TrailARN"])
    lst = by_arn(out["trailList"])
    assert set(lst) == {local["TrailARN"], multi["TrailARN"]}
    assert lst[multi["TrailARN"]]["IsMultiRegionTrail"] is True
    assert lst[local["TrailARN"]]["HomeRegion"] == HOME


# ---------------------------------------------------------------------------
# UpdateTrail
# ---------------------------------------------------------------------------


def test_update_changes_only_given_members(server, trails, ct):
    created = body(trails.create(S3KeyPrefix="p1", SnsTopicName=TOPIC,
                                 EnableLogFileValidation=True, KmsKeyId=KEY_ID))
    name = created["Name"]

    parsed, raw = call_raw(server, HOME, "UpdateTrail", Name=name, S3KeyPrefix="p2")
    assert body(parsed) == dict(created, S3KeyPrefix="p2")
    assert not (TRAIL_ONLY_KEYS & raw.keys()), raw

    resp = ct.update_trail(Name=created["TrailARN"], IsMultiRegionTrail=True)
    assert body(resp) == dict(created, S3KeyPrefix="p2", IsMultiRegionTrail=True)

    other_bucket = make_bucket(server)
    resp = ct.update_trail(Name=name, S3BucketName=other_bucket, EnableLogFileValidation=False,
                           CloudWatchLogsLogGroupArn=LOG_GROUP_ARN, CloudWatchLogsRoleArn=CW_ROLE_ARN)
    expected = dict(created, S3KeyPrefix="p2", IsMultiRegionTrail=True, S3BucketName=other_bucket,
                    LogFileValidationEnabled=False, CloudWatchLogsLogGroupArn=LOG_GROUP_ARN,
                    CloudWatchLogsRoleArn=CW_ROLE_ARN)
    assert body(resp) == expected
    assert ct.get_trail(Name=name)["Trail"] == dict(
        expected, HomeRegion=HOME, HasCustomEventSelectors=False, HasInsightSelectors=False)


def test_update_validations(server, trails, ct):
    created = trails.create(S3KeyPrefix="keep")
    name = created["Name"]
    before = ct.get_trail(Name=name)["Trail"]

    expect_error("S3BucketDoesNotExistException", 404,
                 ct.update_trail, Name=name, S3BucketName=f"no-such-bucket-{uid()}")
    expect_error("InvalidS3BucketNameException", 400,
                 ct.update_trail, Name=name, S3BucketName="My_Bucket")
    expect_error("InvalidS3PrefixException", 400,
                 ct.update_trail, Name=name, S3KeyPrefix="p" * 201)
    expect_error("InvalidSnsTopicNameException", 400,
                 ct.update_trail, Name=name, SnsTopicName="bad.topic")
    expect_error("KmsKeyNotFoundException", 400,
                 ct.update_trail, Name=name, KmsKeyId="alias/unknown")
    expect_error("InvalidParameterCombinationException", 400,
                 ct.update_trail, Name=name, IsMultiRegionTrail=True, IncludeGlobalServiceEvents=False)
    # Failed updates leave the trail untouched.
    assert ct.get_trail(Name=name)["Trail"] == before


def test_update_combination_checked_against_stored_trail(trails, ct):
    multi = trails.create(IsMultiRegionTrail=True)
    expect_error("InvalidParameterCombinationException", 400,
                 ct.update_trail, Name=multi["Name"], IncludeGlobalServiceEvents=False)
    single = trails.create(IncludeGlobalServiceEvents=False)
    expect_error("InvalidParameterCombinationException", 400,
                 ct.update_trail, Name=single["Name"], IsMultiRegionTrail=True)


def test_update_errors(trails, ct, ct_other):
    expect_error("TrailNotFoundException", 404, ct.update_trail, Name=f"missing-{uid()}",
                 S3KeyPrefix="x")
    created = trails.create()
    expect_error("InvalidHomeRegionException", 400,
                 ct_other.update_trail, Name=created["TrailARN"], S3KeyPrefix="x")
    assert "S3KeyPrefix" not in ct.get_trail(Name=created["Name"])["Trail"]


# ---------------------------------------------------------------------------
# DeleteTrail
# ---------------------------------------------------------------------------


def test_delete_trail(server, trails, ct, ct_other):
    created = trails.create(TagsList=[{"Key": "a", "Value": "1"}])
    name, arn = created["Name"], created["TrailARN"]
    ct.start_logging(Name=name)

    expect_error("InvalidHomeRegionException", 400, ct_other.delete_trail, Name=arn)
    assert ct.get_trail(Name=name)["Trail"]["TrailARN"] == arn

    parsed, raw = call_raw(server, HOME, "DeleteTrail", Name=name)
    assert raw == {}
    assert parsed["ResponseMetadata"]["HTTPStatusCode"] == 200
    expect_error("TrailNotFoundException", 404, ct.get_trail, Name=name)
    expect_error("TrailNotFoundException", 404, ct.get_trail_status, Name=name)
    expect_error("TrailNotFoundException", 404, ct.delete_trail, Name=name)
    assert arn not in by_arn(ct.describe_trails()["trailList"])

    # A new trail of the same name starts from scratch.
    again = trails.create(name=name)
    assert again["TrailARN"] == arn
    assert ct.get_trail_status(Name=name)["IsLogging"] is False
    assert tags_of(ct, arn) == {}


def test_delete_by_arn_and_unknown(trails, ct):
    created = trails.create()
    ct.delete_trail(Name=created["TrailARN"])
    expect_error("TrailNotFoundException", 404, ct.get_trail, Name=created["TrailARN"])
    expect_error("TrailNotFoundException", 404, ct.delete_trail, Name=f"missing-{uid()}")
    expect_error("TrailNotFoundException", 404, ct.delete_trail, Name=trail_arn(f"missing-{uid()}"))


# ---------------------------------------------------------------------------
# Logging state
# ---------------------------------------------------------------------------


def test_logging_lifecycle(server, trails, ct):
    created = trails.create()
    name = created["Name"]

    status = body(ct.get_trail_status(Name=name))
    assert status["IsLogging"] is False
    assert "StartLoggingTime" not in status and "TimeLoggingStarted" not in status

    before = time.time()
    parsed, raw = call_raw(server, HOME, "StartLogging", Name=name)
    after = time.time()
    assert raw == {}
    status = body(ct.get_trail_status(Name=created["TrailARN"]))
    assert status["IsLogging"] is True
    assert isinstance(status["StartLoggingTime"], dt.datetime), status
    assert_recent(status["StartLoggingTime"], before, after)
    assert isinstance(status["TimeLoggingStarted"], str), status
    started = parse_event_time(status["TimeLoggingStarted"]).timestamp()
    assert abs(started - status["StartLoggingTime"].timestamp()) <= 1.0, status

    # Starting twice is harmless.
    ct.start_logging(Name=name)
    assert ct.get_trail_status(Name=name)["IsLogging"] is True

    before = time.time()
    parsed, raw = call_raw(server, HOME, "StopLogging", Name=name)
    after = time.time()
    assert raw == {}
    status = body(ct.get_trail_status(Name=name))
    assert status["IsLogging"] is False
    assert isinstance(status["StopLoggingTime"], dt.datetime), status
    assert_recent(status["StopLoggingTime"], before, after)


def test_logging_from_other_region(trails, ct, ct_other):
    created = trails.create()
    arn = created["TrailARN"]
    expect_error("InvalidHomeRegionException", 400, ct_other.start_logging, Name=arn)
    assert ct.get_trail_status(Name=arn)["IsLogging"] is False

    ct.start_logging(Name=arn)
    # The status can be read by ARN from anywhere.
    assert ct_other.get_trail_status(Name=arn)["IsLogging"] is True
    expect_error("InvalidHomeRegionException", 400, ct_other.stop_logging, Name=arn)
    assert ct.get_trail_status(Name=arn)["IsLogging"] is True


def test_logging_unknown_trail(ct):
    for fn in (ct.start_logging, ct.stop_logging, ct.get_trail_status):
        expect_error("TrailNotFoundException", 404, fn, Name=f"missing-{uid()}")


# ---------------------------------------------------------------------------
# Tags
# ---------------------------------------------------------------------------


def test_add_remove_list_tags(server, trails, ct):
    created = trails.create(TagsList=[{"Key": "env", "Value": "dev"}])
    arn = created["TrailARN"]
    assert tags_of(ct, arn) == {"env": "dev"}

    parsed, raw = call_raw(server, HOME, "AddTags", ResourceId=arn,
                           TagsList=[{"Key": "env", "Value": "prod"}, {"Key": "owner", "Value": "sec"}])
    assert raw == {}
    assert tags_of(ct, arn) == {"env": "prod", "owner": "sec"}

    parsed, raw = call_raw(server, HOME, "RemoveTags", ResourceId=arn, TagsList=[{"Key": "env"}])
    assert raw == {}
    assert tags_of(ct, arn) == {"owner": "sec"}


def test_list_tags_several_resources(trails, ct):
    a = trails.create(TagsList=[{"Key": "x", "Value": "1"}])["TrailARN"]
    b = trails.create(TagsList=[{"Key": "y", "Value": "2"}])["TrailARN"]
    resp = ct.list_tags(ResourceIdList=[a, b])
    got = {e["ResourceId"]: {t["Key"]: t["Value"] for t in e["TagsList"]}
           for e in resp["ResourceTagList"]}
    assert got == {a: {"x": "1"}, b: {"y": "2"}}


def test_tag_errors(trails, ct):
    created = trails.create()
    name, arn = created["Name"], created["TrailARN"]
    tag = [{"Key": "k", "Value": "v"}]

    expect_error("CloudTrailARNInvalidException", 400, ct.add_tags, ResourceId=name, TagsList=tag)
    expect_error("CloudTrailARNInvalidException", 400, ct.list_tags, ResourceIdList=[name])
    unknown = trail_arn(f"missing-{uid()}")
    expect_error("ResourceNotFoundException", 400, ct.add_tags, ResourceId=unknown, TagsList=tag)
    expect_error("ResourceNotFoundException", 400, ct.remove_tags, ResourceId=unknown, TagsList=tag)
    expect_error("ResourceNotFoundException", 400, ct.list_tags, ResourceIdList=[unknown])

    many = [trail_arn(f"t{i}-{uid()}") for i in range(21)]
    expect_error("InvalidParameterException", 400, ct.list_tags, ResourceIdList=many)
    assert tags_of(ct, arn) == {}


def test_tags_limit_on_add(trails, ct):
    arn = trails.create(TagsList=[{"Key": f"k{i}", "Value": "v"} for i in range(40)])["TrailARN"]
    expect_error("TagsLimitExceededException", 400, ct.add_tags, ResourceId=arn,
                 TagsList=[{"Key": f"n{i}", "Value": "v"} for i in range(11)])
    assert len(tags_of(ct, arn)) == 40
    ct.add_tags(ResourceId=arn, TagsList=[{"Key": f"n{i}", "Value": "v"} for i in range(10)])
    assert len(tags_of(ct, arn)) == 50
    # Overwriting an existing key does not add to the count.
    ct.add_tags(ResourceId=arn, TagsList=[{"Key": "k0", "Value": "changed"}])
    tags = tags_of(ct, arn)
    assert len(tags) == 50 and tags["k0"] == "changed"
    expect_error("TagsLimitExceededException", 400, ct.add_tags, ResourceId=arn,
                 TagsList=[{"Key": "one-more", "Value": "v"}])


# ---------------------------------------------------------------------------
# ListPublicKeys
# ---------------------------------------------------------------------------


def test_list_public_keys(ct):
    assert body(ct.list_public_keys()) == {"PublicKeyList": []}
    now = utcnow()
    resp = ct.list_public_keys(StartTime=now - dt.timedelta(hours=1), EndTime=now)
    assert resp["PublicKeyList"] == []
    expect_error("InvalidTimeRangeException", 400, ct.list_public_keys,
                 StartTime=now, EndTime=now - dt.timedelta(hours=1))


# ---------------------------------------------------------------------------
# Operations not built yet
# ---------------------------------------------------------------------------


def test_unsupported_operations(trails, ct):
    # Lake operations are not built: a clear refusal, never a fake success.
    created = trails.create()
    expect_error("UnsupportedOperationException", 400, ct.create_event_data_store,
                 Name=f"eds-{uid()}")
    expect_error("UnsupportedOperationException", 400, ct.list_event_data_stores)
    assert ct.get_trail(Name=created["Name"])["Trail"]["HasCustomEventSelectors"] is False


# ---------------------------------------------------------------------------
# Persistence
# ---------------------------------------------------------------------------


def test_state_survives_restart(server, trails, bucket):
    ct = cloudtrail_client(server, HOME)
    created = trails.create(name=tname("persist"), S3KeyPrefix="persist", SnsTopicName=TOPIC,
                            IsMultiRegionTrail=True, KmsKeyId=KEY_ALIAS,
                            TagsList=[{"Key": "a", "Value": "1"}])
    name, arn = created["Name"], created["TrailARN"]
    ct.start_logging(Name=name)
    ct.add_tags(ResourceId=arn, TagsList=[{"Key": "b", "Value": "2"}])

    trail_before = ct.get_trail(Name=name)["Trail"]
    status_before = body(ct.get_trail_status(Name=name))
    tags_before = tags_of(ct, arn)
    assert tags_before == {"a": "1", "b": "2"}

    server.restart()
    ct = cloudtrail_client(server, HOME)

    assert ct.get_trail(Name=name)["Trail"] == trail_before
    status_after = body(ct.get_trail_status(Name=name))
    assert status_after["IsLogging"] is True
    assert status_after.get("StartLoggingTime") == status_before.get("StartLoggingTime")
    assert tags_of(ct, arn) == tags_before
    shadows = by_arn(cloudtrail_client(server, OTHER).describe_trails()["trailList"])
    assert arn in shadows
    expect_error("TrailAlreadyExistsException", 400, ct.create_trail, Name=name, S3BucketName=bucket)


# ---------------------------------------------------------------------------
# Self-audit of trail operations
# ---------------------------------------------------------------------------


def find_audit(ct, event_name: str, since: dt.datetime, match: Callable[[dict], bool]) -> tuple[dict, dict]:
    """Poll (up to 2 s) for a CloudTrail-API audit event of ``event_name``
    by the root user that satisfies ``match``."""
    lookup = attrs(("EventName", event_name), ("Username", "root"))
    deadline = time.monotonic() + AUDIT_TIMEOUT_S
    while True:
        for ev in lookup_all(ct, LookupAttributes=lookup, StartTime=since):
            rec = json.loads(ev["CloudTrailEvent"])
            assert rec.get("eventName") == event_name, rec
            if match(rec):
                return ev, rec
        if time.monotonic() > deadline:
            pytest.fail(f"no matching {event_name} audit event after {AUDIT_TIMEOUT_S} s")
        time.sleep(0.1)


def test_create_trail_is_audited(trails, ct, bucket):
    since = utcnow() - dt.timedelta(minutes=1)
    name = tname("audited")
    resp = trails.create(name=name, S3KeyPrefix="audit")
    request_id = resp["ResponseMetadata"]["RequestId"]

    ev, rec = find_audit(ct, "CreateTrail", since,
                         lambda r: (r.get("requestParameters") or {}).get("name") == name)
    assert ev["ReadOnly"] == "false"
    assert ev["Username"] == "root"
    assert rec["readOnly"] is False
    assert rec["eventSource"] == "cloudtrail.amazonaws.com"
    assert rec["awsRegion"] == HOME
    assert rec["requestID"] == request_id
    assert "errorCode" not in rec
    params = rec["requestParameters"]
    assert params["s3BucketName"] == bucket
    assert params["s3KeyPrefix"] == "audit"
    assert not any(k[:1].isupper() for k in params), params
    elements = rec["responseElements"]
    assert isinstance(elements, dict), rec
    assert elements["trailARN"] == resp["TrailARN"]
    assert elements["name"] == name
    assert elements["s3BucketName"] == bucket


def test_failed_create_trail_is_audited(ct, bucket):
    since = utcnow() - dt.timedelta(minutes=1)
    bad = f"bad name {uid()}"
    err = expect_error("InvalidTrailNameException", 400, ct.create_trail, Name=bad, S3BucketName=bucket)
    request_id = err["ResponseMetadata"]["RequestId"]
    assert request_id

    ev, rec = find_audit(ct, "CreateTrail", since, lambda r: r.get("requestID") == request_id)
    assert rec["errorCode"] == "InvalidTrailNameException"
    assert isinstance(rec.get("errorMessage"), str) and rec["errorMessage"]
    assert rec["requestParameters"]["name"] == bad
    assert rec.get("responseElements") is None


def test_get_trail_is_audited_read_only(trails, ct):
    created = trails.create()
    since = utcnow() - dt.timedelta(minutes=1)
    resp = ct.get_trail(Name=created["Name"])
    request_id = resp["ResponseMetadata"]["RequestId"]

    ev, rec = find_audit(ct, "GetTrail", since, lambda r: r.get("requestID") == request_id)
    assert ev["ReadOnly"] == "true"
    assert rec["readOnly"] is True
    assert rec["requestParameters"] == {"name": created["Name"]}
    assert "responseElements" in rec and rec["responseElements"] is None


# ---------------------------------------------------------------------------
# AWS CLI v1
# ---------------------------------------------------------------------------


def test_cli_trail_lifecycle(server, trails, bucket):
    name = tname("cli")
    out = cli_ok(server, "cloudtrail", "create-trail", "--name", name, "--s3-bucket-name", bucket,
                 "--is-multi-region-trail", "--enable-log-file-validation")
    trails.track(trail_arn(name))
    assert out == expected_create_response(name, bucket, IsMultiRegionTrail=True,
                                           LogFileValidationEnabled=True)

    out = cli_ok(server, "cloudtrail", "describe-trails", "--trail-name-list", name)
    assert [t["Name"] for t in out["trailList"]] == [name]
    assert out["trailList"][0]["HomeRegion"] == HOME
    assert out["trailList"][0]["HasCustomEventSelectors"] is False

    out = cli_ok(server, "cloudtrail", "get-trail-status", "--name", name)
    assert out["IsLogging"] is False
    assert "StartLoggingTime" not in out

    before = time.time()
    cli_ok(server, "cloudtrail", "start-logging", "--name", name)
    after = time.time()
    out = cli_ok(server, "cloudtrail", "get-trail-status", "--name", trail_arn(name))
    assert out["IsLogging"] is True
    assert_recent(out["StartLoggingTime"], before, after)

    # The multi-region trail is listed from another region, homed here.
    out = cli_ok(server, "cloudtrail", "list-trails", region=OTHER)
    listed = by_arn(out["Trails"])
    assert listed[trail_arn(name)] == {"TrailARN": trail_arn(name), "Name": name, "HomeRegion": HOME}

    cli_ok(server, "cloudtrail", "stop-logging", "--name", name)
    assert cli_ok(server, "cloudtrail", "get-trail-status", "--name", name)["IsLogging"] is False

    cli_ok(server, "cloudtrail", "delete-trail", "--name", name)
    expect_cli_error("TrailNotFoundException", server, "cloudtrail", "get-trail-status", "--name", name)


def test_cli_errors(server, bucket):
    expect_cli_error("InvalidTrailNameException", server, "cloudtrail", "create-trail",
                     "--name", "my trail", "--s3-bucket-name", bucket)
    expect_cli_error("S3BucketDoesNotExistException", server, "cloudtrail", "create-trail",
                     "--name", tname(), "--s3-bucket-name", f"no-such-bucket-{uid()}")
    expect_cli_error("InvalidParameterCombinationException", server, "cloudtrail", "create-trail",
                     "--name", tname(), "--s3-bucket-name", bucket,
                     "--is-multi-region-trail", "--no-include-global-service-events")
    expect_cli_error("CloudTrailARNInvalidException", server, "cloudtrail", "get-trail",
                     "--name", "arn:aws:cloudtrail:us-east-1:123:trail/x")
    expect_cli_error("TrailNotFoundException", server, "cloudtrail", "delete-trail",
                     "--name", f"missing-{uid()}")
