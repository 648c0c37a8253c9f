"""Self-audit: every call to the CloudTrail API (``POST /``) is itself
recorded as a CloudTrail event; calls to the ingest API are not."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from botocore.exceptions import ClientError

from conftest import (
    ACCOUNT_ID,
    attrs,
    cloudtrail_client,
    lookup_all,
    make_record,
    parse_event_time,
    uid,
    utcnow,
    wait_for_events,
)

AUDIT_ATTRS = attrs(("EventName", "LookupEvents"), ("EventSource", "cloudtrail.amazonaws.com"))
AUDIT_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def ct(server):
    return cloudtrail_client(server)


def find_audit(ct, request_id: str, since: dt.datetime) -> tuple[dict, dict]:
    """Poll (up to 2 s) for the audit event of the call with ``request_id``;
    returns (LookupEvents event, parsed CloudTrailEvent)."""
    assert request_id, "the call returned no x-amzn-RequestId"
    deadline = time.monotonic() + AUDIT_TIMEOUT_S
    while True:
        for ev in lookup_all(ct, LookupAttributes=AUDIT_ATTRS, StartTime=since):
            rec = json.loads(ev["CloudTrailEvent"])
            # The two attributes are ANDed: nothing else may come back.
            assert rec.get("eventName") == "LookupEvents", rec
            assert rec.get("eventSource") == "cloudtrail.amazonaws.com", rec
            if rec.get("requestID") == request_id:
                return ev, rec
        if time.monotonic() > deadline:
            pytest.fail(f"no audit event with requestID {request_id} after {AUDIT_TIMEOUT_S} s")
        time.sleep(0.1)


def assert_common_audit_fields(ev: dict, rec: dict, before: dt.datetime, after: dt.datetime):
    assert ev["EventName"] == "LookupEvents"
    assert ev["EventSource"] == "cloudtrail.amazonaws.com"
    assert ev["ReadOnly"] == "true"
    assert ev["EventId"] == rec["eventID"]

    assert rec["eventSource"] == "cloudtrail.amazonaws.com"
    assert rec["eventName"] == "LookupEvents"
    assert rec["readOnly"] is True
    assert rec["eventType"] == "AwsApiCall"
    assert rec["managementEvent"] is True
    assert rec["awsRegion"] == "us-east-1"
    assert rec["recipientAccountId"] == ACCOUNT_ID
    assert rec["sourceIPAddress"] == "127.0.0.1"
    ua = rec.get("userAgent", "")
    assert "Boto3" in ua or "botocore" in ua.lower(), ua
    ident = rec["userIdentity"]
    assert ident["type"] == "Root", ident
    assert ident["accountId"] == ACCOUNT_ID, ident
    assert "responseElements" in rec and rec["responseElements"] is None
    t = parse_event_time(rec["eventTime"])
    slack = dt.timedelta(seconds=5)
    assert before - slack <= t <= after + slack, (rec["eventTime"], before, after)


def test_successful_lookup_is_audited(ct):
    marker = f"AuditMarker{uid()}"
    before = utcnow()
    resp = ct.lookup_events(LookupAttributes=attrs(("EventName", marker)), MaxResults=7)
    after = utcnow()
    assert resp["Events"] == []
    request_id = resp["ResponseMetadata"]["RequestId"]

    ev, rec = find_audit(ct, request_id, before - dt.timedelta(minutes=1))
    assert_common_audit_fields(ev, rec, before, after)
    assert rec["requestID"] == request_id
    assert "errorCode" not in rec and "errorMessage" not in rec
    params = rec["requestParameters"]
    assert isinstance(params, dict), params
    assert params.get("lookupAttributes") == [
        {"attributeKey": "EventName", "attributeValue": marker}
    ], params
    assert params.get("maxResults") == 7, params
    # Only lowerCamelCase keys: nothing in the original PascalCase.
    assert not any(k[:1].isupper() for k in params), params


def test_each_call_gets_its_own_audit_event(ct):
    since = utcnow() - dt.timedelta(minutes=1)
    ids = []
    for _ in range(3):
        resp = ct.lookup_events(LookupAttributes=attrs(("Username", f"nobody-{uid()}")))
        ids.append(resp["ResponseMetadata"]["RequestId"])
    assert len(set(ids)) == 3
    event_ids = {find_audit(ct, rid, since)[1]["eventID"] for rid in ids}
    assert len(event_ids) == 3


def test_failed_lookup_is_audited_with_error(ct):
    before = utcnow()
    with pytest.raises(ClientError) as ei:
        ct.lookup_events(MaxResults=51)
    after = utcnow()
    err = ei.value.response
    assert err["Error"]["Code"] == "InvalidMaxResultsException"
    request_id = err["ResponseMetadata"]["RequestId"]

    ev, rec = find_audit(ct, request_id, before - dt.timedelta(minutes=1))
    assert_common_audit_fields(ev, rec, before, after)
    assert rec["requestID"] == request_id
    assert rec["errorCode"] == "InvalidMaxResultsException"
    assert isinstance(rec.get("errorMessage"), str) and rec["errorMessage"]
    assert rec["requestParameters"].get("maxResults") == 51, rec["requestParameters"]


def test_ingest_calls_are_not_audited(server, ct):
    since = utcnow() - dt.timedelta(minutes=1)
    user = f"not-audited-{uid()}"
    records = [make_record(user_name=user) for _ in range(3)]
    ingested = set(server.ingest_ok(records))
    ingested |= set(server.ingest_ok([make_record(user_name=user)]))
    bad = server.ingest([make_record(eventName=None)])  # a rejected ingest call
    assert bad.status_code == 400
    wait_for_events(ct, ingested)
    time.sleep(1.5)  # let any (wrongly) produced audit record become visible

    for name in ("PutEvents", "Ingest", "IngestEvents", "PutAuditEvents", "Events"):
        assert lookup_all(ct, LookupAttributes=attrs(("EventName", name)), StartTime=since) == []

    # Everything this module's server holds is either an ingested record or
    # the audit trail of a LookupEvents call.
    for ev in lookup_all(ct, StartTime=since):
        if ev["EventId"] in ingested:
            continue
        rec = json.loads(ev["CloudTrailEvent"])
        assert (rec.get("eventSource"), rec.get("eventName")) == (
            "cloudtrail.amazonaws.com", "LookupEvents"), rec
        assert "/v1/events" not in json.dumps(rec)
