"""LookupEvents through the real AWS CLI v1, boto3 and raw HTTP.

A module-scoped data set is ingested once into a time window of its own
(roughly 3-5 hours ago) where no other test of this module puts events, so
queries restricted to that window can assert exact results even for
non-unique values such as ``ReadOnly=true``.  Everything else in this module
uses uuid-suffixed user names and/or times outside that window.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from dataclasses import dataclass, field

import pytest
from botocore.exceptions import ClientError

from conftest import (
    ACCOUNT_ID,
    AMZ_JSON,
    access_key,
    assert_record_roundtrip,
    assumed_role_identity,
    attrs,
    aws,
    cloudtrail_client,
    epoch,
    error_code,
    expected_username,
    find_event,
    iam_user_identity,
    iso,
    lookup_all,
    lookup_ids,
    make_insight_record,
    make_record,
    newest_first,
    parse_event_time,
    root_identity,
    to_epoch,
    uid,
    utcnow,
    wait_for_event,
    wait_for_events,
)

HOUR = dt.timedelta(hours=1)
MINUTE = dt.timedelta(minutes=1)


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ct(server):
    return cloudtrail_client(server)


@dataclass
class Dataset:
    u: str
    records: dict[str, dict]
    values: dict[str, str]
    start: dt.datetime  # earliest eventTime in the set
    end: dt.datetime  # latest eventTime in the set
    times: dict[str, dt.datetime] = field(default_factory=dict)

    def ids(self, *labels: str) -> list[str]:
        """EventIds of the labelled records, newest first."""
        return newest_first(self.records[label] for label in labels)

    @property
    def window(self) -> tuple[dt.datetime, dt.datetime]:
        """A window around the data set (and nothing else of this module)."""
        return self.start - MINUTE, self.end + MINUTE

    def labels_between(self, lo: dt.datetime, hi: dt.datetime) -> list[str]:
        return [k for k, t in self.times.items() if lo <= t <= hi]


@pytest.fixture(scope="module")
def dataset(server, ct) -> Dataset:
    u = uid()
    values = {
        "alice": f"alice-{u}",
        "bob": f"bob-{u}",
        "session": f"deploy-session-{u}",
        "key_a": access_key(),
        "key_a2": access_key(),
        "key_b": access_key(),
        "key_root": access_key(),
        "key_session": access_key("ASIA"),
        "bucket": f"logs-{u}",
        "instance1": f"i-0{u}01",
        "instance2": f"i-0{u}02",
        "instance3": f"i-0{u}03",
        "sg": f"sg-0{u}",
        "role": f"Deployer-{u}",
    }
    v = values
    region, acct = "us-east-1", ACCOUNT_ID

    def res(kind: str, name: str) -> dict:
        arn, rtype = {
            "bucket": (f"arn:aws:s3:::{name}", "AWS::S3::Bucket"),
            "instance": (f"arn:aws:ec2:{region}:{acct}:instance/{name}", "AWS::EC2::Instance"),
            "sg": (f"arn:aws:ec2:{region}:{acct}:security-group/{name}", "AWS::EC2::SecurityGroup"),
            "role": (f"arn:aws:iam::{acct}:role/service-role/{name}", "AWS::IAM::Role"),
        }[kind]
        return {"ARN": arn, "accountId": acct, "type": rtype}

    values["bucket_arn"] = res("bucket", v["bucket"])["ARN"]
    values["instance1_arn"] = res("instance", v["instance1"])["ARN"]
    values["role_arn"] = res("role", v["role"])["ARN"]

    alice = lambda key: iam_user_identity(v["alice"], key)  # noqa: E731
    bob = iam_user_identity(v["bob"], v["key_b"])
    root = root_identity(v["key_root"])
    session = assumed_role_identity("DeployRole", v["session"], v["key_session"])

    specs = {
        # label: (identity, source, name, readOnly, resources, requestParameters)
        "E0": (alice(v["key_a"]), "s3.amazonaws.com", "CreateBucket", False,
               [res("bucket", v["bucket"])], {"bucketName": v["bucket"]}),
        "E1": (alice(v["key_a"]), "s3.amazonaws.com", "ListBuckets", True, [], {}),
        "E2": (bob, "ec2.amazonaws.com", "RunInstances", False,
               [res("instance", v["instance1"]), res("sg", v["sg"])],
               {"instanceType": "t3.micro", "minCount": 1, "maxCount": 1}),
        "E3": (bob, "ec2.amazonaws.com", "DescribeInstances", True,
               [res("instance", v["instance1"])],
               {"instancesSet": {"items": [{"instanceId": v["instance1"]}]}}),
        "E4": (root, "iam.amazonaws.com", "CreateRole", False,
               [res("role", v["role"])], {"roleName": v["role"], "path": "/service-role/"}),
        "E5": (session, "ec2.amazonaws.com", "TerminateInstances", False,
               [res("instance", v["instance2"])],
               {"instancesSet": {"items": [{"instanceId": v["instance2"]}]}}),
        "E6": (session, "s3.amazonaws.com", "GetBucketAcl", True,
               [res("bucket", v["bucket"])], {"bucketName": v["bucket"], "acl": ""}),
        "E7": (alice(v["key_a2"]), "iam.amazonaws.com", "ListRoles", True, [], {"maxItems": 100}),
        "E8": (bob, "ec2.amazonaws.com", "RunInstances", False,
               [res("instance", v["instance3"])],
               {"instanceType": "m5.large", "minCount": 2, "maxCount": 2}),
    }
    # Distinct times, deliberately not in label order, ~3-5 hours ago.
    base = utcnow() - 3 * HOUR
    slots = {"E0": 3, "E1": 0, "E2": 7, "E3": 1, "E4": 5, "E5": 8, "E6": 2, "E7": 6, "E8": 4}
    times = {label: base - slot * 14 * MINUTE - slot * dt.timedelta(seconds=7)
             for label, slot in slots.items()}

    records = {}
    for label, (ident, source, name, ro, resources, params) in specs.items():
        records[label] = make_record(
            userIdentity=ident,
            event_time=times[label],
            eventSource=source,
            eventName=name,
            readOnly=ro,
            resources=resources,
            requestParameters=params,
            responseElements=None if ro else {"requestId": str(uuid.uuid4())},
        )

    labels = list(records)
    ids = server.ingest_ok([records[label] for label in labels])
    assert ids == [records[label]["eventID"] for label in labels]
    wait_for_events(ct, ids)
    return Dataset(
        u=u,
        records=records,
        values=values,
        start=min(times.values()),
        end=max(times.values()),
        times=times,
    )


def ingest_user_events(server, ct, n: int, start: dt.datetime, user: str | None = None,
                       step: dt.timedelta = MINUTE) -> tuple[str, list[dict]]:
    """Ingest ``n`` events for a fresh user at start, start+step, ...;
    returns (user, records) once they are all visible."""
    user = user or f"pager-{uid()}"
    key = access_key()
    records = [
        make_record(user_name=user, access_key_id=key, event_time=start + i * step,
                    eventName=f"PutObjectTagging{i}")
        for i in range(n)
    ]
    server.ingest_ok(records)
    wait_for_events(ct, [r["eventID"] for r in records])
    return user, records


# ---------------------------------------------------------------------------
# CLI helpers
# ---------------------------------------------------------------------------


def cli_attr_args(*pairs: tuple[str, str]) -> list[str]:
    if not pairs:
        return []
    return ["--lookup-attributes", *[f"AttributeKey={k},AttributeValue={v}" for k, v in pairs]]


def cli_lookup(server, *pairs: tuple[str, str], start=None, end=None,
               region: str = "us-east-1", extra: tuple = ()) -> dict:
    args = ["cloudtrail", "lookup-events", *cli_attr_args(*pairs)]
    if start is not None:
        args += ["--start-time", start]
    if end is not None:
        args += ["--end-time", end]
    args += list(extra)
    rc, out, err = aws(server, *args, region=region)
    assert rc == 0, f"aws {' '.join(map(str, args))} failed ({rc}): {err}"
    assert isinstance(out, dict) and isinstance(out.get("Events"), list), out
    return out


def cli_ids(server, *pairs, **kw) -> list[str]:
    return [e["EventId"] for e in cli_lookup(server, *pairs, **kw)["Events"]]


# ---------------------------------------------------------------------------
# Attribute lookups
# ---------------------------------------------------------------------------

# (case id, attribute key, value or values-key, expected labels)
ATTRIBUTE_CASES = [
    ("EventId", "EventId", "@E3", ["E3"]),
    ("EventName", "EventName", "RunInstances", ["E2", "E8"]),
    ("ReadOnly-true", "ReadOnly", "true", ["E1", "E3", "E6", "E7"]),
    ("ReadOnly-false", "ReadOnly", "false", ["E0", "E2", "E4", "E5", "E8"]),
    ("Username-iamuser", "Username", "$alice", ["E0", "E1", "E7"]),
    ("Username-root", "Username", "root", ["E4"]),
    ("Username-assumedrole-session", "Username", "$session", ["E5", "E6"]),
    ("ResourceType", "ResourceType", "AWS::EC2::Instance", ["E2", "E3", "E5", "E8"]),
    ("ResourceName-arn", "ResourceName", "$instance1_arn", ["E2", "E3"]),
    ("ResourceName-short-after-slash", "ResourceName", "$instance1", ["E2", "E3"]),
    ("ResourceName-short-after-colon", "ResourceName", "$bucket", ["E0", "E6"]),
    ("ResourceName-bucket-arn", "ResourceName", "$bucket_arn", ["E0", "E6"]),
    ("ResourceName-role-path-arn", "ResourceName", "$role_arn", ["E4"]),
    ("ResourceName-role-short", "ResourceName", "$role", ["E4"]),
    ("EventSource", "EventSource", "ec2.amazonaws.com", ["E2", "E3", "E5", "E8"]),
    ("AccessKeyId", "AccessKeyId", "$key_b", ["E2", "E3", "E8"]),
    ("AccessKeyId-second-key", "AccessKeyId", "$key_a2", ["E7"]),
]


def resolve(ds: Dataset, value: str) -> str:
    if value.startswith("$"):
        return ds.values[value[1:]]
    if value.startswith("@"):
        return ds.records[value[1:]]["eventID"]
    return value


@pytest.mark.parametrize("key,value,labels", [c[1:] for c in ATTRIBUTE_CASES],
                         ids=[c[0] for c in ATTRIBUTE_CASES])
def test_cli_lookup_by_attribute(server, dataset, key, value, labels):
    lo, hi = dataset.window
    got = cli_ids(server, (key, resolve(dataset, value)), start=str(epoch(lo)), end=str(epoch(hi)))
    expected = dataset.ids(*labels)
    assert set(got) == set(expected)
    assert got == expected, "events must be ordered newest first"


@pytest.mark.parametrize("key,value,labels", [c[1:] for c in ATTRIBUTE_CASES],
                         ids=[c[0] for c in ATTRIBUTE_CASES])
def test_boto3_lookup_by_attribute(ct, dataset, key, value, labels):
    lo, hi = dataset.window
    got = lookup_ids(ct, LookupAttributes=attrs((key, resolve(dataset, value))),
                     StartTime=lo, EndTime=hi)
    assert got == dataset.ids(*labels)


def test_lookup_without_time_range_uses_default_window(ct, dataset):
    # No StartTime/EndTime: the recent past (hours ago) is included.
    got = lookup_ids(ct, LookupAttributes=attrs(("Username", dataset.values["alice"])))
    assert got == dataset.ids("E0", "E1", "E7")


def test_attribute_values_must_match_exactly(ct, dataset):
    lo, hi = dataset.window
    alice = dataset.values["alice"]
    for near_miss in (alice[:-1], alice + "x", "alice"):
        assert lookup_ids(ct, LookupAttributes=attrs(("Username", near_miss)),
                          StartTime=lo, EndTime=hi) == [], near_miss
    # Short-name matching of ResourceName is about the last ARN segment only.
    assert lookup_ids(ct, LookupAttributes=attrs(("ResourceName", "instance")),
                      StartTime=lo, EndTime=hi) == []


# Several attributes are ANDed (an OpenTrail extension; CloudTrail rejects
# more than one attribute).
AND_CASES = [
    ("user-and-readonly", [("Username", "$alice"), ("ReadOnly", "true")], ["E1", "E7"]),
    ("user-and-name", [("Username", "$bob"), ("EventName", "RunInstances")], ["E2", "E8"]),
    ("source-and-resource", [("EventSource", "s3.amazonaws.com"), ("ResourceName", "$bucket")],
     ["E0", "E6"]),
    ("three-way", [("EventSource", "ec2.amazonaws.com"), ("ReadOnly", "false"),
                   ("ResourceType", "AWS::EC2::Instance")], ["E2", "E5", "E8"]),
    ("disjoint", [("Username", "$alice"), ("EventName", "RunInstances")], []),
]


@pytest.mark.parametrize("pairs,labels", [c[1:] for c in AND_CASES], ids=[c[0] for c in AND_CASES])
def test_cli_several_attributes_are_anded(server, dataset, pairs, labels):
    lo, hi = dataset.window
    resolved = [(k, resolve(dataset, v)) for k, v in pairs]
    got = cli_ids(server, *resolved, start=str(epoch(lo)), end=str(epoch(hi)))
    assert got == dataset.ids(*labels)


@pytest.mark.parametrize("pairs,labels", [c[1:] for c in AND_CASES], ids=[c[0] for c in AND_CASES])
def test_boto3_several_attributes_are_anded(ct, dataset, pairs, labels):
    lo, hi = dataset.window
    resolved = [(k, resolve(dataset, v)) for k, v in pairs]
    got = lookup_ids(ct, LookupAttributes=attrs(*resolved), StartTime=lo, EndTime=hi)
    assert got == dataset.ids(*labels)


# ---------------------------------------------------------------------------
# Response shape
# ---------------------------------------------------------------------------

ALLOWED_EVENT_KEYS = {
    "EventId", "EventName", "ReadOnly", "AccessKeyId", "EventTime", "EventSource",
    "Username", "Resources", "CloudTrailEvent",
}


def assert_event_shape(ev: dict, record: dict, wire_time: bool) -> None:
    assert set(ev) <= ALLOWED_EVENT_KEYS, f"unexpected keys {set(ev) - ALLOWED_EVENT_KEYS}"
    assert ev["EventId"] == record["eventID"]
    assert ev["EventName"] == record["eventName"]
    assert ev["ReadOnly"] == ("true" if record["readOnly"] else "false")
    assert isinstance(ev["ReadOnly"], str)
    assert ev["AccessKeyId"] == record["userIdentity"]["accessKeyId"]
    assert ev["EventSource"] == record["eventSource"]
    assert ev["Username"] == expected_username(record)
    if wire_time:
        # AWS JSON 1.1 timestamps are epoch seconds (a JSON number).
        assert isinstance(ev["EventTime"], (int, float)) and not isinstance(ev["EventTime"], bool), \
            f"EventTime on the wire should be epoch seconds, got {ev['EventTime']!r}"
    assert to_epoch(ev["EventTime"]) == epoch(parse_event_time(record["eventTime"]))
    expected_resources = [{"ResourceType": r["type"], "ResourceName": r["ARN"]}
                          for r in record["resources"]]
    got_resources = ev.get("Resources", [])
    assert isinstance(got_resources, list)
    key = lambda r: (r.get("ResourceType", ""), r.get("ResourceName", ""))  # noqa: E731
    assert sorted(got_resources, key=key) == sorted(expected_resources, key=key)
    assert_record_roundtrip(ev["CloudTrailEvent"], record)


def test_cli_response_shape(server, dataset):
    lo, hi = dataset.window
    out = cli_lookup(server, start=str(epoch(lo)), end=str(epoch(hi)))
    assert "NextToken" not in out
    by_id = {r["eventID"]: r for r in dataset.records.values()}
    got = [e["EventId"] for e in out["Events"]]
    assert got == newest_first(dataset.records.values())
    for ev in out["Events"]:
        assert_event_shape(ev, by_id[ev["EventId"]], wire_time=True)


def test_boto3_response_shape(ct, dataset):
    lo, hi = dataset.window
    resp = ct.lookup_events(StartTime=lo, EndTime=hi)
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert resp["ResponseMetadata"]["RequestId"]
    assert "NextToken" not in resp
    by_id = {r["eventID"]: r for r in dataset.records.values()}
    assert [e["EventId"] for e in resp["Events"]] == newest_first(dataset.records.values())
    for ev in resp["Events"]:
        assert isinstance(ev["EventTime"], dt.datetime)
        assert_event_shape(ev, by_id[ev["EventId"]], wire_time=False)


def test_resource_name_is_full_arn_even_when_found_by_short_name(ct, dataset):
    lo, hi = dataset.window
    events = lookup_all(ct, LookupAttributes=attrs(("ResourceName", dataset.values["role"])),
                        StartTime=lo, EndTime=hi)
    assert [e["EventId"] for e in events] == dataset.ids("E4")
    assert events[0]["Resources"] == [
        {"ResourceType": "AWS::IAM::Role", "ResourceName": dataset.values["role_arn"]}
    ]


# ---------------------------------------------------------------------------
# Time ranges
# ---------------------------------------------------------------------------


def sorted_times(ds: Dataset) -> list[dt.datetime]:
    return sorted(ds.times.values())


def test_cli_time_range_epoch_seconds_inclusive(server, dataset):
    ts = sorted_times(dataset)
    lo, hi = ts[2], ts[6]
    got = cli_ids(server, start=str(epoch(lo)), end=str(epoch(hi)))
    expected = dataset.ids(*dataset.labels_between(lo, hi))
    assert len(expected) == 5
    assert got == expected


def test_cli_time_range_iso_strings_inclusive(server, dataset):
    ts = sorted_times(dataset)
    lo, hi = ts[1], ts[4]
    got = cli_ids(server, start=iso(lo), end=iso(hi))
    expected = dataset.ids(*dataset.labels_between(lo, hi))
    assert len(expected) == 4
    assert got == expected


def test_cli_time_range_excludes_events_just_outside(server, dataset):
    ts = sorted_times(dataset)
    lo, hi = ts[2] + dt.timedelta(seconds=1), ts[6] - dt.timedelta(seconds=1)
    got = cli_ids(server, start=str(epoch(lo)), end=str(epoch(hi)))
    expected = dataset.ids(*dataset.labels_between(lo, hi))
    assert len(expected) == 3
    assert got == expected


def test_boto3_time_range_single_instant(ct, dataset):
    t = sorted_times(dataset)[3]
    [label] = dataset.labels_between(t, t)
    assert lookup_ids(ct, StartTime=t, EndTime=t) == dataset.ids(label)


def test_boto3_start_time_only(ct, dataset):
    alice = dataset.values["alice"]
    t = dataset.times["E1"]
    got = lookup_ids(ct, LookupAttributes=attrs(("Username", alice)), StartTime=t)
    expected = [label for label in ("E0", "E1", "E7") if dataset.times[label] >= t]
    assert got == dataset.ids(*expected)
    assert dataset.records["E1"]["eventID"] in got


def test_boto3_end_time_only(ct, dataset):
    alice = dataset.values["alice"]
    t = dataset.times["E0"]
    got = lookup_ids(ct, LookupAttributes=attrs(("Username", alice)), EndTime=t)
    expected = [label for label in ("E0", "E1", "E7") if dataset.times[label] <= t]
    assert got == dataset.ids(*expected)
    assert dataset.records["E0"]["eventID"] in got


def test_cli_time_range_combined_with_attribute(server, dataset):
    bob = dataset.values["bob"]
    lo, hi = dataset.times["E3"], dataset.times["E8"]
    lo, hi = min(lo, hi), max(lo, hi)
    got = cli_ids(server, ("Username", bob), start=iso(lo), end=str(epoch(hi)))
    expected = [label for label in ("E2", "E3", "E8") if lo <= dataset.times[label] <= hi]
    assert got == dataset.ids(*expected)


# ---------------------------------------------------------------------------
# Paging
# ---------------------------------------------------------------------------


def cli_walk(server, user: str, extra: list[str]) -> list[list[str]]:
    pages: list[list[str]] = []
    token = None
    while True:
        args = ["cloudtrail", "lookup-events", *cli_attr_args(("Username", user)), *extra]
        if token:
            args += ["--starting-token", token]
        rc, out, err = aws(server, *args)
        assert rc == 0, f"aws {' '.join(args)} failed ({rc}): {err}"
        pages.append([e["EventId"] for e in out["Events"]])
        token = out.get("NextToken")
        if not token:
            return pages
        assert len(pages) < 20, "paging does not terminate"


def test_cli_max_items_and_starting_token(server, ct):
    user, records = ingest_user_events(server, ct, 7, utcnow() - 10 * HOUR)
    pages = cli_walk(server, user, ["--max-items", "3"])
    assert [len(p) for p in pages] == [3, 3, 1]
    flat = [i for p in pages for i in p]
    assert len(flat) == len(set(flat)), "duplicate events across pages"
    assert flat == newest_first(records)


def test_cli_page_size_walks_server_tokens(server, ct):
    user, records = ingest_user_events(server, ct, 7, utcnow() - 10 * HOUR + 30 * MINUTE)
    pages = cli_walk(server, user, ["--page-size", "2", "--max-items", "3"])
    assert all(len(p) <= 3 for p in pages)
    flat = [i for p in pages for i in p]
    assert len(flat) == len(set(flat)), "duplicate events across pages"
    assert flat == newest_first(records)


def test_boto3_paginator_page_size_2(server, ct):
    user, records = ingest_user_events(server, ct, 7, utcnow() - 9 * HOUR)
    paginator = ct.get_paginator("lookup_events")
    pages = list(paginator.paginate(LookupAttributes=attrs(("Username", user)),
                                    PaginationConfig={"PageSize": 2}))
    assert len(pages) >= 4
    for page in pages[:-1]:
        assert 1 <= len(page["Events"]) <= 2
        assert page.get("NextToken")
    assert len(pages[-1]["Events"]) <= 2
    assert "NextToken" not in pages[-1]
    flat = [e["EventId"] for p in pages for e in p["Events"]]
    assert len(flat) == len(set(flat)), "duplicate events across pages"
    assert flat == newest_first(records)


def test_default_max_results_is_50(server, ct):
    user, records = ingest_user_events(server, ct, 55, utcnow() - 11 * HOUR,
                                       step=dt.timedelta(seconds=5))
    first = ct.lookup_events(LookupAttributes=attrs(("Username", user)))
    assert len(first["Events"]) == 50
    assert first.get("NextToken")
    second = ct.lookup_events(LookupAttributes=attrs(("Username", user)),
                              NextToken=first["NextToken"])
    assert "NextToken" not in second
    flat = [e["EventId"] for e in first["Events"] + second["Events"]]
    assert flat == newest_first(records)


def test_max_results_50_is_accepted(server, ct):
    user, records = ingest_user_events(server, ct, 3, utcnow() - 11 * HOUR + 20 * MINUTE)
    resp = ct.lookup_events(LookupAttributes=attrs(("Username", user)), MaxResults=50)
    assert [e["EventId"] for e in resp["Events"]] == newest_first(records)
    resp = ct.lookup_events(LookupAttributes=attrs(("Username", user)), MaxResults=1)
    assert [e["EventId"] for e in resp["Events"]] == newest_first(records)[:1]
    assert resp.get("NextToken")


@pytest.mark.parametrize("position", ["newer", "between", "older"])
def test_paging_is_stable_when_events_arrive_between_pages(server, ct, position):
    start = utcnow() - 8 * HOUR
    user, records = ingest_user_events(server, ct, 6, start, step=2 * MINUTE)
    params = {"LookupAttributes": attrs(("Username", user)), "MaxResults": 2}

    first = ct.lookup_events(**params)
    walked = [e["EventId"] for e in first["Events"]]
    token = first.get("NextToken")
    assert token, "6 events with MaxResults=2 must give a NextToken"

    # New events for the same user, placed relative to the existing ones.
    offsets = {
        "newer": [13 * MINUTE, 15 * MINUTE],  # after every existing event
        "between": [3 * MINUTE, 5 * MINUTE],  # between existing events
        "older": [-5 * MINUTE, -3 * MINUTE],  # before every existing event
    }[position]
    late = [make_record(user_name=user, access_key_id=records[0]["userIdentity"]["accessKeyId"],
                        event_time=start + off, eventName="LateArrival") for off in offsets]
    server.ingest_ok(late)
    wait_for_events(ct, [r["eventID"] for r in late])

    while token:
        page = ct.lookup_events(NextToken=token, **params)
        walked.extend(e["EventId"] for e in page["Events"])
        token = page.get("NextToken")
        assert len(walked) < 100

    assert walked == newest_first(records), \
        "a paging walk must return exactly the events that existed at its first page"

    # A fresh walk sees everything, including the late arrivals.
    assert lookup_ids(ct, **params) == newest_first(records + late)


def test_next_token_can_be_reused_with_same_parameters(server, ct):
    user, records = ingest_user_events(server, ct, 5, utcnow() - 7 * HOUR)
    params = {"LookupAttributes": attrs(("Username", user)), "MaxResults": 2}
    token = ct.lookup_events(**params)["NextToken"]
    a = ct.lookup_events(NextToken=token, **params)
    b = ct.lookup_events(NextToken=token, **params)
    assert [e["EventId"] for e in a["Events"]] == [e["EventId"] for e in b["Events"]]
    assert [e["EventId"] for e in a["Events"]] == newest_first(records)[2:4]


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def assert_client_error(exc_info, code: str) -> None:
    err = exc_info.value
    assert isinstance(err, ClientError)
    assert err.response["Error"]["Code"] == code, err.response
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert err.response["Error"].get("Message"), "error responses carry a Message"


def test_error_unknown_attribute_key(ct):
    with pytest.raises(ClientError) as ei:
        ct.lookup_events(LookupAttributes=[{"AttributeKey": "Bogus", "AttributeValue": "x"}])
    assert_client_error(ei, "InvalidLookupAttributesException")


def test_error_start_after_end(ct):
    now = utcnow()
    with pytest.raises(ClientError) as ei:
        ct.lookup_events(StartTime=now, EndTime=now - HOUR)
    assert_client_error(ei, "InvalidTimeRangeException")


def test_cli_error_start_after_end(server):
    now = utcnow()
    rc, out, err = aws(server, "cloudtrail", "lookup-events",
                       "--start-time", str(epoch(now)), "--end-time", str(epoch(now - HOUR)))
    assert rc != 0
    assert "InvalidTimeRangeException" in err


def test_error_max_results_51(ct):
    with pytest.raises(ClientError) as ei:
        ct.lookup_events(MaxResults=51)
    assert_client_error(ei, "InvalidMaxResultsException")


@pytest.mark.parametrize("value", [0, 51, -1])
def test_error_max_results_out_of_range_raw_http(server, value):
    # botocore refuses MaxResults=0 client-side (min 1), hence raw HTTP.
    r = server.call("LookupEvents", {"MaxResults": value})
    assert r.status_code == 400, r.text
    assert error_code(r.json()["__type"]) == "InvalidMaxResultsException"


def test_error_garbage_next_token(ct):
    with pytest.raises(ClientError) as ei:
        ct.lookup_events(NextToken="this-is-not-a-token")
    assert_client_error(ei, "InvalidNextTokenException")


def test_error_next_token_with_different_parameters(server, ct):
    user, _ = ingest_user_events(server, ct, 3, utcnow() - 6 * HOUR + 10 * MINUTE)
    other, _ = ingest_user_events(server, ct, 3, utcnow() - 6 * HOUR + 20 * MINUTE)
    token = ct.lookup_events(LookupAttributes=attrs(("Username", user)), MaxResults=1)["NextToken"]
    with pytest.raises(ClientError) as ei:
        ct.lookup_events(LookupAttributes=attrs(("Username", other)), MaxResults=1, NextToken=token)
    assert_client_error(ei, "InvalidNextTokenException")
    with pytest.raises(ClientError) as ei:
        ct.lookup_events(LookupAttributes=attrs(("EventName", "PutObjectTagging0")),
                         MaxResults=1, NextToken=token)
    assert_client_error(ei, "InvalidNextTokenException")


def test_error_bad_event_category(ct):
    with pytest.raises(ClientError) as ei:
        ct.lookup_events(EventCategory="bogus")
    assert_client_error(ei, "InvalidEventCategoryException")


# ---------------------------------------------------------------------------
# Event categories: insights and data events
# ---------------------------------------------------------------------------


def wait_for_insight(ct, event_id: str, timeout: float = 2.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        events = ct.lookup_events(EventCategory="insight",
                                  LookupAttributes=attrs(("EventId", event_id)))["Events"]
        if events:
            return events[0]
        if time.monotonic() > deadline:
            pytest.fail(f"insight event {event_id} not visible after {timeout} s")
        time.sleep(0.05)


def test_insight_events_only_with_insight_category(server, ct):
    t = utcnow() - 12 * HOUR
    insight = make_insight_record(event_time=t)
    mgmt = make_record(user_name=f"insight-neighbour-{uid()}", event_time=t + dt.timedelta(seconds=1))
    ids = server.ingest_ok([insight, mgmt])
    assert ids == [insight["eventID"], mgmt["eventID"]]
    wait_for_event(ct, mgmt["eventID"])

    ev = wait_for_insight(ct, insight["eventID"])
    assert ev["EventId"] == insight["eventID"]
    assert_record_roundtrip(ev["CloudTrailEvent"], insight)

    # Without EventCategory, insight events are not returned ...
    assert find_event(ct, insight["eventID"]) is None
    window = {"StartTime": t - MINUTE, "EndTime": t + MINUTE}
    plain = lookup_ids(ct, **window)
    assert mgmt["eventID"] in plain and insight["eventID"] not in plain

    # ... and with it, only insight events are.
    assert ct.lookup_events(EventCategory="insight",
                            LookupAttributes=attrs(("EventId", mgmt["eventID"])))["Events"] == []
    insights = lookup_all(ct, EventCategory="insight", **window)
    assert [e["EventId"] for e in insights] == [insight["eventID"]]
    everything = lookup_all(ct, EventCategory="insight")
    assert insight["eventID"] in [e["EventId"] for e in everything]
    for e in everything:
        assert json.loads(e["CloudTrailEvent"]).get("eventCategory") == "Insight"


def test_cli_event_category_insight(server, ct):
    t = utcnow() - 12 * HOUR + 10 * MINUTE
    insight = make_insight_record(event_time=t)
    server.ingest_ok([insight])
    wait_for_insight(ct, insight["eventID"])
    out = cli_lookup(server, ("EventId", insight["eventID"]), extra=("--event-category", "insight"))
    assert [e["EventId"] for e in out["Events"]] == [insight["eventID"]]
    assert cli_ids(server, ("EventId", insight["eventID"])) == []


def test_data_events_are_never_returned(server, ct):
    user = f"data-user-{uid()}"
    key = access_key()
    now = utcnow()
    mgmt = make_record(user_name=user, access_key_id=key, event_time=now - 2 * MINUTE)
    data = make_record(
        user_name=user,
        access_key_id=key,
        event_time=now - MINUTE,
        eventName="GetObject",
        eventCategory="Data",
        managementEvent=False,
        readOnly=True,
        requestParameters={"bucketName": "data-bucket", "key": "a/b.txt"},
        resources=[
            {"type": "AWS::S3::Object", "ARN": "arn:aws:s3:::data-bucket/a/b.txt"},
            {"accountId": ACCOUNT_ID, "type": "AWS::S3::Bucket", "ARN": "arn:aws:s3:::data-bucket"},
        ],
    )
    ids = server.ingest_ok([mgmt, data])
    assert ids == [mgmt["eventID"], data["eventID"]]
    wait_for_event(ct, mgmt["eventID"])  # the call has been applied

    assert find_event(ct, data["eventID"]) is None
    assert lookup_ids(ct, LookupAttributes=attrs(("Username", user))) == [mgmt["eventID"]]
    assert lookup_ids(ct, LookupAttributes=attrs(("AccessKeyId", key))) == [mgmt["eventID"]]
    assert ct.lookup_events(EventCategory="insight",
                            LookupAttributes=attrs(("EventId", data["eventID"])))["Events"] == []
    assert cli_ids(server, ("EventId", data["eventID"])) == []


# ---------------------------------------------------------------------------
# Region scoping
# ---------------------------------------------------------------------------


def test_region_scoping(server, ct):
    user = f"regional-{uid()}"
    now = utcnow()
    eu = make_record(user_name=user, event_time=now - 3 * MINUTE, awsRegion="eu-west-1")
    us = make_record(user_name=user, event_time=now - 2 * MINUTE)
    server.ingest_ok([eu, us])
    wait_for_event(cloudtrail_client(server, region="eu-west-1"), eu["eventID"])
    wait_for_event(ct, us["eventID"])

    assert cli_ids(server, ("EventId", eu["eventID"]), region="eu-west-1") == [eu["eventID"]]
    assert cli_ids(server, ("EventId", eu["eventID"]), region="us-east-1") == []
    assert cli_ids(server, ("Username", user), region="eu-west-1") == [eu["eventID"]]
    assert cli_ids(server, ("Username", user), region="us-east-1") == [us["eventID"]]
    assert cli_ids(server, ("Username", user), region="ap-southeast-2") == []

    # Unsigned requests use the server's default region (us-east-1).
    body = {"LookupAttributes": attrs(("Username", user))}
    r = server.call("LookupEvents", body)
    assert r.status_code == 200, r.text
    assert [e["EventId"] for e in r.json()["Events"]] == [us["eventID"]]


# ---------------------------------------------------------------------------
# Visibility
# ---------------------------------------------------------------------------


def test_ingested_event_visible_within_one_second(server, ct):
    for _ in range(3):
        rec = make_record(user_name=f"visible-{uid()}")
        r = server.ingest([rec])
        acked = time.monotonic()
        assert r.status_code == 200, r.text
        while True:
            if find_event(ct, rec["eventID"]) is not None:
                break
            elapsed = time.monotonic() - acked
            assert elapsed < 1.0, f"event not visible {elapsed:.2f} s after the ingest call returned"
            time.sleep(0.05)
        assert time.monotonic() - acked < 1.0


# ---------------------------------------------------------------------------
# Raw AWS JSON 1.1 protocol
# ---------------------------------------------------------------------------


def assert_raw_error(r, code: str) -> dict:
    assert r.status_code == 400, f"HTTP {r.status_code}: {r.text}"
    body = r.json()
    assert isinstance(body.get("__type"), str), body
    assert error_code(body["__type"]) == code, body
    assert isinstance(body.get("Message"), str) and body["Message"], body
    assert r.headers.get("x-amzn-RequestId"), "error responses carry x-amzn-RequestId"
    return body


def test_raw_lookup_events_empty_body(server):
    r = server.call("LookupEvents", {})
    assert r.status_code == 200, r.text
    assert r.headers.get("x-amzn-RequestId")
    assert r.headers.get("Content-Type", "").startswith(AMZ_JSON)
    body = r.json()
    assert isinstance(body.get("Events"), list)
    assert len(body["Events"]) <= 50


def test_raw_request_ids_are_unique(server):
    ids = {server.call("LookupEvents", {}).headers.get("x-amzn-RequestId") for _ in range(5)}
    assert None not in ids and len(ids) == 5


def test_raw_malformed_json(server):
    r = server.call("LookupEvents", raw=b'{"MaxResults": ')
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["__type"].endswith("SerializationException"), body
    assert isinstance(body.get("Message"), str)


def test_raw_unknown_operation(server):
    assert_raw_error(server.call("NoSuchOp", {}), "UnknownOperationException")


def test_raw_known_but_unsupported_operation(server):
    # An operation of the CloudTrail model that this server does not implement yet.
    body = {"Name": f"eds-{uid()}"}
    assert_raw_error(server.call("CreateEventDataStore", body), "UnsupportedOperationException")


def test_raw_error_shapes(server):
    assert_raw_error(server.call("LookupEvents", {"EventCategory": "bogus"}),
                     "InvalidEventCategoryException")
    assert_raw_error(
        server.call("LookupEvents", {"LookupAttributes": [{"AttributeKey": "Nope",
                                                           "AttributeValue": "x"}]}),
        "InvalidLookupAttributesException",
    )
    assert_raw_error(server.call("LookupEvents", {"StartTime": 2000000000, "EndTime": 1000000000}),
                     "InvalidTimeRangeException")
    assert_raw_error(server.call("LookupEvents", {"NextToken": "garbage"}),
                     "InvalidNextTokenException")
