"""Insights end to end: counters over the event log, the detector, Insights records in event
history and in the trail's CloudTrail-Insight/ folder, ListInsightsMetricData, crash safety.

The module's server evaluates the stored history when Insights are first enabled
(``insights_backfill``) and needs one hour of history, so a day of synthetic traffic with known
anomalies can be ingested first and judged at once."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from conftest import (
    ACCOUNT_ID,
    DEFAULT_REGION,
    aws,
    cloudtrail_client,
    iso,
    make_record,
    uid,
    utcnow,
)

SERVER_ENV = {
    "OPENTRAIL_INSIGHTS_BACKFILL": "true",
    "OPENTRAIL_INSIGHTS_MIN_HISTORY": "1h",
    "OPENTRAIL_INSIGHTS_SETTLE": "1s",
    "OPENTRAIL_DELIVERY_INTERVAL": "1s",
}
SOURCE = "widgets.amazonaws.com"
OTHER_REGION = "eu-west-1"
BURSTER = f"arn:aws:iam::{ACCOUNT_ID}:user/burster"
BURST_AGENT = "burst-agent/1.0"
WAIT_S = 60.0


def minute_floor(t: dt.datetime) -> dt.datetime:
    return t.replace(second=0, microsecond=0)


def call(name: str, at: dt.datetime, *, user: str = "steady", agent: str = "steady-agent/2.0",
         error: str | None = None, region: str = DEFAULT_REGION, read_only: bool = False) -> dict:
    rec = make_record(event_time=at, eventSource=SOURCE, eventName=name, awsRegion=region,
                      readOnly=read_only, userAgent=agent)
    rec["userIdentity"]["arn"] = f"arn:aws:iam::{ACCOUNT_ID}:user/{user}"
    rec["userIdentity"]["userName"] = user
    if error:
        rec["errorCode"] = error
        rec["errorMessage"] = f"{error} for {name}"
    return rec


def ingest_all(server, records: list[dict]) -> None:
    for i in range(0, len(records), 1000):
        server.ingest_ok(records[i:i + 1000])


class Story:
    """The traffic ingested before Insights are enabled, and what it should produce."""

    def __init__(self) -> None:
        self.now = minute_floor(utcnow())
        self.start = self.now - dt.timedelta(hours=26)
        self.burst_at = self.now - dt.timedelta(hours=3)
        self.storm_at = self.now - dt.timedelta(hours=4)
        self.spike_at = self.now - dt.timedelta(hours=5)
        self.young_at = self.now - dt.timedelta(minutes=20)
        self.per_minute: dict[tuple[str, str], dict[dt.datetime, int]] = {}
        self.records: list[dict] = []

    def add(self, rec: dict) -> None:
        t = minute_floor(dt.datetime.strptime(rec["eventTime"], "%Y-%m-%dT%H:%M:%SZ")
                         .replace(tzinfo=dt.timezone.utc))
        key = (rec["awsRegion"], rec["eventName"])
        self.per_minute.setdefault(key, {})
        self.per_minute[key][t] = self.per_minute[key].get(t, 0) + 1
        self.records.append(rec)

    def build(self) -> None:
        m = self.start
        i = 0
        while m < self.now:
            # A steady write API with a burst of 40 calls a minute from one user for 5 minutes.
            for k in range(2):
                self.add(call("CreateWidget", m + dt.timedelta(seconds=10 + 20 * k)))
            if self.burst_at <= m < self.burst_at + dt.timedelta(minutes=5):
                for k in range(40):
                    self.add(call("CreateWidget", m + dt.timedelta(seconds=k), user="burster",
                                  agent=BURST_AGENT))
            # A write API that starts failing with AccessDenied for 5 minutes.
            self.add(call("DeleteWidget", m + dt.timedelta(seconds=5)))
            if self.storm_at <= m < self.storm_at + dt.timedelta(minutes=5):
                for k in range(20):
                    self.add(call("DeleteWidget", m + dt.timedelta(seconds=k), user="intruder",
                                  error="AccessDenied"))
            # A write API with 10% throttling whose traffic spikes 8x with the same share.
            calls = 10 if not (self.spike_at <= m < self.spike_at + dt.timedelta(minutes=5)) else 80
            for k in range(calls):
                err = "ThrottlingException" if k % 10 == 0 else None
                self.add(call("UpdateWidget", m + dt.timedelta(seconds=k % 60), error=err))
            # A steady API that never does anything unusual.
            self.add(call("PutWidget", m + dt.timedelta(seconds=30)))
            # A read-only API bursting: reads have no call-rate Insights.
            if i % 2 == 0:
                self.add(call("DescribeWidgets", m + dt.timedelta(seconds=40), read_only=True))
            if self.burst_at <= m < self.burst_at + dt.timedelta(minutes=5):
                for k in range(50):
                    self.add(call("DescribeWidgets", m + dt.timedelta(seconds=k), read_only=True))
            m += dt.timedelta(minutes=1)
            i += 1
        # Another region with only 30 minutes of history and a burst in it: too young.
        m = self.now - dt.timedelta(minutes=30)
        while m < self.now:
            self.add(call("CreateWidget", m + dt.timedelta(seconds=7), region=OTHER_REGION))
            if self.young_at <= m < self.young_at + dt.timedelta(minutes=5):
                for k in range(40):
                    self.add(call("CreateWidget", m + dt.timedelta(seconds=k), region=OTHER_REGION))
            m += dt.timedelta(minutes=1)


@pytest.fixture(scope="module")
def story(server):
    s = Story()
    s.build()
    ingest_all(server, s.records)
    return s


@pytest.fixture(scope="module")
def trail(server, story):
    ct = cloudtrail_client(server)
    bucket = f"insights-{uid()}"
    os.makedirs(Path(server.data_dir) / "buckets" / bucket)
    name = f"insights-{uid()}"
    ct.create_trail(Name=name, S3BucketName=bucket, IsMultiRegionTrail=True)
    ct.put_insight_selectors(TrailName=name, InsightSelectors=[
        {"InsightType": "ApiCallRateInsight"}, {"InsightType": "ApiErrorRateInsight"}])
    ct.start_logging(Name=name)
    return {"name": name, "bucket": bucket}


def insights(server, region: str = DEFAULT_REGION, **attr) -> list[dict]:
    ct = cloudtrail_client(server, region)
    params = {"EventCategory": "insight"}
    if attr:
        ((k, v),) = attr.items()
        params["LookupAttributes"] = [{"AttributeKey": k, "AttributeValue": v}]
    out, token = [], None
    while True:
        page = ct.lookup_events(**params, **({"NextToken": token} if token else {}))
        out += [json.loads(e["CloudTrailEvent"]) for e in page["Events"]]
        token = page.get("NextToken")
        if not token:
            return out


def of_api(records: list[dict], name: str, kind: str | None = None) -> list[dict]:
    return [r for r in records if r["insightDetails"]["eventName"] == name
            and (kind is None or r["insightDetails"]["insightType"] == kind)]


def wait_insights(server, name: str, count: int, kind: str | None = None) -> list[dict]:
    deadline = time.monotonic() + WAIT_S
    while True:
        found = of_api(insights(server, EventName=name), name, kind)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def pair(records: list[dict]) -> tuple[dict, dict]:
    assert len(records) == 2, json.dumps(records, indent=1)[:4000]
    by_state = {r["insightDetails"]["state"]: r for r in records}
    assert set(by_state) == {"Start", "End"}
    return by_state["Start"], by_state["End"]


def test_burst_gives_one_start_and_one_end_shaped_as_cloudtrail(server, story, trail):
    start, end = pair(wait_insights(server, "CreateWidget", 2, "ApiCallRateInsight"))
    for r in (start, end):
        assert r["eventVersion"] == "1.09"
        assert r["eventType"] == "AwsCloudTrailInsight"
        assert r["eventCategory"] == "Insight"
        assert r["recipientAccountId"] == ACCOUNT_ID
        assert r["awsRegion"] == DEFAULT_REGION
        for absent in ("userIdentity", "sourceIPAddress", "userAgent", "eventSource", "eventName"):
            assert absent not in r, absent
        d = r["insightDetails"]
        assert d["eventSource"] == SOURCE and d["eventName"] == "CreateWidget"
        assert d["insightType"] == "ApiCallRateInsight" and "errorCode" not in d
        assert d["sourceEventCategory"] == "Management"
        assert set(d["insightContext"]) == {"statistics", "attributions"}
    assert start["sharedEventID"] == end["sharedEventID"]
    assert start["eventID"] != end["eventID"]
    assert start["eventTime"] == iso(story.burst_at)
    assert end["eventTime"] == iso(story.burst_at + dt.timedelta(minutes=5))
    stats = end["insightDetails"]["insightContext"]["statistics"]
    assert stats["insightDuration"] == 5
    assert stats["insight"]["average"] == pytest.approx(42.0)
    assert stats["baseline"]["average"] == pytest.approx(2.0, abs=0.5)
    assert stats["baselineDuration"] >= 60
    s_stats = start["insightDetails"]["insightContext"]["statistics"]
    assert 1 <= s_stats["insightDuration"] <= 2
    assert s_stats["insight"]["average"] == pytest.approx(42.0)
    attributions = {a["attribute"]: a for a in end["insightDetails"]["insightContext"]["attributions"]}
    assert set(attributions) == {"userIdentityArn", "userAgent", "errorCode"}
    users = attributions["userIdentityArn"]
    assert users["insight"][0] == {"value": BURSTER, "average": 40.0}
    assert users["insight"][1]["value"].endswith(":user/steady")
    assert [v["value"] for v in users["baseline"]] == [f"arn:aws:iam::{ACCOUNT_ID}:user/steady"]
    assert attributions["userAgent"]["insight"][0] == {"value": BURST_AGENT, "average": 40.0}
    assert attributions["errorCode"]["insight"] == [{"value": "null", "average": 42.0}]
    for a in attributions.values():
        assert len(a["insight"]) <= 5 and len(a["baseline"]) <= 5
        avgs = [v["average"] for v in a["insight"]]
        assert avgs == sorted(avgs, reverse=True)


def test_error_storm_is_an_error_rate_insight(server, story, trail):
    start, end = pair(wait_insights(server, "DeleteWidget", 2, "ApiErrorRateInsight"))
    assert start["sharedEventID"] == end["sharedEventID"]
    for r in (start, end):
        assert r["insightDetails"]["errorCode"] == "AccessDenied"
    assert start["eventTime"] == iso(story.storm_at)
    assert end["eventTime"] == iso(story.storm_at + dt.timedelta(minutes=5))
    stats = end["insightDetails"]["insightContext"]["statistics"]
    assert stats["insight"]["average"] == pytest.approx(20.0)
    errs = {a["attribute"]: a for a in end["insightDetails"]["insightContext"]["attributions"]}
    assert errs["errorCode"]["insight"] == [{"value": "AccessDenied", "average": 20.0}]
    assert errs["userIdentityArn"]["insight"][0]["value"].endswith(":user/intruder")


def test_a_traffic_spike_is_a_call_rate_insight_not_an_error_rate_one(server, story, trail):
    wait_insights(server, "UpdateWidget", 2, "ApiCallRateInsight")
    found = of_api(insights(server, EventName="UpdateWidget"), "UpdateWidget")
    kinds = sorted(r["insightDetails"]["insightType"] for r in found)
    assert kinds == ["ApiCallRateInsight", "ApiCallRateInsight"], kinds
    start, _ = pair(found)
    assert start["eventTime"] == iso(story.spike_at)


def test_steady_apis_reads_and_young_history_give_no_insight(server, story, trail):
    wait_insights(server, "CreateWidget", 2)
    everything = insights(server)
    names = {r["insightDetails"]["eventName"] for r in everything}
    assert "PutWidget" not in names
    # Read-only APIs have no call-rate Insights, however they burst.
    assert "DescribeWidgets" not in names
    # eu-west-1 has 30 minutes of history; Insights need an hour.
    assert insights(server, OTHER_REGION) == []
    # Only the anomalies, each once: the burst, the storm (an error-rate Insight, and a
    # call-rate one, as the failing calls are calls too) and the spike.
    assert len(everything) == 8, [(r["insightDetails"]["eventName"], r["insightDetails"]["state"]) for r in everything]


def test_insights_are_delivered_to_the_cloudtrail_insight_folder(server, story, trail):
    wanted = {r["eventID"] for r in insights(server)}
    assert len(wanted) == 8
    root = Path(server.data_dir) / "buckets" / trail["bucket"]
    deadline = time.monotonic() + WAIT_S
    while True:
        delivered = {}
        for path in root.rglob("*.json.gz"):
            key = path.relative_to(root).as_posix()
            if "/CloudTrail-Insight/" not in key:
                continue
            assert key.startswith(f"AWSLogs/{ACCOUNT_ID}/CloudTrail-Insight/{DEFAULT_REGION}/"), key
            assert f"{ACCOUNT_ID}_CloudTrail-Insight_{DEFAULT_REGION}_" in key
            for rec in json.loads(gzip.decompress(path.read_bytes()))["Records"]:
                assert rec["eventCategory"] == "Insight"
                assert rec["eventID"] not in delivered, "an Insight delivered twice"
                delivered[rec["eventID"]] = rec
        if set(delivered) >= wanted or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(delivered) == wanted


def test_list_insights_metric_data_counts_exactly(server, story, trail):
    wait_insights(server, "CreateWidget", 2)
    ct = cloudtrail_client(server)
    expected = story.per_minute[(DEFAULT_REGION, "CreateWidget")]
    lo, hi = story.burst_at - dt.timedelta(minutes=10), story.burst_at + dt.timedelta(minutes=10)
    r = ct.list_insights_metric_data(EventSource=SOURCE, EventName="CreateWidget",
                                     InsightType="ApiCallRateInsight", Period=60,
                                     DataType="FillWithZeros", StartTime=lo, EndTime=hi)
    assert r["EventSource"] == SOURCE and r["InsightType"] == "ApiCallRateInsight"
    assert len(r["Timestamps"]) == 20 == len(r["Values"])
    for ts, v in zip(r["Timestamps"], r["Values"]):
        assert v == expected.get(ts.astimezone(dt.timezone.utc), 0), ts
    assert max(r["Values"]) == 42.0
    # Hourly sums over the whole day equal what was ingested.
    r = ct.list_insights_metric_data(EventSource=SOURCE, EventName="CreateWidget",
                                     InsightType="ApiCallRateInsight", Period=3600,
                                     StartTime=story.start, EndTime=story.now)
    assert sum(r["Values"]) == sum(expected.values())
    # Errors per error code; paging with MaxResults.
    errs = ct.list_insights_metric_data(EventSource=SOURCE, EventName="DeleteWidget",
                                        InsightType="ApiErrorRateInsight", ErrorCode="AccessDenied",
                                        Period=60, StartTime=story.start, EndTime=story.now,
                                        MaxResults=2)
    assert errs["Values"] == [20.0, 20.0] and errs["ErrorCode"] == "AccessDenied"
    rest = ct.list_insights_metric_data(EventSource=SOURCE, EventName="DeleteWidget",
                                        InsightType="ApiErrorRateInsight", ErrorCode="AccessDenied",
                                        Period=60, StartTime=story.start, EndTime=story.now,
                                        NextToken=errs["NextToken"])
    assert rest["Values"] == [20.0, 20.0, 20.0] and "NextToken" not in rest
    assert rest["Timestamps"][0] > errs["Timestamps"][-1]
    # The AWS CLI, unchanged, with 5-minute periods.
    rc, out, err = aws(server, "cloudtrail", "list-insights-metric-data", "--event-source", SOURCE,
              "--event-name", "DeleteWidget", "--insight-type", "ApiErrorRateInsight",
              "--error-code", "AccessDenied", "--period", "300",
              "--start-time", iso(story.storm_at - dt.timedelta(minutes=30)),
              "--end-time", iso(story.storm_at + dt.timedelta(minutes=30)))
    assert rc == 0, err
    assert sum(out["Values"]) == 100


@pytest.mark.parametrize("params, fragment", [
    ({"InsightType": "ApiErrorRateInsight"}, "ErrorCode is required"),
    ({"InsightType": "ApiCallRateInsight", "ErrorCode": "AccessDenied"}, "ErrorCode goes with"),
    ({"InsightType": "ApiCallRateInsight", "Period": 120}, "Period must be 60, 300 or 3600"),
    ({"InsightType": "ApiCallRateInsight", "DataType": "Everything"}, "DataType"),
    ({"InsightType": "ApiCallRateInsight", "NextToken": "12-abc"}, "NextToken"),
])
def test_list_insights_metric_data_refuses_bad_input(server, params, fragment):
    ct = cloudtrail_client(server)
    with pytest.raises(ClientError) as e:
        ct.list_insights_metric_data(EventSource=SOURCE, EventName="CreateWidget", **params)
    assert e.value.response["Error"]["Code"] == "InvalidParameterException"
    assert fragment in e.value.response["Error"]["Message"]


def test_counters_and_insights_survive_kill9(server, story, trail):
    deadline = time.monotonic() + WAIT_S
    while len(before := insights(server)) < 8 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(before) == 8
    # A fresh API counted while the server is killed: no call lost, none counted twice.
    t0 = minute_floor(utcnow()) - dt.timedelta(minutes=30)
    recs = [call("CountWidget", t0 + dt.timedelta(seconds=i % 600)) for i in range(20_000)]
    ingest_all(server, recs)
    server.kill9()
    ct = cloudtrail_client(server)
    deadline = time.monotonic() + WAIT_S
    while True:
        r = ct.list_insights_metric_data(EventSource=SOURCE, EventName="CountWidget",
                                         InsightType="ApiCallRateInsight", Period=3600,
                                         StartTime=t0 - dt.timedelta(hours=1),
                                         EndTime=t0 + dt.timedelta(hours=1))
        if sum(r["Values"]) >= 20_000 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sum(r["Values"]) == 20_000
    # No Insight is recorded twice after the restart. (The fresh API's 20,000 calls may well be
    # an Insight of their own, through the hour window, once a minute completes: only the
    # earlier ones are compared.)
    time.sleep(3)
    after = [r["eventID"] for r in insights(server)]
    assert len(after) == len(set(after)), "an Insight recorded twice"
    assert {r["eventID"] for r in before} <= set(after)


def test_a_live_burst_is_reported_within_two_minutes(server, story, trail):
    # Steady history for a new API over the last two hours, then a burst now.
    now = utcnow()
    base = minute_floor(now) - dt.timedelta(hours=2)
    hist, m = [], base
    while m < minute_floor(now):
        hist.append(call("LiveWidget", m + dt.timedelta(seconds=1)))
        m += dt.timedelta(minutes=1)
    ingest_all(server, hist)
    onset = time.monotonic()
    burst_minute = minute_floor(utcnow())
    server.ingest_ok([call("LiveWidget", utcnow(), user="burster") for _ in range(200)])
    found = []
    while time.monotonic() - onset < 120:
        found = of_api(insights(server, EventName="LiveWidget"), "LiveWidget")
        if found:
            break
        time.sleep(1)
    assert found, "no Insight within two minutes of the burst"
    start = found[-1]
    assert start["insightDetails"]["state"] == "Start"
    assert start["eventTime"] == iso(burst_minute)
