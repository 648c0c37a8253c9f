"""The web console end to end, in a real headless Chromium.

The browser side is ``tests/console/scenarios.mjs`` (playwright-core driving Debian's
``chromium``); each test here prepares the server (events, users, trails, an Insight), runs one
scenario, and then checks from outside the browser what the scenario did: the files it
downloaded, the trail it created and its delivered log file, the self-audit records of the
console's calls. Screenshots of every page land in ``tests/console/artifacts/``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from conftest import (
    ACCOUNT_ID,
    FAKE_ACCESS_KEY,
    FAKE_SECRET_KEY,
    attrs,
    cloudtrail_client,
    iso,
    lookup_all,
    make_record,
    poll_until,
    uid,
    utcnow,
)

SERVER_ENV = {
    "OPENTRAIL_INSIGHTS_BACKFILL": "true",
    "OPENTRAIL_INSIGHTS_MIN_HISTORY": "1h",
    "OPENTRAIL_INSIGHTS_SETTLE": "1s",
    "OPENTRAIL_DELIVERY_INTERVAL": "1s",
}
REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "tests" / "console" / "scenarios.mjs"
ARTIFACTS = Path(os.environ.get("OPENTRAIL_CONSOLE_ARTIFACTS", REPO / "tests" / "console" / "artifacts"))
WIDGETS = "widgets.amazonaws.com"
BURSTER = f"arn:aws:iam::{ACCOUNT_ID}:user/burster"
BURST_AGENT = "burst-agent/1.0"
INSIGHT_WAIT_S = 120.0
SCENARIO_TIMEOUT_S = 240


def minute_floor(t: dt.datetime) -> dt.datetime:
    return t.replace(second=0, microsecond=0)


def run_iam(server, *args: str) -> dict | None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY})
    p = subprocess.run([server.binary, "iam", "--endpoint-url", server.url, *args], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"opentrail iam {args}: {p.stdout}\n{p.stderr}"
    return json.loads(p.stdout) if p.stdout.strip() else None


def widget_call(at: dt.datetime, user: str = "steady", agent: str = "steady-agent/2.0") -> dict:
    rec = make_record(event_time=at, eventSource=WIDGETS, eventName="CreateWidget", userAgent=agent)
    rec["userIdentity"]["arn"] = f"arn:aws:iam::{ACCOUNT_ID}:user/{user}"
    rec["userIdentity"]["userName"] = user
    return rec


def kolkata(t: dt.datetime) -> str:
    k = t + dt.timedelta(hours=5, minutes=30)
    return k.strftime("%Y-%m-%d %H:%M:%S") + " UTC+05:30"


class Setup:
    """Everything the scenarios need, made once for the module."""

    def __init__(self, server) -> None:
        self.server = server
        self.ct = cloudtrail_client(server)
        self.started = utcnow() - dt.timedelta(seconds=2)
        self.now = utcnow()
        self.insights_trail = f"insights-{uid()}"
        self.insights_bucket = f"insights-{uid()}"
        self.source = f"console-{uid()}.example.com"
        self.paging_source = f"paging-{uid()}.example.com"
        self.paging_count = 73

    # -- an Insight -----------------------------------------------------------------------

    def make_insight(self) -> None:
        """26 hours of a steady API with a five-minute burst three hours ago, judged at once."""
        now = minute_floor(self.now)
        burst_at = now - dt.timedelta(hours=3)
        records = []
        m = now - dt.timedelta(hours=26)
        while m < now:
            records += [widget_call(m + dt.timedelta(seconds=10 + 20 * k)) for k in range(2)]
            if burst_at <= m < burst_at + dt.timedelta(minutes=5):
                records += [widget_call(m + dt.timedelta(seconds=k), "burster", BURST_AGENT) for k in range(40)]
            m += dt.timedelta(minutes=1)
        for i in range(0, len(records), 1000):
            self.server.ingest_ok(records[i:i + 1000])
        (Path(self.server.data_dir) / "buckets" / self.insights_bucket).mkdir(parents=True)
        self.ct.create_trail(Name=self.insights_trail, S3BucketName=self.insights_bucket)
        self.ct.put_insight_selectors(TrailName=self.insights_trail,
                                      InsightSelectors=[{"InsightType": "ApiCallRateInsight"}])
        self.ct.start_logging(Name=self.insights_trail)

        def ended():
            events = lookup_all(self.ct, EventCategory="insight",
                                LookupAttributes=attrs(("EventName", "CreateWidget")))
            states = {json.loads(e["CloudTrailEvent"])["insightDetails"]["state"] for e in events}
            return events if {"Start", "End"} <= states else None

        poll_until("the CreateWidget Insight (Start and End)", ended, timeout=INSIGHT_WAIT_S, interval=1.0)

    # -- a known set of events ------------------------------------------------------------

    def make_events(self) -> None:
        now = self.now
        src = self.source
        thing_a = f"arn:aws:example:::thing/a-{uid()}"
        thing_b = f"arn:aws:example:::thing/b-{uid()}"

        def ev(name, user, minutes, read_only, resource=None, **extra):
            rec = make_record(user_name=user, event_time=now - dt.timedelta(minutes=minutes),
                              eventSource=src, eventName=name, readOnly=read_only,
                              resources=[{"ARN": resource, "accountId": ACCOUNT_ID, "type": "AWS::Example::Thing"}]
                              if resource else None, **extra)
            if rec["resources"] is None:
                del rec["resources"]
            return rec

        self.e1 = ev("CreateThing", "alice", 10, False, thing_a)
        self.e2 = ev("DescribeThings", "bob", 20, True)
        self.e3 = ev("DeleteThing", "alice", 120, False, thing_a, errorCode="AccessDenied",
                     errorMessage="User alice is not allowed to delete things",
                     sourceIPAddress="203.0.113.77", userAgent="console-test-agent/1.0")
        self.e4 = ev("UpdateThing", "=2+3", 300, False, thing_b)
        self.e5 = ev("GetThing", "bob", 50, True, thing_b)
        self.records = [self.e1, self.e2, self.e3, self.e4, self.e5]
        self.server.ingest_ok(self.records)
        paging = [make_record(event_time=now - dt.timedelta(minutes=1, seconds=i), eventSource=self.paging_source,
                              eventName="Page") for i in range(self.paging_count)]
        self.server.ingest_ok(paging)
        got = lookup_all(self.ct, LookupAttributes=attrs(("EventId", self.e1["eventID"])))
        self.thing_a_name = got[0]["Resources"][0]["ResourceName"]
        got = lookup_all(self.ct, LookupAttributes=attrs(("EventId", self.e4["eventID"])))
        self.thing_b_name = got[0]["Resources"][0]["ResourceName"]

    def make_auditor(self) -> None:
        self.auditor_name = f"auditor-{uid()}"
        run_iam(self.server, "create-user", "--user-name", self.auditor_name)
        key = run_iam(self.server, "create-access-key", "--user-name", self.auditor_name)["AccessKey"]
        self.auditor = {"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
        run_iam(self.server, "attach-user-policy", "--user-name", self.auditor_name,
                "--policy-name", "OpenTrailReadOnlyAccess")

    def config(self) -> dict:
        ids = lambda *recs: [r["eventID"] for r in recs]  # noqa: E731
        e1, e2, e3, e4, e5 = self.records
        custom_start = minute_floor(self.now - dt.timedelta(hours=6))
        custom_end = minute_floor(self.now - dt.timedelta(minutes=90))
        e3_time = dt.datetime.strptime(e3["eventTime"], "%Y-%m-%dT%H:%M:%SZ")
        self.wizard = {"name": f"console-trail-{uid()}", "bucket": f"wizard-{uid()}", "prefix": "from-console"}
        (Path(self.server.data_dir) / "buckets" / self.wizard["bucket"]).mkdir(parents=True, exist_ok=True)
        return {
            "url": self.server.url,
            "artifacts": str(ARTIFACTS),
            "root": {"id": FAKE_ACCESS_KEY, "secret": FAKE_SECRET_KEY},
            "auditor": self.auditor,
            "insightsTrail": self.insights_trail,
            "insight": {"user": BURSTER, "agent": BURST_AGENT},
            "wizard": self.wizard,
            "events": {
                "source": self.source,
                "single": [
                    ["EventName", "CreateThing", ids(e1)],
                    ["Username", "alice", ids(e1, e3)],
                    ["EventSource", self.source, ids(*self.records)],
                    ["ResourceType", "AWS::Example::Thing", ids(e1, e3, e4, e5)],
                    ["ResourceName", self.thing_b_name, ids(e4, e5)],
                    ["AccessKeyId", e2["userIdentity"]["accessKeyId"], ids(e2)],
                    ["EventId", e3["eventID"], ids(e3)],
                    ["ReadOnly", "true", ids(e2, e5)],
                ],
                "multi": {"filters": [["Username", "alice"], ["ResourceName", self.thing_a_name],
                                      ["EventName", "DeleteThing"]], "ids": ids(e3)},
                "recentIds": ids(e1, e2),
                "threeHourIds": ids(e1, e2, e3, e5),
                "custom": {"start": custom_start.strftime("%Y-%m-%dT%H:%M"),
                           "end": custom_end.strftime("%Y-%m-%dT%H:%M"), "ids": ids(e3, e4)},
                "writeIds": ids(e1, e3, e4),
                "errorEvent": {
                    "id": e3["eventID"], "requestId": e3["requestID"], "sourceIp": "203.0.113.77",
                    "userAgent": "console-test-agent/1.0", "errorCode": "AccessDenied",
                    "errorMessage": e3["errorMessage"], "accessKey": e3["userIdentity"]["accessKeyId"],
                    "region": e3["awsRegion"], "timeUtc": e3_time.strftime("%Y-%m-%d %H:%M:%S") + " UTC",
                    "timeKolkata": kolkata(e3_time),
                },
                "resource": {"name": self.thing_a_name, "ids": ids(e1, e3)},
                "compareIds": ids(e1, e3, e4),
                "pagingSource": self.paging_source,
                "pagingCount": self.paging_count,
            },
        }


@pytest.fixture(scope="module")
def setup(server):
    if shutil.which("node") is None:
        pytest.fail("node is not installed; the README's test command installs it", pytrace=False)
    s = Setup(server)
    s.make_events()
    s.make_auditor()
    s.make_insight()
    s.cfg = s.config()
    return s


def scenario(setup, name: str) -> dict:
    env = dict(os.environ, CONSOLE_CONFIG=json.dumps(setup.cfg))
    p = subprocess.run(["node", str(SCENARIOS), name], env=env, capture_output=True, text=True,
                       timeout=SCENARIO_TIMEOUT_S, cwd=SCENARIOS.parent)
    assert p.returncode == 0, (
        f"console scenario {name} failed (screenshot: {ARTIFACTS}/{name}-failure.png)\n"
        f"stdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-6000:]}"
    )
    return json.loads(p.stdout.strip().splitlines()[-1])


def console_records(ct, event_name: str, since: dt.datetime, **match) -> list[dict]:
    out = []
    for e in lookup_all(ct, LookupAttributes=attrs(("EventName", event_name)), StartTime=since):
        rec = json.loads(e["CloudTrailEvent"])
        if all(rec.get(k) == v for k, v in match.items()):
            out.append(rec)
    return out


# ---------------------------------------------------------------------------------------------
# The browser scenarios
# ---------------------------------------------------------------------------------------------


def test_wrong_secret_cannot_sign_in(server, setup):
    since = utcnow() - dt.timedelta(seconds=2)
    scenario(setup, "signin_wrong_secret")
    recs = poll_until("the failed ConsoleLogin record", lambda: [
        r for r in console_records(setup.ct, "ConsoleLogin", since)
        if r["responseElements"] == {"ConsoleLogin": "Failure"}], timeout=5)
    rec = recs[0]
    assert rec["eventSource"] == "signin.amazonaws.com"
    assert rec["eventType"] == "AwsConsoleSignIn"
    assert rec["errorMessage"] == "Failed authentication"
    assert rec["userIdentity"]["accessKeyId"] == FAKE_ACCESS_KEY
    assert "Chrome" in rec["userAgent"]


def test_dashboard(setup):
    scenario(setup, "dashboard")


def test_event_history_filters_time_columns_paging(setup):
    scenario(setup, "history")


def test_event_details_resources_copy_and_compare(setup):
    scenario(setup, "details")


def test_downloads_csv_and_json(setup):
    out = scenario(setup, "downloads")
    want = {r["eventID"]: r for r in setup.records}
    rows = list(csv.DictReader(io.StringIO(Path(out["csv"]).read_text(encoding="utf-8"))))
    assert {r["Event ID"] for r in rows} == set(want), rows
    by_id = {r["Event ID"]: r for r in rows}
    e3 = by_id[setup.e3["eventID"]]
    assert e3["Event name"] == "DeleteThing" and e3["Error code"] == "AccessDenied"
    assert e3["Source IP address"] == "203.0.113.77" and e3["User name"] == "alice"
    assert e3["Event time"] == setup.e3["eventTime"]
    assert e3["Resource name"] == setup.thing_a_name
    # A cell a spreadsheet would run as a formula is neutralised.
    assert by_id[setup.e4["eventID"]]["User name"] == "'=2+3"
    doc = json.loads(Path(out["json"]).read_text(encoding="utf-8"))
    assert set(doc) == {"Records"}
    got = {r["eventID"]: r for r in doc["Records"]}
    assert set(got) == set(want)
    for event_id, rec in want.items():
        for k in ("eventName", "eventTime", "eventSource", "userIdentity", "requestID"):
            assert got[event_id][k] == rec[k], (k, got[event_id][k], rec[k])


def test_wizard_creates_a_trail_that_delivers_then_stop_and_start(server, setup):
    since = utcnow() - dt.timedelta(seconds=2)
    scenario(setup, "wizard")
    w = setup.wizard
    t = setup.ct.get_trail(Name=w["name"])["Trail"]
    assert t["S3BucketName"] == w["bucket"] and t["S3KeyPrefix"] == w["prefix"]
    assert t["LogFileValidationEnabled"] is True and t["IsMultiRegionTrail"] is True
    sel = setup.ct.get_event_selectors(TrailName=w["name"])["EventSelectors"][0]
    assert sel["ReadWriteType"] == "WriteOnly"
    assert sel["ExcludeManagementEventSources"] == ["kms.amazonaws.com"]
    tags = setup.ct.list_tags(ResourceIdList=[t["TrailARN"]])["ResourceTagList"][0]["TagsList"]
    assert tags == [{"Key": "team", "Value": "audit"}]
    assert setup.ct.get_trail_status(Name=w["name"])["IsLogging"] is True
    logs = list((Path(server.data_dir) / "buckets" / w["bucket"] / w["prefix"] / "AWSLogs").rglob("*.json.gz"))
    assert logs, "the trail delivered its first log file"
    # The console's calls are recorded as the signed-in user's, from the console.
    for name in ("CreateTrail", "PutEventSelectors", "StartLogging", "StopLogging"):
        recs = poll_until(f"the {name} record", lambda: console_records(
            setup.ct, name, since, sessionCredentialFromConsole="true"), timeout=5)
        assert recs[0]["userIdentity"]["type"] == "Root", recs[0]
        assert "Chrome" in recs[0]["userAgent"]


def test_edit_tags_insights_and_delete_a_trail(server, setup):
    name, bucket = f"manage-{uid()}", f"manage-{uid()}"
    (Path(server.data_dir) / "buckets" / bucket).mkdir(parents=True)
    setup.ct.create_trail(Name=name, S3BucketName=bucket, TagsList=[{"Key": "keep", "Value": "yes"}])
    setup.cfg["manage"] = {"name": name}
    since = utcnow() - dt.timedelta(seconds=2)
    scenario(setup, "manage")
    assert setup.ct.describe_trails(trailNameList=[name])["trailList"] == [], "the trail is deleted"
    for event_name in ("UpdateTrail", "AddTags", "RemoveTags", "PutInsightSelectors", "DeleteTrail"):
        poll_until(f"the console's {event_name} record", lambda: console_records(
            setup.ct, event_name, since, sessionCredentialFromConsole="true"), timeout=5)
    failed = console_records(setup.ct, "UpdateTrail", since, errorCode="S3BucketDoesNotExistException")
    assert failed, "the refused edit is recorded with its error"


def test_read_only_user_sees_but_cannot_change_trails(setup):
    since = utcnow() - dt.timedelta(seconds=2)
    out = scenario(setup, "readonly")
    assert "AccessDeniedException" in out["refused"]["__type"]
    assert setup.ct.get_trail_status(Name=setup.insights_trail)["IsLogging"] is True
    recs = poll_until("the refused StopLogging record", lambda: console_records(
        setup.ct, "StopLogging", since, errorCode="AccessDenied"), timeout=5)
    assert recs[0]["userIdentity"]["userName"] == setup.auditor_name
    assert recs[0]["sessionCredentialFromConsole"] == "true"


def test_insight_chart_and_attributions(setup):
    scenario(setup, "insight")


# ---------------------------------------------------------------------------------------------
# Session rules over plain HTTP
# ---------------------------------------------------------------------------------------------


def sign_in(server, key: str, secret: str) -> tuple[requests.Session, dict, requests.Response]:
    s = requests.Session()
    r = s.post(f"{server.url}/console/api/signin", json={"AccessKeyId": key, "SecretAccessKey": secret}, timeout=10)
    return s, (r.json() if r.ok else {}), r


def test_session_cookie_csrf_and_sign_out(server, setup):
    s, info, r = sign_in(server, FAKE_ACCESS_KEY, FAKE_SECRET_KEY)
    assert r.status_code == 200, r.text
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert "Max-Age=43200" in cookie
    assert info["User"]["Arn"] == f"arn:aws:iam::{ACCOUNT_ID}:root"
    url = f"{server.url}/console/api/call/DescribeTrails"
    # No CSRF token, a wrong one, another site's Origin: refused. The right one: answered.
    for headers in ({}, {"X-OpenTrail-Csrf": "nope"},
                    {"X-OpenTrail-Csrf": info["CsrfToken"], "Origin": "https://evil.example"}):
        refused = s.post(url, json={}, headers=headers, timeout=10)
        assert refused.status_code == 403 and "AccessDenied" in refused.json()["__type"], refused.text
    ok = s.post(url, json={}, headers={"X-OpenTrail-Csrf": info["CsrfToken"]}, timeout=10)
    assert ok.status_code == 200 and "trailList" in ok.json(), ok.text
    # Without the cookie nothing is answered.
    anon = requests.post(url, json={}, headers={"X-OpenTrail-Csrf": info["CsrfToken"]}, timeout=10)
    assert anon.status_code == 403 and "MissingAuthenticationToken" in anon.json()["__type"]
    # Signing out ends the session on the server, not just in the browser.
    token = s.cookies.get("opentrail_session")
    assert s.post(f"{server.url}/console/api/signout", headers={"X-OpenTrail-Csrf": info["CsrfToken"]},
                  timeout=10).status_code == 200
    replay = requests.get(f"{server.url}/console/api/session", cookies={"opentrail_session": token}, timeout=10)
    assert replay.status_code == 403


def test_deactivated_key_ends_its_session(server, setup):
    name = f"shortlived-{uid()}"
    run_iam(server, "create-user", "--user-name", name)
    key = run_iam(server, "create-access-key", "--user-name", name)["AccessKey"]
    s, info, r = sign_in(server, key["AccessKeyId"], key["SecretAccessKey"])
    assert r.status_code == 200
    assert info["Permissions"]["CreateTrail"] is False, "no policy: no write buttons"
    assert s.get(f"{server.url}/console/api/session", timeout=10).status_code == 200
    run_iam(server, "update-access-key", "--user-name", name, "--access-key-id", key["AccessKeyId"],
            "--status", "Inactive")
    assert s.get(f"{server.url}/console/api/session", timeout=10).status_code == 403
    _, _, again = sign_in(server, key["AccessKeyId"], key["SecretAccessKey"])
    assert again.status_code == 403 and "InvalidClientTokenId" in again.json()["__type"]


def test_assets_are_embedded_with_a_strict_policy(server):
    for path, kind in [("/console/", "text/html"), ("/console/assets/app.js", "text/javascript"),
                       ("/console/assets/app.css", "text/css"), ("/console/assets/icon.svg", "image/svg+xml")]:
        r = requests.get(f"{server.url}{path}", timeout=10)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith(kind), (path, r.headers)
        assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    page = requests.get(f"{server.url}/console/", timeout=10).text
    assert "http://" not in page and "https://" not in page, "nothing is fetched from elsewhere"
    assert requests.get(f"{server.url}/console/assets/nope.js", timeout=10).status_code == 404
    r = requests.get(f"{server.url}/console", allow_redirects=False, timeout=10)
    assert r.status_code == 303 and r.headers["Location"] == "/console/"


def test_download_needs_a_session_and_valid_input(server, setup):
    r = requests.get(f"{server.url}/console/api/download", params={"format": "csv"}, timeout=10)
    assert r.status_code == 403
    s, info, _ = sign_in(server, FAKE_ACCESS_KEY, FAKE_SECRET_KEY)
    bad = s.get(f"{server.url}/console/api/download", params={"format": "xml"}, timeout=10)
    assert bad.status_code == 400 and "ValidationException" in bad.json()["__type"]
    bad = s.get(f"{server.url}/console/api/download", params={"format": "csv", "q": "{not json"}, timeout=10)
    assert bad.status_code == 400 and "SerializationException" in bad.json()["__type"], bad.text
    q = json.dumps({"LookupAttributes": attrs(("EventSource", setup.paging_source))})
    r = s.get(f"{server.url}/console/api/download", params={"format": "json", "q": q}, timeout=30)
    assert r.status_code == 200
    assert len(r.json()["Records"]) == setup.paging_count
    assert r.headers["Content-Disposition"].startswith("attachment; filename=\"event-history-")
