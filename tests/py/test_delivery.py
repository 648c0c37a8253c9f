"""Trail delivery to the local bucket store, end to end.

One server for the whole module (``SERVER_ENV`` below): a 1 s delivery cadence, a 1 s cap on
retry backoff, two SNS topics whose HTTP subscribers are a webhook receiver run by this module
(started at import time, in a background thread, on a free port), and an organization whose
management account is the server's account with one member account.

Every test makes its own buckets (directories ``<data_dir>/buckets/NAME``) and uid-named trails
and deletes its trails at the end.  Log files are read straight from the bucket directories and
checked on every read (key layout, one gzip member, ``{"Records": [...]}``, records that belong to
the file's account/region/kind, no event delivered twice to a bucket).

"Never delivered" is always checked behind a barrier: a later event that the trail must get is
waited for first.  A trail's delivery follows the log in order, so once the barrier event is in
the bucket every earlier event has been decided on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest
import requests
from botocore.exceptions import ClientError

from receivers import Webhook
from conftest import (
    poll_until,
    ACCOUNT_ID,
    OMIT,
    assert_record_roundtrip,
    cloudtrail_client,
    find_event,
    free_port,
    iam_user_identity,
    json_equal,
    make_insight_record,
    make_record,
    parse_event_time,
    trail_status_with_body,
    uid,
    gunzip_single_member,
    signed_session,
)

HOME = "us-east-1"
OTHER = "eu-west-1"
ORG_ID = "o-aa11bb22cc33"
MEMBER = "444455556666"
OUTSIDER = "999988887777"

TOPIC_OK = "dlv-ok"
TOPIC_FLAKY = "dlv-flaky"
SECRET_OK = "ok-secret-7f3e9a"
SECRET_FLAKY = "flaky-secret-c41d02"
TOPIC_OK_ARN = f"arn:aws:sns:{HOME}:{ACCOUNT_ID}:{TOPIC_OK}"
TOPIC_FLAKY_ARN = f"arn:aws:sns:{HOME}:{ACCOUNT_ID}:{TOPIC_FLAKY}"

DELIVERY_TIMEOUT_S = 20.0
POLL_S = 0.2
# A file's name carries its delivery minute; allow this much clock and cadence slack.
STAMP_SLACK_S = 5.0


# ---------------------------------------------------------------------------
# Webhook receiver (module level: its URL must be in SERVER_ENV)
# ---------------------------------------------------------------------------


WEBHOOK = Webhook()
WEBHOOK.fail("/flaky")

SERVER_ENV = {
    "OPENTRAIL_DELIVERY_INTERVAL": "1s",
    "OPENTRAIL_DELIVERY_MAX_BACKOFF": "1s",
    "OPENTRAIL_SNS_TOPICS": f"{TOPIC_OK},{TOPIC_FLAKY}",
    "OPENTRAIL_SNS_SUBSCRIPTIONS": (
        f"{TOPIC_OK}={WEBHOOK.url}/ok-a,{TOPIC_OK}={WEBHOOK.url}/ok-b,"
        f"{TOPIC_FLAKY}={WEBHOOK.url}/flaky"
    ),
    "OPENTRAIL_SNS_TOPIC_SECRETS": f"{TOPIC_OK}={SECRET_OK},{TOPIC_FLAKY}={SECRET_FLAKY}",
    "OPENTRAIL_ORGANIZATION_ID": ORG_ID,
    "OPENTRAIL_ORGANIZATION_MANAGEMENT_ACCOUNT": ACCOUNT_ID,
    "OPENTRAIL_ORGANIZATION_MEMBERS": MEMBER,
    # This module creates up to five trails in one test (plus leftovers of a failed one).
    "OPENTRAIL_MAX_TRAILS_PER_REGION": "50",
}


@pytest.fixture(scope="module", autouse=True)
def _webhook_lifetime():
    yield WEBHOOK
    WEBHOOK.httpd.shutdown()
    WEBHOOK.httpd.server_close()


# ---------------------------------------------------------------------------
# Buckets and log files
# ---------------------------------------------------------------------------


def utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc)


def key_regex(key_prefix: str | None, org_id: str | None) -> re.Pattern:
    """The full key of a log file, as the contract lays it out."""
    head = ""
    if key_prefix:
        head += re.escape(key_prefix.rstrip("/")) + "/"
    head += "AWSLogs/"
    if org_id:
        head += re.escape(org_id) + "/"
    return re.compile(
        "^" + head
        + r"(?P<account>\d{12})/(?P<kind>CloudTrail|CloudTrail-Insight)/(?P<region>[a-z0-9-]+)/"
        r"(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/"
        r"(?P=account)_(?P=kind)_(?P=region)_(?P<sy>\d{4})(?P<sm>\d{2})(?P<sd>\d{2})T(?P<hh>\d{2})(?P<mm>\d{2})Z_"
        r"(?P<unique>[A-Za-z0-9]{16})\.json\.gz$"
    )



class LogFile:
    def __init__(self, key: str, match: re.Match, records: list[dict], stamp: dt.datetime):
        self.key = key
        self.account = match["account"]
        self.kind = match["kind"]
        self.region = match["region"]
        self.unique = match["unique"]
        self.records = records
        self.stamp = stamp


class Bucket:
    """A bucket directory of the local store, read and checked file by file.

    Files are create-only, so each is parsed once and cached (``forget()`` drops the cache,
    e.g. after the directory was removed).  Names not ending in ``.json.gz`` (an unfinished
    write's staging file, say) are not log files; those still present at the last scan are
    ``strays``."""

    def __init__(self, server, name: str):
        self.name = name
        self.path = Path(server.data_dir) / "buckets" / name
        os.makedirs(self.path)
        self.key_prefix: str | None = None
        self.org_id: str | None = None
        self.created = time.time()
        self._files: dict[str, LogFile] = {}
        self.strays: set[str] = set()

    def configure(self, key_prefix: str | None, org_id: str | None) -> None:
        self.key_prefix = key_prefix
        self.org_id = org_id

    def forget(self) -> None:
        self._files.clear()
        self.strays.clear()

    def _check(self, key: str, data: bytes) -> LogFile:
        m = key_regex(self.key_prefix, self.org_id).match(key)
        assert m, (
            f"bucket {self.name}: key {key!r} does not follow "
            f"[{self.key_prefix}/]AWSLogs/[{self.org_id}/]<account>/CloudTrail/<region>/YYYY/MM/DD/"
            "<account>_CloudTrail_<region>_<YYYYMMDD>T<HHmm>Z_<16 alphanumerics>.json.gz"
        )
        assert (m["y"], m["m"], m["d"]) == (m["sy"], m["sm"], m["sd"]), (
            f"{key}: date folders differ from the date in the file name"
        )
        stamp = dt.datetime(int(m["sy"]), int(m["sm"]), int(m["sd"]), int(m["hh"]), int(m["mm"]),
                            tzinfo=dt.timezone.utc)
        now = time.time()
        # The stamp is the delivery minute (floored): not in the future, not before this bucket.
        assert stamp.timestamp() <= now + STAMP_SLACK_S, f"{key}: delivery time is in the future (now {utc(now)})"
        assert stamp.timestamp() >= self.created - 60 - STAMP_SLACK_S, (
            f"{key}: delivery time {stamp} is before the bucket was made ({utc(self.created)})"
        )
        raw = gunzip_single_member(data, key)
        text = raw.decode("utf-8")  # strict
        doc = json.loads(text)
        assert isinstance(doc, dict) and list(doc.keys()) == ["Records"], (
            f"{key}: content is not {{\"Records\": [...]}}: {text[:300]}"
        )
        records = doc["Records"]
        assert isinstance(records, list) and records, f"{key}: Records is empty or not a list"
        for r in records:
            assert isinstance(r, dict), f"{key}: a record is not an object: {r!r}"
            assert isinstance(r.get("eventID"), str) and r["eventID"], f"{key}: record without eventID: {r}"
            assert r.get("recipientAccountId") == m["account"], f"{key}: record of another account: {r}"
            assert r.get("awsRegion") == m["region"], f"{key}: record of another region: {r}"
            is_insight = r.get("eventCategory") == "Insight"
            assert is_insight == (m["kind"] == "CloudTrail-Insight"), f"{key}: record in the wrong folder: {r}"
        return LogFile(key, m, records, stamp)

    def scan(self) -> dict[str, LogFile]:
        if self.path.is_dir():
            for root, _dirs, files in os.walk(self.path):
                for f in files:
                    full = Path(root) / f
                    key = full.relative_to(self.path).as_posix()
                    if key in self._files:
                        continue
                    if not key.endswith(".json.gz"):
                        self.strays.add(key)
                        continue
                    try:
                        data = full.read_bytes()
                    except FileNotFoundError:
                        continue
                    self._files[key] = self._check(key, data)
        # A staging file seen mid-write is gone once the write links the file into place; only
        # names still there are strays (a leftover staging file stays one).
        self.strays = {k for k in self.strays if (self.path / k).exists()}
        return dict(self._files)

    def index(self) -> dict[str, tuple[LogFile, dict]]:
        """eventID -> (file, record) over every file; an eventID in two places fails."""
        out: dict[str, tuple[LogFile, dict]] = {}
        for key, f in sorted(self.scan().items()):
            for r in f.records:
                eid = r["eventID"]
                if eid in out:
                    pytest.fail(
                        f"bucket {self.name}: event {eid} delivered twice: in {out[eid][0].key} and in {key}"
                        f"{' (same file)' if out[eid][0].key == key else ''}",
                        pytrace=False,
                    )
                out[eid] = (f, r)
        return out

    def records(self) -> list[dict]:
        return [r for _f, r in self.index().values()]

    def wait_for(self, ids: Iterable[str], timeout: float = DELIVERY_TIMEOUT_S) -> dict[str, tuple[LogFile, dict]]:
        want = set(ids)
        deadline = time.monotonic() + timeout
        while True:
            idx = self.index()
            missing = want - idx.keys()
            if not missing:
                return idx
            if time.monotonic() >= deadline:
                pytest.fail(
                    f"bucket {self.name}: {len(missing)} of {len(want)} events not delivered within "
                    f"{timeout:.0f} s (e.g. {sorted(missing)[:5]}); files: {sorted(self._files)[:20]}",
                    pytrace=False,
                )
            time.sleep(POLL_S)


# ---------------------------------------------------------------------------
# Trails
# ---------------------------------------------------------------------------


class Deliveries:
    """Creates buckets and trails for one test; deletes the trails at the end."""

    def __init__(self, server):
        self.server = server
        self.ct = cloudtrail_client(server, HOME)
        self.arns: list[str] = []

    def bucket(self, prefix: str = "dlv") -> Bucket:
        return Bucket(self.server, f"{prefix}-{uid()}")

    def trail(self, bucket: Bucket, prefix: str = "trail", *, start: bool = True,
              selectors: dict | None = None, insights: list | None = None, **params: Any) -> str:
        name = f"{prefix}-{uid()}"
        resp = self.ct.create_trail(Name=name, S3BucketName=bucket.name, **params)
        self.arns.append(resp["TrailARN"])
        bucket.configure(params.get("S3KeyPrefix"), ORG_ID if params.get("IsOrganizationTrail") else None)
        if selectors is not None:
            self.ct.put_event_selectors(TrailName=name, **selectors)
        if insights is not None:
            self.ct.put_insight_selectors(TrailName=name, InsightSelectors=insights)
        if start:
            self.ct.start_logging(Name=name)
        return name

    def cleanup(self) -> None:
        for arn in self.arns:
            try:
                self.ct.delete_trail(Name=arn)
            except ClientError as e:
                if e.response["Error"]["Code"] != "TrailNotFoundException":
                    raise


@pytest.fixture
def dl(server):
    d = Deliveries(server)
    try:
        yield d
    finally:
        d.cleanup()


STATUS_CALLS: dict[str, int] = {}


def trail_status(server, name: str) -> tuple[dict, dict]:
    """GetTrailStatus through boto3: the parsed response and the raw JSON body (boto3 drops
    null members, so absence is checked on the raw body)."""
    STATUS_CALLS[name] = STATUS_CALLS.get(name, 0) + 1
    return trail_status_with_body(server, name, HOME)


def poll(what: str, fn: Callable[[], Any], timeout: float = DELIVERY_TIMEOUT_S, interval: float = POLL_S) -> Any:
    return poll_until(what, fn, timeout, interval)


def ingest(server, records: list[dict]) -> list[str]:
    ids = server.ingest_ok(records)
    sent_ids = [r.get("eventID") for r in records]
    for sent, got in zip(sent_ids, ids):
        if sent is not None:
            assert got == sent, f"ingest answered EventId {got} for a record sent with eventID {sent}"
    return ids


def assert_exactly(bucket: Bucket, candidates: dict[str, dict], expected: Iterable[str], what: str) -> None:
    """Of the ``candidates`` (eventID -> sent record) exactly ``expected`` are in the bucket, and
    those are unchanged."""
    idx = bucket.index()
    expected = set(expected)
    got = {eid for eid in candidates if eid in idx}
    assert got == expected, (
        f"{what}: bucket {bucket.name}: unexpected {sorted(candidates[e].get('eventName', '?') + ' ' + e for e in got - expected)}; "
        f"missing {sorted(candidates[e].get('eventName', '?') + ' ' + e for e in expected - got)}"
    )
    for eid in expected:
        assert_record_roundtrip(json.dumps(idx[eid][1]), candidates[eid])


def audit_records(records: Iterable[dict], event_name: str, trail_name: str) -> list[dict]:
    return [
        r for r in records
        if r.get("eventSource") == "cloudtrail.amazonaws.com"
        and r.get("eventName") == event_name
        and isinstance(r.get("requestParameters"), dict)
        and r["requestParameters"].get("name") == trail_name
    ]


def ec2_event(name: str = "RunInstances", read_only: bool = False, region: str = HOME,
              account: str = ACCOUNT_ID, **kw: Any) -> dict:
    rec = make_record(eventSource="ec2.amazonaws.com", eventName=name, readOnly=read_only,
                      awsRegion=region, recipientAccountId=account,
                      requestParameters={"instancesSet": {"items": [{"imageId": "ami-0abcdef1234567890"}]}},
                      resources=[{"ARN": f"arn:aws:ec2:{region}:{account}:instance/i-{uid()}",
                                  "accountId": account, "type": "AWS::EC2::Instance"}],
                      **kw)
    if account != ACCOUNT_ID:
        rec["userIdentity"] = iam_user_identity(f"user-{uid()}", "AKIA" + uid().upper() + "ABCDEF", account)
    return rec


def s3_data_event(bucket: str, key: str, name: str = "GetObject", read_only: bool = True) -> dict:
    return make_record(
        eventSource="s3.amazonaws.com", eventName=name, readOnly=read_only,
        eventCategory="Data", managementEvent=False,
        requestParameters={"bucketName": bucket, "key": key, "Host": f"{bucket}.s3.amazonaws.com"},
        resources=[
            {"type": "AWS::S3::Object", "ARN": f"arn:aws:s3:::{bucket}/{key}"},
            {"accountId": ACCOUNT_ID, "type": "AWS::S3::Bucket", "ARN": f"arn:aws:s3:::{bucket}"},
        ],
        additionalEventData={"bytesTransferredIn": 0, "bytesTransferredOut": 1024, "x-amz-id-2": uid()},
    )


def by_id(records: list[dict]) -> dict[str, dict]:
    return {r["eventID"]: r for r in records}


# ---------------------------------------------------------------------------
# 1. Key layout, gzip, envelope, record content
# ---------------------------------------------------------------------------


def rich_records(tag: str) -> list[dict]:
    """Records with every kind of JSON value, unicode, nesting, and one whose eventID and
    eventVersion the server fills in."""
    plain = make_record(eventName=f"CreateBucket{tag}")
    tricky = make_record(
        eventName=f"PutBucketPolicy{tag}",
        userAgent="aws-sdk-ünïcødé/1.0 ✓ 😀 \"quoted\" \\back\\slash\ttab",
        requestParameters={
            "bucketName": f"b-{tag}",
            "policy": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Sid": "Ü", "Action": ["s3:*"]}]},
            "nested": {"deep": {"deeper": [1, 2.5, -3, 1e-7, 12345678901234, True, False, None, {}, [], ""]}},
        },
        responseElements={"x-amz-request-charged": None, "ok": True, "count": 0, "ratio": 0.0},
        additionalEventData={"SignatureVersion": "SigV4", "CipherSuite": "TLS_AES_128_GCM_SHA256",
                             "bytesTransferredIn": 163.0, "AuthenticationMethod": "AuthHeader"},
        errorCode="AccessDenied",
        errorMessage="Access Denied — “smart quotes” and 中文",
        tlsDetails={"tlsVersion": "TLSv1.3", "cipherSuite": "TLS_AES_128_GCM_SHA256",
                    "clientProvidedHostHeader": "s3.amazonaws.com"},
        sharedEventID=str(uuid.uuid4()),
        vpcEndpointId="vpce-1a2b3c4d",
    )
    minimal = make_record(eventName=f"DeleteBucket{tag}", eventID=OMIT, eventVersion=OMIT)
    # Recorded now, happened three days ago: it goes under the delivery date, not its own.
    old = make_record(eventName=f"ListBuckets{tag}", readOnly=True,
                      event_time=dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(days=3))
    return [plain, tricky, minimal, old]


def test_key_layout_gzip_envelope_and_records(server, dl):
    ct = dl.ct
    plain_bucket = dl.bucket("layout")
    prefixed_bucket = dl.bucket("layoutp")
    key_prefix = f"team-{uid()}/audit"
    plain_trail = dl.trail(plain_bucket, "layout")
    prefixed_trail = dl.trail(prefixed_bucket, "layoutp", S3KeyPrefix=key_prefix)

    before = time.time()
    sent = rich_records(uid())
    ids = ingest(server, sent)
    acked = time.time()
    plain_idx = plain_bucket.wait_for(ids)
    prefixed_idx = prefixed_bucket.wait_for(ids)
    after = time.time()
    # A file appears about one interval (1 s) after the ingest was acknowledged.
    assert after - acked <= 6.0, f"delivery took {after - acked:.1f} s with a 1 s interval"

    for bucket, trail, prefix in ((plain_bucket, plain_trail, None),
                                  (prefixed_bucket, prefixed_trail, key_prefix)):
        files = bucket.scan()
        assert files, f"no files in {bucket.name}"
        head = (prefix + "/" if prefix else "") + f"AWSLogs/{ACCOUNT_ID}/CloudTrail/{HOME}/"
        exact = re.compile(
            "^" + re.escape(head) + r"(\d{4})/(\d{2})/(\d{2})/" + re.escape(f"{ACCOUNT_ID}_CloudTrail_{HOME}_")
            + r"(\d{8})T(\d{2})(\d{2})Z_[A-Za-z0-9]{16}\.json\.gz$"
        )
        for key, f in files.items():
            m = exact.match(key)
            assert m, f"{trail}: key {key!r} does not match {exact.pattern}"
            y, mo, d, ymd, hh, mm = m.groups()
            assert ymd == y + mo + d, key
            stamp = dt.datetime(int(y), int(mo), int(d), int(hh), int(mm), tzinfo=dt.timezone.utc)
            # The delivery minute: between (minute of) the trail's creation and the observation.
            assert utc(bucket.created - STAMP_SLACK_S).replace(second=0, microsecond=0) <= stamp, (key, utc(bucket.created))
            assert stamp <= utc(after + STAMP_SLACK_S), (key, utc(after))
            assert abs(stamp.timestamp() - time.time()) <= 150, f"{key}: stamp {stamp} is not within ~2 minutes of now"
            assert f.stamp == stamp
            # Date folders are the UTC delivery date.
            assert (y, mo, d) in {
                (t.strftime("%Y"), t.strftime("%m"), t.strftime("%d"))
                for t in (utc(bucket.created - STAMP_SLACK_S), utc(after + STAMP_SLACK_S))
            }, key
        assert bucket.strays == set(), f"{bucket.name}: files that are not log files: {bucket.strays}"
        if prefix:
            assert all(k.startswith(prefix + "/AWSLogs/") for k in files)
        else:
            assert all(k.startswith("AWSLogs/") for k in files)
        # Files of the same plan for the same group do not collide; every name is unique.
        uniques = [f.unique for f in files.values()]
        assert len(uniques) == len(set(uniques)), uniques

    # The file(s) holding our records were stamped while this test ran.
    for idx in (plain_idx, prefixed_idx):
        for eid in ids:
            f = idx[eid][0]
            assert utc(before).replace(second=0, microsecond=0) <= f.stamp <= utc(after + STAMP_SLACK_S), (f.key, before, after)

    # Content: every field sent is there unchanged; the record is exactly what LookupEvents shows.
    for eid, record in zip(ids, sent):
        looked_up = find_event(ct, eid)
        assert looked_up is not None, f"event {eid} not found by LookupEvents"
        stored = json.loads(looked_up["CloudTrailEvent"])
        for idx in (plain_idx, prefixed_idx):
            delivered = idx[eid][1]
            assert_record_roundtrip(json.dumps(delivered), record)
            assert json_equal(delivered, stored), (
                f"delivered record differs from LookupEvents' CloudTrailEvent:\n{delivered}\n{stored}"
            )
    filled = plain_idx[ids[2]][1]
    assert filled["eventID"] == ids[2] and isinstance(filled.get("eventVersion"), str) and filled["eventVersion"]

    # Read the raw bytes once more by hand: exactly one gzip member, UTF-8 JSON.
    some_key = plain_idx[ids[1]][0].key
    data = (plain_bucket.path / some_key).read_bytes()
    d = zlib.decompressobj(wbits=31)
    text = d.decompress(data) + d.flush()
    assert d.eof and d.unused_data == b""
    assert "😀".encode() in text or "\\ud83d\\ude00".encode() in text
    assert list(json.loads(text.decode("utf-8")).keys()) == ["Records"]


# ---------------------------------------------------------------------------
# 2. Logging spans
# ---------------------------------------------------------------------------


def test_only_events_recorded_while_logging_are_delivered(server, dl):
    ct = dl.ct
    bucket = dl.bucket("spans")
    never_bucket = dl.bucket("never")
    name = dl.trail(bucket, "spans", start=False)
    never = dl.trail(never_bucket, "never", start=False)
    tag = uid()

    def ev(label: str) -> dict:
        return make_record(eventName=f"{label}{tag}")

    before_start = ingest(server, [ev("BeforeStart"), ev("BeforeStart")])
    ct.start_logging(Name=name)
    span1 = ingest(server, [ev("Span1"), ev("Span1"), ev("Span1")])
    ct.stop_logging(Name=name)
    gap1 = ingest(server, [ev("Gap1"), ev("Gap1")])
    ct.start_logging(Name=name)
    span2 = ingest(server, [ev("Span2"), ev("Span2")])
    ct.stop_logging(Name=name)
    gap2 = ingest(server, [ev("Gap2")])
    time.sleep(1.5)  # let a delivery round pass while stopped: still nothing of gap2 may appear
    gap2 += ingest(server, [ev("Gap2")])
    ct.start_logging(Name=name)
    span3 = ingest(server, [ev("Span3")])

    idx = bucket.wait_for(span1 + span2 + span3)
    records = bucket.records()
    for eid in before_start + gap1 + gap2:
        assert eid not in idx, f"event {eid} recorded while {name} was not logging was delivered: {idx[eid][0].key}"
    # The self-audit records of the span boundaries are delivered, each once.
    starts = audit_records(records, "StartLogging", name)
    stops = audit_records(records, "StopLogging", name)
    assert len(starts) == 3, f"StartLogging records of {name}: {starts}"
    assert len(stops) == 2, f"StopLogging records of {name}: {stops}"
    for r in starts + stops:
        assert r["recipientAccountId"] == ACCOUNT_ID and r["awsRegion"] == HOME
        assert r.get("eventCategory", "Management") == "Management"
    # CreateTrail happened before the first StartLogging: not delivered.
    assert audit_records(records, "CreateTrail", name) == []
    # A span's events are delivered in full, once; nothing ingested before the first
    # StartLogging or in a gap appears.  Once more after another round:
    time.sleep(1.5)
    idx = bucket.index()
    for eid in before_start + gap1 + gap2:
        assert eid not in idx
    for eid in span1 + span2 + span3:
        assert eid in idx

    # A trail that never started logging delivers nothing, and has no delivery status.
    assert never_bucket.scan() == {}, f"never-started trail {never} delivered {list(never_bucket.scan())}"
    assert never_bucket.strays == set()
    st, raw = trail_status(server, never)
    assert st["IsLogging"] is False
    for member in ("LatestDeliveryTime", "LatestDeliveryError", "LatestDeliveryAttemptSucceeded",
                   "LatestNotificationTime", "LatestNotificationError"):
        assert member not in raw, raw
    # The logging trail reports its deliveries.
    st, raw = trail_status(server, name)
    assert st["IsLogging"] is True and isinstance(st.get("LatestDeliveryTime"), dt.datetime), st
    assert "LatestDeliveryError" not in raw, raw


# ---------------------------------------------------------------------------
# 3. Event selectors
# ---------------------------------------------------------------------------


def test_event_selectors_filter_delivery(server, dl):
    tag = uid()
    data_bucket_name = f"data-{tag}"
    data_prefix = f"arn:aws:s3:::{data_bucket_name}/logs/"
    put_prefix = f"Put{tag}"

    b_default, b_wo, b_excl, b_data, b_adv = (dl.bucket(p) for p in ("sdef", "swo", "sexcl", "sdata", "sadv"))
    dl.trail(b_default, "sdef")
    dl.trail(b_wo, "swo", selectors={"EventSelectors": [
        {"ReadWriteType": "WriteOnly", "IncludeManagementEvents": True}]})
    dl.trail(b_excl, "sexcl", selectors={"EventSelectors": [
        {"ReadWriteType": "All", "IncludeManagementEvents": True,
         "ExcludeManagementEventSources": ["kms.amazonaws.com"]}]})
    dl.trail(b_data, "sdata", selectors={"EventSelectors": [
        {"ReadWriteType": "All", "IncludeManagementEvents": False,
         "DataResources": [{"Type": "AWS::S3::Object", "Values": [data_prefix]}]}]})
    adv_selectors = [
        {"Name": "ec2-management", "FieldSelectors": [
            {"Field": "eventCategory", "Equals": ["Management"]},
            {"Field": "eventSource", "Equals": ["ec2.amazonaws.com"]}]},
        {"Name": "put-writes", "FieldSelectors": [
            {"Field": "eventCategory", "Equals": ["Management"]},
            {"Field": "readOnly", "Equals": ["false"]},
            {"Field": "eventName", "StartsWith": [put_prefix]}]},
    ]
    dl.trail(b_adv, "sadv", selectors={"AdvancedEventSelectors": adv_selectors})

    ev = {
        "w_ec2": ec2_event("RunInstances", read_only=False),
        "r_ec2": ec2_event("DescribeInstances", read_only=True),
        "kms_w": make_record(eventSource="kms.amazonaws.com", eventName="CreateKey", readOnly=False,
                             resources=[{"ARN": f"arn:aws:kms:{HOME}:{ACCOUNT_ID}:key/{uuid.uuid4()}",
                                         "accountId": ACCOUNT_ID, "type": "AWS::KMS::Key"}]),
        "s3_put_w": make_record(eventName=f"{put_prefix}BucketPolicy", readOnly=False),
        "s3_put_r": make_record(eventName=f"{put_prefix}Probe", readOnly=True),
        "s3_get_w": make_record(eventName=f"Get{tag}Thing", readOnly=False),
        "iam_w": make_record(eventSource="iam.amazonaws.com", eventName="CreateUser", readOnly=False,
                             resources=[]),
        "data_in": s3_data_event(data_bucket_name, f"logs/{tag}/a.txt"),
        "data_out_prefix": s3_data_event(data_bucket_name, f"other/{tag}/b.txt"),
        "data_other_bucket": s3_data_event(f"other-{tag}", f"logs/{tag}/c.txt"),
        "data_lambda": make_record(
            eventSource="lambda.amazonaws.com", eventName="Invoke", readOnly=False,
            eventCategory="Data", managementEvent=False,
            resources=[{"accountId": ACCOUNT_ID, "type": "AWS::Lambda::Function",
                        "ARN": f"arn:aws:lambda:{HOME}:{ACCOUNT_ID}:function:fn-{tag}"}]),
    }
    ingest(server, list(ev.values()))
    # Barriers, recorded after everything above.
    ev["sentinel_mgmt"] = ec2_event("RunInstances", read_only=False)
    ev["sentinel_data"] = s3_data_event(data_bucket_name, f"logs/{tag}/sentinel.txt", "PutObject", read_only=False)
    ingest(server, [ev["sentinel_mgmt"], ev["sentinel_data"]])
    eid = {k: v["eventID"] for k, v in ev.items()}
    candidates = {v["eventID"]: v for v in ev.values()}

    management = ["w_ec2", "r_ec2", "kms_w", "s3_put_w", "s3_put_r", "s3_get_w", "iam_w", "sentinel_mgmt"]
    expect = {
        "default": management,
        "write-only": ["w_ec2", "kms_w", "s3_put_w", "s3_get_w", "iam_w", "sentinel_mgmt"],
        "exclude-kms": [k for k in management if k != "kms_w"],
        "data-resources": ["data_in", "sentinel_data"],
        "advanced": ["w_ec2", "r_ec2", "sentinel_mgmt", "s3_put_w"],
    }
    buckets = {"default": b_default, "write-only": b_wo, "exclude-kms": b_excl,
               "data-resources": b_data, "advanced": b_adv}
    for label, bucket in buckets.items():
        bucket.wait_for(eid[k] for k in expect[label])
    for label, bucket in buckets.items():
        assert_exactly(bucket, candidates, (eid[k] for k in expect[label]), label)

    # Nothing the selectors exclude is in a bucket at all (self-audit records included).
    for r in b_default.records():
        assert r.get("eventCategory") != "Data", r
    for r in b_wo.records():
        assert r.get("readOnly") is False, f"write-only trail got {r}"
    for r in b_excl.records():
        assert r.get("eventSource") != "kms.amazonaws.com", r
    for r in b_data.records():
        assert r.get("eventCategory") == "Data", r
        assert any(x.get("type") == "AWS::S3::Object" and x.get("ARN", "").startswith(data_prefix)
                   for x in r.get("resources", [])), r
    for r in b_adv.records():
        ok = r.get("eventCategory") == "Management" and (
            r.get("eventSource") == "ec2.amazonaws.com"
            or (r.get("readOnly") is False and r.get("eventName", "").startswith(put_prefix)))
        assert ok, f"advanced-selector trail got {r}"


# ---------------------------------------------------------------------------
# 4. Region scope and global service events
# ---------------------------------------------------------------------------


def test_single_and_multi_region_and_global_service_events(server, dl):
    b_single, b_multi, b_noglobal = dl.bucket("single"), dl.bucket("multi"), dl.bucket("noglob")
    dl.trail(b_single, "single")
    dl.trail(b_multi, "multi", IsMultiRegionTrail=True)
    dl.trail(b_noglobal, "noglob", IncludeGlobalServiceEvents=False)

    ev = {
        "ec2_away": ec2_event("RunInstances", region=OTHER),
        "ec2_away_r": ec2_event("DescribeVolumes", read_only=True, region=OTHER),
        "iam_home": make_record(eventSource="iam.amazonaws.com", eventName="CreateRole", resources=[]),
        "sts_home": make_record(eventSource="sts.amazonaws.com", eventName="AssumeRole", readOnly=True,
                                resources=[]),
        "iam_away": make_record(eventSource="iam.amazonaws.com", eventName="CreateRole", resources=[],
                                awsRegion=OTHER),
    }
    ingest(server, list(ev.values()))
    ev["ec2_home"] = ec2_event("RunInstances")
    ingest(server, [ev["ec2_home"]])
    eid = {k: v["eventID"] for k, v in ev.items()}
    candidates = {v["eventID"]: v for v in ev.values()}

    expect = {
        "single": ["iam_home", "sts_home", "ec2_home"],
        "multi": list(ev),
        "noglobal": ["ec2_home"],
    }
    buckets = {"single": b_single, "multi": b_multi, "noglobal": b_noglobal}
    for label, bucket in buckets.items():
        bucket.wait_for(eid[k] for k in expect[label])
    for label, bucket in buckets.items():
        assert_exactly(bucket, candidates, (eid[k] for k in expect[label]), label)

    # Where the eu-west-1 events went in the multi-region trail.
    idx = b_multi.index()
    away_re = re.compile(
        "^" + re.escape(f"AWSLogs/{ACCOUNT_ID}/CloudTrail/{OTHER}/") + r"\d{4}/\d{2}/\d{2}/"
        + re.escape(f"{ACCOUNT_ID}_CloudTrail_{OTHER}_") + r"\d{8}T\d{4}Z_[A-Za-z0-9]{16}\.json\.gz$")
    for k in ("ec2_away", "ec2_away_r", "iam_away"):
        key = idx[eid[k]][0].key
        assert away_re.match(key), f"{k}: {key}"
    for k in ("ec2_home", "iam_home", "sts_home"):
        assert f"/CloudTrail/{HOME}/" in idx[eid[k]][0].key
    # The single-region trails have no files outside their home region.
    for bucket in (b_single, b_noglobal):
        for key, f in bucket.scan().items():
            assert f.region == HOME, key
    for r in b_noglobal.records():
        assert r.get("eventSource") not in {
            "iam.amazonaws.com", "sts.amazonaws.com", "cloudfront.amazonaws.com", "route53.amazonaws.com",
            "organizations.amazonaws.com", "waf.amazonaws.com", "shield.amazonaws.com"}, r


# ---------------------------------------------------------------------------
# 5. Organization trails
# ---------------------------------------------------------------------------


def test_organization_trail_delivers_member_accounts(server, dl):
    b_org, b_plain = dl.bucket("org"), dl.bucket("plain")
    org_trail = dl.trail(b_org, "org", IsOrganizationTrail=True)
    dl.trail(b_plain, "plain")
    assert dl.ct.get_trail(Name=org_trail)["Trail"]["IsOrganizationTrail"] is True

    ev = {
        "member": ec2_event("RunInstances", account=MEMBER),
        "member_r": ec2_event("DescribeInstances", read_only=True, account=MEMBER),
        "outsider": ec2_event("RunInstances", account=OUTSIDER),
    }
    ingest(server, list(ev.values()))
    ev["mgmt"] = ec2_event("RunInstances")
    ingest(server, [ev["mgmt"]])
    eid = {k: v["eventID"] for k, v in ev.items()}
    candidates = {v["eventID"]: v for v in ev.values()}

    b_org.wait_for([eid["member"], eid["member_r"], eid["mgmt"]])
    b_plain.wait_for([eid["mgmt"]])
    assert_exactly(b_org, candidates, [eid["member"], eid["member_r"], eid["mgmt"]], "organization trail")
    assert_exactly(b_plain, candidates, [eid["mgmt"]], "normal trail")

    idx = b_org.index()
    for k, account in (("member", MEMBER), ("member_r", MEMBER), ("mgmt", ACCOUNT_ID)):
        key = idx[eid[k]][0].key
        assert re.match(
            "^" + re.escape(f"AWSLogs/{ORG_ID}/{account}/CloudTrail/{HOME}/") + r"\d{4}/\d{2}/\d{2}/"
            + re.escape(f"{account}_CloudTrail_{HOME}_") + r"\d{8}T\d{4}Z_[A-Za-z0-9]{16}\.json\.gz$", key
        ), f"{k}: {key}"
    assert idx[eid["member"]][0].key != idx[eid["mgmt"]][0].key, "one file per account"
    for key in b_plain.scan():
        assert key.startswith(f"AWSLogs/{ACCOUNT_ID}/CloudTrail/"), key
    for r in b_plain.records():
        assert r["recipientAccountId"] == ACCOUNT_ID, r
    for key, f in b_org.scan().items():
        assert f.account in (ACCOUNT_ID, MEMBER), key


# ---------------------------------------------------------------------------
# 6. Insights
# ---------------------------------------------------------------------------


def test_insights_go_to_trails_with_matching_insight_selectors(server, dl):
    b_rate, b_err, b_none = dl.bucket("insrate"), dl.bucket("inserr"), dl.bucket("insnone")
    dl.trail(b_rate, "insrate", insights=[{"InsightType": "ApiCallRateInsight"}])
    dl.trail(b_err, "inserr", insights=[{"InsightType": "ApiErrorRateInsight"}])
    dl.trail(b_none, "insnone")

    rate = make_insight_record()
    err = make_insight_record()
    err["insightDetails"] = dict(err["insightDetails"], insightType="ApiErrorRateInsight",
                                 errorCode="AccessDenied")
    ev = {"rate": rate, "err": err}
    ingest(server, [rate, err])
    ev["sentinel"] = ec2_event("RunInstances")
    ingest(server, [ev["sentinel"]])
    eid = {k: v["eventID"] for k, v in ev.items()}
    candidates = {v["eventID"]: v for v in ev.values()}

    expect = {"rate": (b_rate, ["rate", "sentinel"]), "err": (b_err, ["err", "sentinel"]),
              "none": (b_none, ["sentinel"])}
    for _label, (bucket, keys) in expect.items():
        bucket.wait_for(eid[k] for k in keys)
    for label, (bucket, keys) in expect.items():
        assert_exactly(bucket, candidates, (eid[k] for k in keys), label)

    insight_re = re.compile(
        "^" + re.escape(f"AWSLogs/{ACCOUNT_ID}/CloudTrail-Insight/{HOME}/") + r"\d{4}/\d{2}/\d{2}/"
        + re.escape(f"{ACCOUNT_ID}_CloudTrail-Insight_{HOME}_") + r"\d{8}T\d{4}Z_[A-Za-z0-9]{16}\.json\.gz$")
    for bucket, k in ((b_rate, "rate"), (b_err, "err")):
        f = bucket.index()[eid[k]][0]
        assert insight_re.match(f.key), f.key
        assert [r["eventID"] for r in f.records] == [eid[k]], f"insight file {f.key} holds {f.records}"
        assert f"/CloudTrail/{HOME}/" in bucket.index()[eid["sentinel"]][0].key
    assert not any(f.kind == "CloudTrail-Insight" for f in b_none.scan().values())


# ---------------------------------------------------------------------------
# 7. Many batches, exactly once
# ---------------------------------------------------------------------------


def test_many_batches_exactly_once(server, dl):
    bucket = dl.bucket("many")
    dl.trail(bucket, "many")
    tag = uid()
    sent: dict[str, dict] = {}
    start = time.monotonic()
    for batch in range(20):
        records = [make_record(eventName=f"Bulk{tag}", requestParameters={"batch": batch, "i": i})
                   for i in range(100)]
        for eid in ingest(server, records):
            assert eid not in sent
        sent.update(by_id(records))
        time.sleep(max(0.0, start + 0.15 * (batch + 1) - time.monotonic()))
    assert len(sent) == 2000
    idx = bucket.wait_for(sent, timeout=30)  # index() fails on any duplicate
    files = {idx[e][0].key for e in sent}
    assert len(files) > 1, f"2000 events over ~3 s went into a single file: {files}"
    counts: dict[str, int] = {}
    for f in bucket.scan().values():
        for r in f.records:
            counts[r["eventID"]] = counts.get(r["eventID"], 0) + 1
    assert all(counts.get(e) == 1 for e in sent)
    for e, record in list(sent.items())[::97]:
        assert_record_roundtrip(json.dumps(idx[e][1]), record)


# ---------------------------------------------------------------------------
# 8. GetTrailStatus, a missing bucket, recovery
# ---------------------------------------------------------------------------


def test_status_missing_bucket_and_recovery(server, dl):
    bucket, control = dl.bucket("status"), dl.bucket("statusctl")
    name = dl.trail(bucket, "status")
    dl.trail(control, "statusctl")
    tag = uid()

    first = ingest(server, [make_record(eventName=f"First{tag}") for _ in range(3)])
    bucket.wait_for(first)
    control.wait_for(first)

    def delivered_ok():
        parsed, raw = trail_status(server, name)
        return (parsed, raw) if "LatestDeliveryTime" in parsed and "LatestDeliveryError" not in raw else None

    st, raw = poll("a successful delivery in GetTrailStatus", delivered_ok)
    assert st["IsLogging"] is True
    assert isinstance(st["LatestDeliveryTime"], dt.datetime), st
    assert abs(st["LatestDeliveryTime"].timestamp() - time.time()) < 60, st
    assert isinstance(st.get("LatestDeliveryAttemptTime"), str) and st["LatestDeliveryAttemptTime"], st
    assert isinstance(st.get("LatestDeliveryAttemptSucceeded"), str) and st["LatestDeliveryAttemptSucceeded"], st
    for member in ("LatestDeliveryAttemptTime", "LatestDeliveryAttemptSucceeded"):
        t = parse_event_time(st[member]).timestamp()
        assert abs(t - time.time()) < 60, (member, st)
    # Let the self-audit records of those GetTrailStatus calls be delivered too, so that no
    # delivery is in flight when the directory goes away.
    calls = STATUS_CALLS[name]
    poll("the GetTrailStatus records in the bucket",
         lambda: len(audit_records(bucket.records(), "GetTrailStatus", name)) >= calls)

    # Remove the bucket while the trail is logging.
    deadline = time.monotonic() + 10
    while bucket.path.exists():
        shutil.rmtree(bucket.path, ignore_errors=True)
        assert time.monotonic() < deadline, "could not remove the bucket directory"
    removed_at = time.time()
    bucket.forget()

    pending = []
    for i in range(3):
        r = server.ingest([make_record(eventName=f"Pending{tag}", requestParameters={"i": i})])
        assert r.status_code == 200, f"ingest failed while a bucket is missing: {r.status_code} {r.text[:500]}"
        pending += r.json()["EventIds"]

    def failing():
        parsed, raw = trail_status(server, name)
        return (parsed, raw) if raw.get("LatestDeliveryError") is not None else None

    st, raw = poll("LatestDeliveryError while the bucket is missing", failing)
    assert st["LatestDeliveryError"] == "NoSuchBucket", st
    assert st["IsLogging"] is True
    assert st["LatestDeliveryTime"].timestamp() <= removed_at, (st, removed_at)
    last_ok = st["LatestDeliveryTime"]
    attempt1 = st["LatestDeliveryAttemptTime"]

    # Retries go on (attempt time moves) and keep failing.
    def attempted_again():
        parsed, raw = trail_status(server, name)
        return (parsed, raw) if parsed.get("LatestDeliveryAttemptTime") != attempt1 else None

    st, raw = poll("LatestDeliveryAttemptTime to move on while failing", attempted_again)
    assert st["LatestDeliveryError"] == "NoSuchBucket", st
    assert st["LatestDeliveryTime"] == last_ok, "LatestDeliveryTime moved without a delivery"

    # The server does not make the bucket itself, and other trails go on.
    more = ingest(server, [make_record(eventName=f"More{tag}") for _ in range(2)])
    pending += more
    control.wait_for(pending)
    assert not bucket.path.exists(), "the server recreated the removed bucket directory"

    # The bucket comes back: everything pending arrives, once; the error clears.
    os.makedirs(bucket.path)
    idx = bucket.wait_for(pending)
    for eid in first:
        assert eid not in idx, f"event {eid}, delivered before the bucket was removed, was delivered again"

    def recovered():
        parsed, raw = trail_status(server, name)
        ok = "LatestDeliveryError" not in raw and parsed["LatestDeliveryTime"].timestamp() > removed_at
        return (parsed, raw) if ok else None

    st, raw = poll("the delivery error to clear after the bucket came back", recovered)
    assert st["IsLogging"] is True
    time.sleep(1.5)
    bucket.index()  # no duplicates after another round
    assert all(e in bucket.index() for e in pending)


# ---------------------------------------------------------------------------
# 9. Notifications
# ---------------------------------------------------------------------------


def check_notification(post: dict, secret: str, topic_arn: str, bucket: Bucket) -> tuple[str, list[str]]:
    """Checks one POST; returns (MessageId, s3ObjectKey)."""
    h = post["headers"]
    body = post["body"]
    assert h.get("content-type") == "text/plain; charset=UTF-8", h
    assert h.get("x-amz-sns-message-type") == "Notification", h
    assert h.get("x-amz-sns-topic-arn") == topic_arn, h
    expected_sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    got_sig = h.get("x-opentrail-signature", "")
    assert hmac.compare_digest(got_sig, expected_sig), f"bad signature {got_sig!r}, expected {expected_sig!r}"
    env = json.loads(body.decode("utf-8"))
    assert set(env) == {"Type", "MessageId", "TopicArn", "Subject", "Message", "Timestamp"}, env
    assert env["Type"] == "Notification"
    assert env["TopicArn"] == topic_arn
    assert env["Subject"] == "[AWS Notification Message]"
    assert isinstance(env["MessageId"], str) and env["MessageId"]
    assert h.get("x-amz-sns-message-id") == env["MessageId"], h
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", env["Timestamp"]), env["Timestamp"]
    ts = dt.datetime.strptime(env["Timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)
    assert bucket.created - STAMP_SLACK_S <= ts.timestamp() <= post["time"] + STAMP_SLACK_S, (env, post["time"])
    assert isinstance(env["Message"], str)
    msg = json.loads(env["Message"])
    assert set(msg) == {"s3Bucket", "s3ObjectKey"}, msg
    assert msg["s3Bucket"] == bucket.name, msg
    keys = msg["s3ObjectKey"]
    assert isinstance(keys, list) and keys and all(isinstance(k, str) for k in keys), msg
    assert len(keys) == len(set(keys)), msg
    files = bucket.scan()
    for k in keys:
        assert k in files, f"notification announces {k!r}, which is not a log file in {bucket.name}"
    # One message per delivery batch, and a batch has one file per (account, region, kind).
    groups = [(files[k].account, files[k].region, files[k].kind) for k in keys]
    assert len(groups) == len(set(groups)), f"one batch with two files of the same group: {keys}"
    assert len({files[k].stamp for k in keys}) == 1, f"files of one batch with different delivery times: {keys}"
    return env["MessageId"], keys


def test_notifications(server, dl):
    ct = dl.ct
    bucket = dl.bucket("notify")
    key_prefix = f"n-{uid()}"
    name = dl.trail(bucket, "notify", SnsTopicName=TOPIC_OK, S3KeyPrefix=key_prefix)
    assert ct.get_trail(Name=name)["Trail"]["SnsTopicARN"] == TOPIC_OK_ARN
    seen_before = {id(p) for p in WEBHOOK.posts_to("/ok-a") + WEBHOOK.posts_to("/ok-b")}

    tag = uid()
    ids = ingest(server, [make_record(eventName=f"Notify{tag}") for _ in range(5)])
    bucket.wait_for(ids)
    time.sleep(1.2)
    ids += ingest(server, [make_record(eventName=f"Notify{tag}") for _ in range(5)])
    bucket.wait_for(ids)
    ct.stop_logging(Name=name)
    # Wait until the StopLogging record (the span's last) is in the bucket, then until every
    # file is announced to both subscribers.
    poll("the StopLogging record in the bucket", lambda: audit_records(bucket.records(), "StopLogging", name))

    def mine(path: str) -> list[dict]:
        return [p for p in WEBHOOK.posts_to(path) if id(p) not in seen_before
                and p["headers"].get("x-amz-sns-topic-arn") == TOPIC_OK_ARN
                and json.loads(json.loads(p["body"])["Message"]).get("s3Bucket") == bucket.name]

    def announced(path: str) -> set[str]:
        return {k for p in mine(path) for k in json.loads(json.loads(p["body"])["Message"])["s3ObjectKey"]}

    files = set(bucket.scan())
    poll("every delivered file to be announced to both subscribers",
         lambda: announced("/ok-a") >= files and announced("/ok-b") >= files)
    time.sleep(1.5)  # any late or duplicate notification would show up now
    files = set(bucket.scan())

    by_subscriber = {}
    for path in ("/ok-a", "/ok-b"):
        posts = mine(path)
        assert posts, f"no notification to {path}"
        messages: dict[str, list[str]] = {}
        for p in posts:
            assert p["status"] == 200
            mid, keys = check_notification(p, SECRET_OK, TOPIC_OK_ARN, bucket)
            assert mid not in messages, f"{path} got message {mid} twice although it answered 200"
            messages[mid] = keys
        all_keys = [k for keys in messages.values() for k in keys]
        assert len(all_keys) == len(set(all_keys)), f"{path}: a file was announced by two messages"
        assert set(all_keys) == files, (
            f"{path}: announced {sorted(set(all_keys))} but the bucket holds {sorted(files)}")
        for k in all_keys:
            assert k.startswith(f"{key_prefix}/AWSLogs/{ACCOUNT_ID}/CloudTrail/"), k
        by_subscriber[path] = messages
    # One message per batch, sent to every subscriber of the topic.
    assert by_subscriber["/ok-a"] == by_subscriber["/ok-b"]

    st, raw = trail_status(server, name)
    assert isinstance(st.get("LatestNotificationTime"), dt.datetime), st
    assert abs(st["LatestNotificationTime"].timestamp() - time.time()) < 60, st
    assert "LatestNotificationError" not in raw, raw
    assert "LatestDeliveryError" not in raw, raw


def test_notification_retried_until_accepted(server, dl):
    assert "/flaky" in WEBHOOK.failing
    bucket = dl.bucket("flaky")
    name = dl.trail(bucket, "flaky", SnsTopicName=TOPIC_FLAKY)
    ids = ingest(server, [make_record(eventName=f"Flaky{uid()}") for _ in range(3)])
    bucket.wait_for(ids)

    failures_wanted = 3

    def failed_ids_now() -> list[str]:
        return [json.loads(p["body"])["MessageId"] for p in WEBHOOK.posts_to("/flaky") if p["status"] == 500]

    # At least N failed posts, and at least one message posted again after failing.
    def failed_and_retried():
        ids = failed_ids_now()
        return len(ids) >= failures_wanted and len(set(ids)) < len(ids)

    def notification_failing():
        parsed, raw = trail_status(server, name)
        return parsed if raw.get("LatestNotificationError") is not None else None

    poll(f"{failures_wanted} failed posts to the flaky subscriber, one message retried", failed_and_retried)
    st = poll("LatestNotificationError while the subscriber fails", notification_failing)
    err = st["LatestNotificationError"]
    assert isinstance(err, str) and err, st
    failed = [p for p in WEBHOOK.posts_to("/flaky") if p["status"] == 500]
    failed_ids = []
    for p in failed:
        mid, _keys = check_notification(p, SECRET_FLAKY, TOPIC_FLAKY_ARN, bucket)
        failed_ids.append(mid)
    # The same message is posted again after a failure.
    assert len(set(failed_ids)) < len(failed_ids), f"no message was retried: {failed_ids}"
    redelivered = {m for m in failed_ids if failed_ids.count(m) > 1}
    first_failed_body = {}
    for p in failed:
        first_failed_body.setdefault(json.loads(p["body"])["MessageId"], p["body"])
    for p in failed:
        mid = json.loads(p["body"])["MessageId"]
        assert p["body"] == first_failed_body[mid], "a retried message differs from the first attempt"

    WEBHOOK.release("/flaky")

    def accepted():
        ok_ids = {json.loads(p["body"])["MessageId"] for p in WEBHOOK.posts_to("/flaky") if p["status"] == 200}
        return set(failed_ids) <= ok_ids

    poll("every failed message to be redelivered and accepted", accepted)
    for p in WEBHOOK.posts_to("/flaky"):
        if p["status"] == 200 and json.loads(p["body"])["MessageId"] in redelivered:
            assert p["body"] == first_failed_body[json.loads(p["body"])["MessageId"]]

    def cleared():
        parsed, raw = trail_status(server, name)
        return parsed if "LatestNotificationError" not in raw and "LatestNotificationTime" in parsed else None

    st = poll("LatestNotificationError to clear", cleared)
    assert isinstance(st["LatestNotificationTime"], dt.datetime)
    # Every file delivered so far is (eventually) announced to the flaky subscriber too.
    dl.ct.stop_logging(Name=name)
    poll("the StopLogging record in the bucket", lambda: audit_records(bucket.records(), "StopLogging", name))
    files = set(bucket.scan())

    def announced():
        return {k for p in WEBHOOK.posts_to("/flaky") if p["status"] == 200
                for k in json.loads(json.loads(p["body"])["Message"])["s3ObjectKey"]}

    poll("every file to be announced", lambda: announced() >= files)
    assert announced() == set(bucket.scan())


# ---------------------------------------------------------------------------
# 10. Restarts in the middle of a stream
# ---------------------------------------------------------------------------


class Stream:
    """Ingests small batches in a thread; remembers which were acknowledged."""

    def __init__(self, server, tag: str):
        self.lock = threading.Lock()
        self.url = f"{server.url}/v1/events"
        self.tag = tag
        self.acked: dict[str, dict] = {}
        self.unacked: dict[str, dict] = {}
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.session = signed_session()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.batch = 0

    def run(self) -> None:
        while not self.stop.is_set():
            records = [make_record(eventName=f"Stream{self.tag}", requestParameters={"batch": self.batch, "i": i})
                       for i in range(10)]
            self.batch += 1
            try:
                r = self.session.post(self.url, json={"Records": records}, timeout=10)
            except requests.RequestException as e:
                with self.lock:
                    self.unacked.update(by_id(records))
                self.errors.append(repr(e)[:200])
                self.session = signed_session()
                time.sleep(0.05)
                continue
            ok = r.status_code == 200 and r.json().get("EventIds") == [x["eventID"] for x in records]
            with self.lock:
                (self.acked if ok else self.unacked).update(by_id(records))
            if not ok:
                self.errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
            time.sleep(0.05)

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def acked_ids(self) -> list[str]:
        with self.lock:
            return list(self.acked)


def test_restarts_during_a_stream(server, dl):
    bucket = dl.bucket("restart")
    name = dl.trail(bucket, "restart")
    stream = Stream(server, uid())
    stream.thread.start()
    try:
        def grow(n: int):
            target = stream.count() + n
            poll(f"{n} more acknowledged events", lambda: stream.count() >= target, timeout=30, interval=0.05)

        grow(100)
        # Let some of them be delivered, so the restart falls between deliveries and plans.
        poll("some stream events delivered", lambda: any(e in bucket.index() for e in stream.acked_ids()))
        grow(50)
        server.restart()
        grow(150)
        # SIGKILLs at different points of the 1 s delivery cadence: between deliveries, while a
        # plan's files are being written, right after a restart while the backlog is delivered.
        for jitter in (0.0, 0.35, 0.7, 0.15):
            time.sleep(jitter)
            server.kill9()
            grow(60)
        grow(100)
    finally:
        stream.stop.set()
        stream.thread.join(timeout=30)
    assert not stream.thread.is_alive()
    acked = dict(stream.acked)
    assert len(acked) >= 600

    idx = bucket.wait_for(acked, timeout=60)  # index() fails on duplicates
    time.sleep(2)
    idx = bucket.index()
    assert all(e in idx for e in acked)
    for e in list(acked)[::53]:
        assert_record_roundtrip(json.dumps(idx[e][1]), acked[e])
    # Unacknowledged records may or may not have been recorded, but never twice (index()).
    st, raw = trail_status(server, name)
    assert st["IsLogging"] is True, st
    assert "LatestDeliveryError" not in raw, raw


# ---------------------------------------------------------------------------
# 11. DeleteTrail
# ---------------------------------------------------------------------------


def test_deleted_trail_stops_delivering(server, dl):
    doomed_bucket, control = dl.bucket("doomed"), dl.bucket("alive")
    doomed = dl.trail(doomed_bucket, "doomed")
    dl.trail(control, "alive")
    tag = uid()
    first = ingest(server, [make_record(eventName=f"BeforeDelete{tag}") for _ in range(3)])
    doomed_bucket.wait_for(first)
    control.wait_for(first)
    # Nothing was recorded after ``first``: the doomed trail has nothing left to deliver.
    snapshot = set(doomed_bucket.scan())

    dl.ct.delete_trail(Name=doomed)
    after = ingest(server, [make_record(eventName=f"AfterDelete{tag}") for _ in range(3)])
    control.wait_for(after)
    time.sleep(2.5)  # more than two delivery rounds
    later = ingest(server, [make_record(eventName=f"AfterDelete{tag}")])
    control.wait_for(later)
    files = set(doomed_bucket.scan())
    assert files == snapshot, f"files delivered after DeleteTrail: {sorted(files - snapshot)}"
    recs = doomed_bucket.records()
    assert not any(r["eventID"] in after + later for r in recs)
    assert audit_records(recs, "DeleteTrail", doomed) == []


# ---------------------------------------------------------------------------
# 12. opentrail logs list / get
# ---------------------------------------------------------------------------


def run_logs_cli(server, *args: str) -> subprocess.CompletedProcess:
    """``opentrail logs ...`` with the server's own settings (data dir, account)."""
    return subprocess.run(
        [server.binary, "logs", *args, "--data-dir", str(server.data_dir)],
        env=server._env(), capture_output=True, text=True, timeout=120,
    )


def test_logs_cli_lists_and_fetches_delivered_files(server, dl, tmp_path):
    bucket = dl.bucket("cli")
    dl.trail(bucket, "cli", IsMultiRegionTrail=True)
    ids = ingest(server, [ec2_event(), ec2_event(), ec2_event(region=OTHER)])
    bucket.wait_for(ids)
    files = bucket.scan()
    assert any(f"/CloudTrail/{OTHER}/" in k for k in files)

    listed = run_logs_cli(server, "list", "--bucket", bucket.name)
    assert listed.returncode == 0, listed.stderr
    keys = [line.split()[1] for line in listed.stdout.splitlines()]
    assert sorted(keys) == sorted(files), "list shows exactly the delivered files"
    sizes = {line.split()[1]: int(line.split()[0]) for line in listed.stdout.splitlines()}
    assert all(sizes[k] == (bucket.path / k).stat().st_size for k in keys)

    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    dest = tmp_path / "fetched"
    got = run_logs_cli(server, "get", "--bucket", bucket.name, "--region", HOME,
                       "--start", today, "--end", today, "--out", str(dest))
    assert got.returncode == 0, got.stderr
    home_keys = sorted(k for k in files if f"/CloudTrail/{HOME}/" in k)
    fetched = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert fetched == home_keys, "get fetches the region's files, keeping their keys as paths"
    for k in fetched:
        assert (dest / k).read_bytes() == (bucket.path / k).read_bytes()
    assert f"fetched {len(home_keys)} files" in got.stdout

    later = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)).strftime("%Y-%m-%dT00:00:00Z")
    none = run_logs_cli(server, "list", "--bucket", bucket.name, "--start", later)
    assert none.returncode == 0, none.stderr
    assert none.stdout.strip() == "", "nothing was delivered after the start time"

    bad = run_logs_cli(server, "list", "--bucket", bucket.name, "--start", "yesterday-ish")
    assert bad.returncode != 0 and "--start" in bad.stderr
    missing = run_logs_cli(server, "list", "--bucket", f"nope-{uid()}")
    assert missing.returncode != 0 and "NoSuchBucket" in missing.stderr
