"""The native ingest API: ``POST /v1/events``.

Accepted records are checked through LookupEvents (their ``CloudTrailEvent``
must give back what was sent); rejected calls must be all-or-nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable

import pytest
import requests

from conftest import (
    ACCOUNT_ID,
    OMIT,
    assert_record_roundtrip,
    attrs,
    cloudtrail_client,
    find_event,
    iso,
    json_equal,
    lookup_ids,
    make_insight_record,
    make_record,
    uid,
    utcnow,
    wait_for_event,
    wait_for_events,
)

MAX_RECORDS = 1000
MAX_BODY = 5 * 1024 * 1024
MAX_RECORD = 256 * 1024


@pytest.fixture(scope="module")
def ct(server):
    return cloudtrail_client(server)


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def ndjson(records: list) -> bytes:
    return b"".join(compact(r) + b"\n" for r in records)


def padded_record(target_size: int, **kw: Any) -> dict:
    """A valid record whose compact serialisation is exactly target_size bytes."""
    rec = make_record(**kw)
    rec["requestParameters"] = {"policyDocument": ""}
    rec["requestParameters"]["policyDocument"] = "x" * (target_size - len(compact(rec)))
    assert len(compact(rec)) == target_size
    return rec


def stored_event(ct, event_id: str) -> dict:
    ev = wait_for_event(ct, event_id)
    return json.loads(ev["CloudTrailEvent"])


# ---------------------------------------------------------------------------
# Happy paths
# ---------------------------------------------------------------------------


def test_envelope_happy_path(server, ct):
    now = utcnow()
    records = [make_record(user_name=f"env-{uid()}", event_time=now - dt.timedelta(seconds=i))
               for i in range(3)]
    r = server.ingest(records)
    assert r.status_code == 200, r.text
    assert r.headers.get("Content-Type", "").startswith("application/json")
    body = r.json()
    assert body == {"EventIds": [rec["eventID"] for rec in records]}
    for rec in records:
        ev = wait_for_event(ct, rec["eventID"])
        assert_record_roundtrip(ev["CloudTrailEvent"], rec)


@pytest.mark.parametrize("content_type", ["application/x-ndjson", "text/plain", "application/json"])
def test_ndjson_happy_path(server, ct, content_type):
    records = [make_record(user_name=f"nd-{uid()}") for _ in range(3)]
    r = server.ingest_raw(ndjson(records), content_type=content_type)
    assert r.status_code == 200, r.text
    assert r.json() == {"EventIds": [rec["eventID"] for rec in records]}
    for rec in records:
        ev = wait_for_event(ct, rec["eventID"])
        assert_record_roundtrip(ev["CloudTrailEvent"], rec)


def test_ndjson_single_line_without_trailing_newline(server, ct):
    rec = make_record(user_name=f"nd1-{uid()}")
    r = server.ingest_raw(compact(rec), content_type="application/x-ndjson")
    assert r.status_code == 200, r.text
    assert r.json() == {"EventIds": [rec["eventID"]]}
    assert_record_roundtrip(wait_for_event(ct, rec["eventID"])["CloudTrailEvent"], rec)


def test_omitted_fields_are_filled(server, ct):
    records = []
    for _ in range(2):
        rec = make_record(user_name=f"fill-{uid()}")
        for name in ("eventID", "eventVersion", "eventType", "eventCategory",
                     "recipientAccountId", "managementEvent"):
            del rec[name]
        records.append(rec)
    r = server.ingest(records)
    assert r.status_code == 200, r.text
    ids = r.json()["EventIds"]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert all(isinstance(i, str) and i for i in ids)
    for event_id, sent in zip(ids, records):
        ev = wait_for_event(ct, event_id)
        assert ev["EventId"] == event_id
        stored = assert_record_roundtrip(ev["CloudTrailEvent"], sent)
        assert stored["eventID"] == event_id
        assert stored["eventVersion"] == "1.11"
        assert stored["eventType"] == "AwsApiCall"
        assert stored["eventCategory"] == "Management"
        assert stored["recipientAccountId"] == server.account == ACCOUNT_ID
        assert stored["managementEvent"] is True


def test_client_supplied_values_are_kept(server, ct):
    # (recipientAccountId is left at the server's account: the account a
    # record is filed under is not pinned down by the contract.)
    rec = make_record(user_name=f"keep-{uid()}", eventVersion="1.09",
                      eventType="AwsConsoleAction", managementEvent=True)
    assert server.ingest_ok([rec]) == [rec["eventID"]]
    stored = stored_event(ct, rec["eventID"])
    assert stored["eventID"] == rec["eventID"]
    assert stored["eventVersion"] == "1.09"
    assert stored["eventType"] == "AwsConsoleAction"


def test_unknown_fields_numbers_and_booleans_round_trip(server, ct):
    rec = make_record(user_name=f"rt-{uid()}")
    rec["userIdentity"]["sessionContext"] = {
        "sessionIssuer": {},
        "webIdFederationData": {},
        "attributes": {"creationDate": "2026-01-01T00:00:00Z", "mfaAuthenticated": "true"},
        "futureField": {"nested": [1, {"deeper": False}, None, "s"], "n": -12},
    }
    rec["userIdentity"]["invokedBy"] = "cloudformation.amazonaws.com"
    rec["userIdentity"]["someFutureIdentityField"] = {"a": 1.5, "b": [True, False]}
    rec["requestParameters"] = {
        "int": 42,
        "zero": 0,
        "negative": -7,
        "big": 9007199254740993,  # 2**53 + 1: must not go through a double
        "float": 0.1,
        "tiny": 1e-07,
        "neg_float": -123.456,
        "half": 2.5,
        "yes": True,
        "no": False,
        "nothing": None,
        "empty_obj": {},
        "empty_list": [],
        "unicode": "naïve café ☃ 日本語 \U0001F600",
        "escapes": "quote\" backslash\\ newline\n tab\t nul-ish \u0001",
        "list": [1, 2.25, "three", None, True, {"four": [4]}],
    }
    rec["responseElements"] = {"credentials": {"expiration": 1767225600000, "ok": True}}
    rec["additionalEventData"] = {"SignatureVersion": "SigV4", "bytesTransferredIn": 0.0,
                                  "x-amz-id-2": "abc"}
    rec["tlsDetails"] = {"tlsVersion": "TLSv1.3", "cipherSuite": "TLS_AES_128_GCM_SHA256",
                         "clientProvidedHostHeader": "s3.amazonaws.com"}
    rec["vpcEndpointId"] = "vpce-0123456789abcdef0"
    rec["aCompletelyUnknownTopLevelField"] = [{"k": "v"}, 3, False]
    rec["sessionCredentialFromConsole"] = "true"
    rec["sharedEventID"] = "7f5e4c1a-0000-4000-8000-000000000000"
    assert server.ingest_ok([rec]) == [rec["eventID"]]
    stored = stored_event(ct, rec["eventID"])
    assert_record_roundtrip(json.dumps(stored), rec)
    # Nothing may be dropped from or added to the nested objects either.
    assert json_equal(stored["userIdentity"], rec["userIdentity"])
    assert json_equal(stored["requestParameters"], rec["requestParameters"])


def test_fractional_seconds_event_time(server, ct):
    t = utcnow() - dt.timedelta(minutes=5)
    rec = make_record(user_name=f"frac-{uid()}", event_time=t.strftime("%Y-%m-%dT%H:%M:%S.123Z"))
    assert server.ingest_ok([rec]) == [rec["eventID"]]
    ev = wait_for_event(ct, rec["eventID"])
    assert_record_roundtrip(ev["CloudTrailEvent"], rec)
    assert int(ev["EventTime"].timestamp()) == int(t.timestamp())


def test_event_time_slightly_in_future_is_accepted(server, ct):
    t = utcnow() + dt.timedelta(hours=1)
    rec = make_record(user_name=f"future-{uid()}", event_time=t)
    assert server.ingest_ok([rec]) == [rec["eventID"]]
    deadline = time.monotonic() + 2
    while True:
        got = lookup_ids(ct, LookupAttributes=attrs(("EventId", rec["eventID"])),
                         StartTime=t - dt.timedelta(minutes=1), EndTime=t + dt.timedelta(minutes=1))
        if got:
            break
        assert time.monotonic() < deadline, "future-dated event not found"
        time.sleep(0.05)
    assert got == [rec["eventID"]]


def test_insight_record_needs_no_user_identity(server, ct):
    rec = make_insight_record()
    assert "userIdentity" not in rec and "eventSource" not in rec and "eventName" not in rec
    assert server.ingest_ok([rec]) == [rec["eventID"]]
    deadline = time.monotonic() + 2
    while True:
        events = ct.lookup_events(EventCategory="insight",
                                  LookupAttributes=attrs(("EventId", rec["eventID"])))["Events"]
        if events:
            break
        assert time.monotonic() < deadline, "insight record not found"
        time.sleep(0.05)
    assert_record_roundtrip(events[0]["CloudTrailEvent"], rec)


def test_exactly_max_records_accepted(server, ct):
    user = f"thousand-{uid()}"
    base = utcnow() - dt.timedelta(hours=2)
    records = [make_record(user_name=user, event_time=base + dt.timedelta(seconds=i))
               for i in range(MAX_RECORDS)]
    r = server.ingest(records)
    assert r.status_code == 200, r.text[:500]
    assert r.json()["EventIds"] == [rec["eventID"] for rec in records]
    for rec in (records[0], records[499], records[-1]):
        wait_for_event(ct, rec["eventID"])


def test_record_just_under_size_limit_accepted(server, ct):
    rec = padded_record(MAX_RECORD - 1024, user_name=f"big-{uid()}")
    assert server.ingest_ok([rec]) == [rec["eventID"]]
    ev = wait_for_event(ct, rec["eventID"])
    assert_record_roundtrip(ev["CloudTrailEvent"], rec)


# ---------------------------------------------------------------------------
# Rejected calls: exact error, and nothing from the call is stored
# ---------------------------------------------------------------------------

ANY = object()  # don't check this member of the error body
ANY_INDEX_OR_0 = object()  # RecordIndex absent, or 0


@dataclass
class BadCall:
    body: bytes = dc_field(repr=False)
    content_type: str
    event_ids: list  # eventIDs of records in the call that must not be stored
    reason: str
    index: Any  # int, None meaning RecordIndex must be absent, or ANY_INDEX_OR_0
    field: Any  # str, None meaning Field must be absent, or ANY


def fresh(n: int) -> list[dict]:
    user = f"rejected-{uid()}"
    return [make_record(user_name=user) for _ in range(n)]


def ids_of(items: list) -> list[str]:
    return [r["eventID"] for r in items if isinstance(r, dict) and "eventID" in r]


def bad_in_envelope(bad: Any, reason: str, field: Any, index: int = 2, n: int = 4) -> BadCall:
    records: list[Any] = fresh(n)
    records[index] = bad
    return BadCall(compact({"Records": records}), "application/json", ids_of(records),
                   reason, index, field)


def missing(field: str, index: int = 2) -> BadCall:
    return bad_in_envelope(make_record(**{field: OMIT}), "FieldNotFound", field, index=index)


def invalid(field: str, value: Any) -> BadCall:
    return bad_in_envelope(make_record(**{field: value}), "InvalidData", field)


def too_many_records() -> BadCall:
    records = [make_record(user_name="too-many") for _ in range(MAX_RECORDS + 1)]
    return BadCall(compact({"Records": records}), "application/json", ids_of(records),
                   "TooManyRecords", None, ANY)


def request_too_large() -> BadCall:
    per_record = 230 * 1024
    count = MAX_BODY // per_record + 2
    records = [padded_record(per_record) for _ in range(count)]
    body = compact({"Records": records})
    assert len(body) > MAX_BODY and count < MAX_RECORDS
    return BadCall(body, "application/json", ids_of(records), "RequestTooLarge", None, ANY)


def record_too_large() -> BadCall:
    return bad_in_envelope(padded_record(MAX_RECORD + 4096), "RecordTooLarge", ANY)


def invalid_json() -> BadCall:
    records = fresh(2)
    body = compact({"Records": records})[:-30]  # cut inside the second record
    # Unparseable, so it cannot be told apart from one broken NDJSON line:
    # RecordIndex may be absent or 0.
    return BadCall(body, "application/json", ids_of(records), "InvalidJson", ANY_INDEX_OR_0, ANY)


def ndjson_broken_line_3() -> BadCall:
    records = fresh(4)
    lines = [compact(r) for r in records]
    lines[2] = lines[2][: len(lines[2]) // 2]  # syntactically broken JSON
    return BadCall(b"\n".join(lines) + b"\n", "application/x-ndjson", ids_of(records),
                   "InvalidJson", 2, ANY)


def ndjson_line_3_missing_field() -> BadCall:
    records = fresh(4)
    del records[2]["eventSource"]
    return BadCall(ndjson(records), "application/x-ndjson", ids_of(records),
                   "FieldNotFound", 2, "eventSource")


def empty_records() -> BadCall:
    return BadCall(compact({"Records": []}), "application/json", [], "InvalidData", None, ANY)


BAD_CALLS: dict[str, Callable[[], BadCall]] = {
    "missing-eventTime": lambda: missing("eventTime"),
    "missing-eventSource": lambda: missing("eventSource"),
    "missing-eventName": lambda: missing("eventName"),
    "missing-awsRegion": lambda: missing("awsRegion"),
    "missing-userIdentity": lambda: missing("userIdentity"),
    "missing-at-index-0": lambda: missing("eventName", index=0),
    "missing-at-last-index": lambda: missing("awsRegion", index=3),
    "insight-missing-insightDetails": lambda: bad_in_envelope(
        make_insight_record(insightDetails=OMIT), "FieldNotFound", "insightDetails"),
    "eventTime-space-separated": lambda: invalid("eventTime", "2026-01-02 03:04:05"),
    "eventTime-month-13": lambda: invalid("eventTime", "2026-13-01T00:00:00Z"),
    "eventTime-number": lambda: invalid("eventTime", 1767323045),
    "eventTime-too-far-in-future": lambda: invalid(
        "eventTime", iso(utcnow() + dt.timedelta(hours=48))),
    "readOnly-string": lambda: invalid("readOnly", "true"),
    "userIdentity-string": lambda: invalid("userIdentity", "arn:aws:iam::111122223333:user/x"),
    "resources-not-list": lambda: invalid(
        "resources", {"ARN": "arn:aws:s3:::b", "accountId": ACCOUNT_ID, "type": "AWS::S3::Bucket"}),
    "eventName-number": lambda: invalid("eventName", 42),
    # README: short members such as eventName are limited to 1 KiB.
    "eventName-too-long": lambda: bad_in_envelope(
        make_record(eventName="A" * 2048), "FieldTooLong", "eventName"),
    "record-not-object": lambda: bad_in_envelope("not a record", "InvalidData", None),
    "record-too-large": record_too_large,
    "too-many-records": too_many_records,
    "request-too-large": request_too_large,
    "invalid-json": invalid_json,
    "ndjson-broken-line-3": ndjson_broken_line_3,
    "ndjson-line-3-missing-field": ndjson_line_3_missing_field,
    "empty-records": empty_records,
}


@dataclass
class Outcome:
    call: BadCall
    status: int
    body: Any
    text: str


@pytest.fixture(scope="module")
def rejected(server, ct) -> dict[str, Outcome]:
    """Make every bad call once, then give the server time to (wrongly)
    make anything from them visible before the tests look."""
    control = fresh(2)
    assert server.ingest_ok(control) == ids_of(control)

    outcomes = {}
    for name, build in BAD_CALLS.items():
        call = build()
        try:
            r = server.ingest_raw(call.body, content_type=call.content_type)
        except requests.ConnectionError as e:
            # e.g. the server answered before reading the body and reset the
            # connection: the client never gets to see the 400.
            outcomes[name] = Outcome(call, -1, None, f"connection error, no response read: {e!r}")
            continue
        try:
            body = r.json()
        except ValueError:
            body = None
        outcomes[name] = Outcome(call, r.status_code, body, r.text[:2000])
    last_call = time.monotonic()

    # Positive control: lookups work and a good call made before is visible.
    wait_for_events(ct, ids_of(control))
    remaining = 1.5 - (time.monotonic() - last_call)
    if remaining > 0:
        time.sleep(remaining)
    return outcomes


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_rejected_call(rejected, ct, name):
    out = rejected[name]
    call = out.call
    assert out.status == 400, f"expected HTTP 400, got {out.status}: {out.text}"
    body = out.body
    assert isinstance(body, dict), f"error body is not a JSON object: {out.text}"
    assert body.get("__type") == "InvalidParameterException", body
    assert isinstance(body.get("Message"), str) and body["Message"], body
    assert body.get("Reason") == call.reason, body

    if call.index is None:
        assert "RecordIndex" not in body, body
    elif call.index is ANY_INDEX_OR_0:
        assert body.get("RecordIndex", 0) == 0 and body.get("RecordIndex") is not False, body
    else:
        assert "RecordIndex" in body, body
        assert type(body["RecordIndex"]) is int and body["RecordIndex"] == call.index, body
    if call.field is None:
        assert "Field" not in body, body
    elif call.field is not ANY:
        assert body.get("Field") == call.field, body

    # All or nothing: none of the call's records may be stored.
    ids = call.event_ids
    if len(ids) > 12:
        ids = ids[:5] + ids[len(ids) // 2: len(ids) // 2 + 2] + ids[-5:]
    leaked = [i for i in ids if find_event(ct, i) is not None]
    assert leaked == [], f"records of a rejected call were stored: {leaked}"


# ---------------------------------------------------------------------------
# Durability
# ---------------------------------------------------------------------------


def test_events_survive_graceful_restart(server):
    ct = cloudtrail_client(server)
    records = [make_record(user_name=f"restart-{uid()}") for _ in range(3)]
    records.append(make_record(user_name=f"restart-{uid()}", eventID=OMIT))
    ids = server.ingest_ok(records)
    wait_for_events(ct, ids)

    server.restart()
    ct = cloudtrail_client(server)
    for event_id, rec in zip(ids, records):
        ev = wait_for_event(ct, event_id, timeout=1.0)
        stored = assert_record_roundtrip(ev["CloudTrailEvent"], rec)
        assert stored["eventID"] == event_id

    # And the restarted server keeps accepting data.
    more = make_record(user_name=f"restart-after-{uid()}")
    assert server.ingest_ok([more]) == [more["eventID"]]
    wait_for_event(ct, more["eventID"])


def test_acknowledged_events_survive_kill_9(server):
    records = [make_record(user_name=f"kill9-{uid()}") for _ in range(3)]
    records.append(make_record(user_name=f"kill9-{uid()}", eventID=OMIT))
    ids = server.ingest_ok(records)
    single = make_record(user_name=f"kill9-single-{uid()}")
    ids.append(server.ingest_ok([single])[0])
    records.append(single)

    # No waiting: a 200 from the ingest API means the data is durable.
    server.kill9()
    ct = cloudtrail_client(server)
    for event_id, rec in zip(ids, records):
        ev = wait_for_event(ct, event_id, timeout=1.0)
        stored = assert_record_roundtrip(ev["CloudTrailEvent"], rec)
        assert stored["eventID"] == event_id

    # Nothing was duplicated by replaying the log at start-up.
    for event_id in ids:
        assert lookup_ids(ct, LookupAttributes=attrs(("EventId", event_id))) == [event_id]


def test_events_survive_repeated_kill_9(server):
    ct = cloudtrail_client(server)
    user = f"kill9-repeat-{uid()}"
    all_ids: list[str] = []
    for round_no in range(3):
        rec = make_record(user_name=user, event_time=utcnow() - dt.timedelta(minutes=10 - round_no))
        all_ids += server.ingest_ok([rec])
        server.kill9()
        ct = cloudtrail_client(server)
    wait_for_events(ct, all_ids, timeout=1.0)
    assert sorted(lookup_ids(ct, LookupAttributes=attrs(("Username", user)))) == sorted(all_ids)
