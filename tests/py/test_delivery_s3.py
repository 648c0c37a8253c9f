"""Trail delivery into a real S3-compatible server (s3s-fs), an S3 outage,
and a bucket deleted under a logging trail.

The module runs one s3s-fs process (module-scoped ``s3`` fixture) that is
started BEFORE the module's OpenTrail server; ``SERVER_ENV`` points the
server's bucket store at it (``OPENTRAIL_S3_ENDPOINT`` and friends), so every
bucket of this module lives on s3s-fs.  Buckets are created and read back
with a boto3 s3 client (path-style addressing).

s3s-fs binary: ``$OPENTRAIL_S3S_FS``, else ``s3s-fs`` on PATH, else
``~/.cache/opentrail-tools/bin/s3s-fs``, else ``~/.cargo/bin/s3s-fs``.

One emulator gap matters here: s3s-fs 0.14.1's PutObject does not check that
the bucket exists -- it silently recreates the bucket directory -- while real
S3 answers ``404 NoSuchBucket``.  The deleted-bucket test therefore gives a
second OpenTrail server an endpoint that is a small pass-through proxy in
front of the same s3s-fs which adds exactly that one S3 rule (object PUT into
a bucket that does not exist -> NoSuchBucket) and forwards everything else
byte for byte (the SigV4 signature stays valid).

Every delivered file is checked the same way: key layout (regex), date
folders equal to the file name's timestamp, exactly one gzip member, UTF-8
JSON ``{"Records": [...]}``, each record in the file's account and region.
The tests select their own events by a per-test user name (CloudTrail API
calls made by the tests become self-audit records that the trails deliver
too) and compare them with what was sent.
"""

from __future__ import annotations

import datetime as dt
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import (
    FAKE_ACCESS_KEY,
    FAKE_SECRET_KEY,
    ACCOUNT_ID,
    OpenTrailServer,
    assert_record_roundtrip,
    attrs,
    cloudtrail_client,
    free_port,
    json_equal,
    make_record,
    uid,
    gunzip_single_member,
    signed_session,
)

S3_PORT = free_port()
S3_ENDPOINT = f"http://127.0.0.1:{S3_PORT}"
# The S3 server takes the same key as OpenTrail's root user, as one AWS
# credential does for both services (the AWS CLI's validate-logs signs its
# CloudTrail and S3 calls with the same key).
S3_ACCESS_KEY = FAKE_ACCESS_KEY
S3_SECRET_KEY = FAKE_SECRET_KEY

DELIVERY_ENV = {
    "OPENTRAIL_DELIVERY_INTERVAL": "1s",
    "OPENTRAIL_DELIVERY_MAX_BACKOFF": "1s",
}
SERVER_ENV = {
    **DELIVERY_ENV,
    "OPENTRAIL_S3_ENDPOINT": S3_ENDPOINT,
    "OPENTRAIL_S3_REGION": "us-east-1",
    "OPENTRAIL_S3_ACCESS_KEY_ID": S3_ACCESS_KEY,
    "OPENTRAIL_S3_SECRET_ACCESS_KEY": S3_SECRET_KEY,
}

HOME = "us-east-1"
OTHER = "eu-west-1"
DELIVERY_TIMEOUT_S = 30.0
S3_READY_TIMEOUT_S = 20.0
# After the last awaited event showed up, how long to keep watching for
# duplicates or events that must not be delivered (several 1 s intervals).
SETTLE_S = 3.0

KEY_RE = re.compile(
    r"^(?:(?P<prefix>.+)/)?AWSLogs/(?P<account>\d{12})/CloudTrail/(?P<region>[a-z]{2}(?:-[a-z]+)+-\d)/"
    r"(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/"
    r"(?P=account)_CloudTrail_(?P=region)_(?P<stamp>\d{8}T\d{4}Z)_[0-9A-Za-z]{16}\.json\.gz$"
)


# ---------------------------------------------------------------------------
# s3s-fs
# ---------------------------------------------------------------------------


def s3s_fs_binary() -> str:
    candidates = []
    env = os.environ.get("OPENTRAIL_S3S_FS")
    if env:
        candidates.append(env)
    found = shutil.which("s3s-fs")
    if found:
        candidates.append(found)
    home = Path.home()
    candidates += [str(home / ".cache/opentrail-tools/bin/s3s-fs"), str(home / ".cargo/bin/s3s-fs")]
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    if env:
        pytest.fail(f"OPENTRAIL_S3S_FS={env!r} is not an executable file", pytrace=False)
    pytest.fail(
        "s3s-fs not found: set OPENTRAIL_S3S_FS, put s3s-fs on PATH, or install it "
        f"(cargo install s3s-fs --version 0.14.1 --features binary); looked at {candidates}",
        pytrace=False,
    )
    raise AssertionError("unreachable")


def s3_client(endpoint: str = S3_ENDPOINT):
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
            connect_timeout=2,
            read_timeout=30,
        ),
    )


class S3sFs:
    """An s3s-fs process on a fixed port and root directory (restartable)."""

    def __init__(self, binary: str, root: Path, log_path: Path, port: int):
        self.binary = binary
        self.root = root
        self.log_path = log_path
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.client = s3_client(self.endpoint)

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "s3s-fs already running"
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== s3s-fs start at {dt.datetime.now(dt.timezone.utc).isoformat()} ===\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "--host", "127.0.0.1",
                    "--port", str(self.port),
                    "--access-key", S3_ACCESS_KEY,
                    "--secret-key", S3_SECRET_KEY,
                    str(self.root),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + S3_READY_TIMEOUT_S
        last = "no attempt"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"s3s-fs exited with status {self.proc.returncode} at start\n{self.log_tail()}",
                    pytrace=False,
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                self.client.list_buckets()
                return
            except Exception as e:  # noqa: BLE001 - any failure means "not ready yet"
                last = repr(e)
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"s3s-fs not ready within {S3_READY_TIMEOUT_S} s (last: {last})\n{self.log_tail()}",
                    pytrace=False)

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def errors_since(self, mark: int) -> list[str]:
        """s3s-fs ERROR lines logged after ``mark`` (a log_size())."""
        with open(self.log_path, "rb") as f:
            f.seek(mark)
            text = f.read().decode(errors="replace")
        return [line.strip() for line in text.splitlines() if " ERROR " in line]

    def log_tail(self, n: int = 4000) -> str:
        try:
            return f"s3s-fs log ({self.log_path}):\n" + self.log_path.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return "(no s3s-fs log)"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("s3s-fs")
    root = base / "root"
    root.mkdir()
    srv = S3sFs(s3s_fs_binary(), root, base / "s3s-fs.log", S3_PORT)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def server(s3, server):  # noqa: F811 - extends conftest's fixture
    """conftest's server, but only once s3s-fs is up (it must be reachable
    before the first CreateTrail)."""
    return server


@pytest.fixture
def trails(server):
    """Names of trails a test created; deleted afterwards."""
    made: list[str] = []
    yield made
    ct = cloudtrail_client(server)
    for name in made:
        try:
            ct.delete_trail(Name=name)
        except ClientError:
            pass


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def bucket_name(prefix: str = "otd") -> str:
    return f"{prefix}-{uid()}"


def create_bucket(client, name: str) -> str:
    client.create_bucket(Bucket=name)
    return name


def list_keys(client, bucket: str) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return keys



def parse_log_file(key: str, data: bytes) -> list[dict]:
    """Check one delivered object and return its records."""
    m = KEY_RE.match(key)
    assert m, f"object key does not follow the CloudTrail layout: {key!r}"
    stamp = m["stamp"]
    assert stamp[:8] == f"{m['y']}{m['m']}{m['d']}", f"{key}: date folders disagree with the file name"
    dt.datetime.strptime(stamp, "%Y%m%dT%H%MZ")  # a real date and time
    text = gunzip_single_member(data, key).decode("utf-8")
    doc = json.loads(text)
    assert isinstance(doc, dict) and list(doc.keys()) == ["Records"], f"{key}: not {{\"Records\": [...]}}: {text[:300]}"
    records = doc["Records"]
    assert isinstance(records, list) and records, f"{key}: Records is empty or not a list"
    for r in records:
        assert isinstance(r, dict), f"{key}: record is not an object: {r!r}"
        assert r.get("awsRegion") == m["region"], f"{key}: record of region {r.get('awsRegion')!r} in a {m['region']} file"
        assert r.get("recipientAccountId") == m["account"], (
            f"{key}: record of account {r.get('recipientAccountId')!r} in a {m['account']} file"
        )
    return records


class Delivered:
    """Everything in one bucket (optionally under a prefix), parsed."""

    def __init__(self, files: dict[str, list[dict]]):
        self.files = files

    def records(self):
        for key, recs in self.files.items():
            for r in recs:
                yield key, r

    def by_id(self) -> dict[str, list[tuple[str, dict]]]:
        out: dict[str, list[tuple[str, dict]]] = {}
        for key, r in self.records():
            out.setdefault(r.get("eventID"), []).append((key, r))
        return out

    def marked(self, marker: str) -> dict[str, list[tuple[str, dict]]]:
        """Test events (userName == marker) by eventID."""
        return {
            eid: hits
            for eid, hits in self.by_id().items()
            if any((r.get("userIdentity") or {}).get("userName") == marker for _, r in hits)
        }

    def duplicates(self) -> dict[str, list[str]]:
        return {eid: [k for k, _ in hits] for eid, hits in self.by_id().items() if len(hits) > 1}


def read_bucket(client, bucket: str, prefix: str | None = None,
                cache: dict[str, list[dict]] | None = None) -> Delivered:
    """Parse every object of the bucket.  Objects are create-only, so a key
    already parsed (``cache``) is not fetched again."""
    files: dict[str, list[dict]] = {}
    for key in list_keys(client, bucket):
        if prefix is not None:
            assert key.startswith(prefix + "/"), f"object outside the trail's prefix {prefix!r}: {key!r}"
        if cache is not None and key in cache:
            files[key] = cache[key]
            continue
        data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        files[key] = parse_log_file(key, data)
        if cache is not None:
            cache[key] = files[key]
    return Delivered(files)


def wait_delivered(client, bucket: str, marker: str, want: set[str], *, prefix: str | None = None,
                   timeout: float = DELIVERY_TIMEOUT_S, what: str = "") -> Delivered:
    cache: dict[str, list[dict]] = {}
    deadline = time.monotonic() + timeout
    while True:
        got = read_bucket(client, bucket, prefix, cache)
        missing = want - set(got.marked(marker))
        if not missing:
            return got
        if time.monotonic() >= deadline:
            pytest.fail(
                f"{what or bucket}: {len(missing)} of {len(want)} events not delivered after {timeout:.0f} s "
                f"(e.g. {sorted(missing)[:5]}); files: {sorted(got.files)}"
            )
        time.sleep(0.3)


def status(ct, name: str) -> dict:
    return {k: v for k, v in ct.get_trail_status(Name=name).items() if k != "ResponseMetadata"}


def new_trail(ct, trails: list, bucket: str, **kw: Any) -> str:
    name = f"deliv-{uid()}"
    ct.create_trail(Name=name, S3BucketName=bucket, **kw)
    trails.append(name)
    return name


def rec(marker: str, *, region: str = HOME, read_only: bool = False, **kw: Any) -> dict:
    return make_record(user_name=marker, awsRegion=region, readOnly=read_only,
                       eventName="DescribeInstances" if read_only else "RunInstances",
                       eventSource="ec2.amazonaws.com", **kw)


class Ingester(threading.Thread):
    """Ingests one record every ``period`` seconds on its own HTTP session;
    records what was acknowledged and every problem (non-200, errors, slow
    answers)."""

    def __init__(self, url: str, marker: str, period: float = 0.1, slow_s: float = 2.0):
        super().__init__(daemon=True)
        self.url = url
        self.marker = marker
        self.period = period
        self.slow_s = slow_s
        self.stop_evt = threading.Event()
        self.acked: list[str] = []
        self.sent: dict[str, dict] = {}
        self.problems: list[str] = []
        self.max_latency = 0.0
        self.lock = threading.Lock()

    def run(self) -> None:
        sess = signed_session()
        while not self.stop_evt.is_set():
            r0 = rec(self.marker)
            t0 = time.monotonic()
            try:
                resp = sess.post(f"{self.url}/v1/events", json={"Records": [r0]}, timeout=30)
                elapsed = time.monotonic() - t0
                with self.lock:
                    self.max_latency = max(self.max_latency, elapsed)
                    if resp.status_code == 200 and resp.json().get("EventIds") == [r0["eventID"]]:
                        self.acked.append(r0["eventID"])
                        self.sent[r0["eventID"]] = r0
                        if elapsed > self.slow_s:
                            self.problems.append(f"ingest took {elapsed:.2f} s at {time.time():.1f}")
                    else:
                        self.problems.append(f"ingest answered HTTP {resp.status_code}: {resp.text[:300]}")
            except requests.RequestException as e:
                with self.lock:
                    self.problems.append(f"ingest failed: {e!r}")
            self.stop_evt.wait(self.period)

    def stop(self) -> None:
        self.stop_evt.set()
        self.join(timeout=60)
        assert not self.is_alive(), "ingest thread did not stop"

    def snapshot(self) -> tuple[list[str], list[str]]:
        with self.lock:
            return list(self.acked), list(self.problems)


def assert_exactly_once(got: Delivered, marker: str, acked: set[str], what: str) -> None:
    marked = got.marked(marker)
    missing = acked - set(marked)
    extra = set(marked) - acked
    dups = {eid: [k for k, _ in hits] for eid, hits in marked.items() if len(hits) > 1}
    assert not missing, f"{what}: {len(missing)} acknowledged events never delivered: {sorted(missing)[:10]}"
    assert not dups, f"{what}: events delivered more than once: {dict(list(dups.items())[:5])}"
    assert not extra, f"{what}: delivered events that were never acknowledged: {sorted(extra)[:10]}"
    all_dups = got.duplicates()
    assert not all_dups, f"{what}: eventIDs (incl. self-audit) in more than one place: {dict(list(all_dups.items())[:5])}"


# ---------------------------------------------------------------------------
# 1. CreateTrail checks the bucket on S3
# ---------------------------------------------------------------------------


def test_create_trail_requires_existing_s3_bucket(server, s3, trails):
    ct = cloudtrail_client(server)
    bucket = bucket_name("otm")
    name = f"deliv-{uid()}"
    with pytest.raises(ClientError) as ei:
        ct.create_trail(Name=name, S3BucketName=bucket)
    err = ei.value.response
    assert err["Error"]["Code"] == "S3BucketDoesNotExistException", err
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 404, err
    assert name not in [t["Name"] for t in ct.list_trails()["Trails"]]

    create_bucket(s3.client, bucket)
    created = ct.create_trail(Name=name, S3BucketName=bucket)
    trails.append(name)
    assert created["Name"] == name
    assert created["S3BucketName"] == bucket
    assert ct.get_trail(Name=name)["Trail"]["S3BucketName"] == bucket


# ---------------------------------------------------------------------------
# 2. Delivery into S3: layout, content, regions, selectors
# ---------------------------------------------------------------------------


def test_delivery_layout_content_regions_and_selectors(server, s3, trails):
    ct = cloudtrail_client(server)
    marker = f"deliv-user-{uid()}"
    t_start = dt.datetime.now(dt.timezone.utc)
    s3_mark = s3.log_size()

    # Trail A: multi-region, with a two-level key prefix, default selectors.
    bucket_a = create_bucket(s3.client, bucket_name())
    # Short names: s3s-fs keeps per-object metadata in a file named after
    # base64(bucket) + base64(key), which must fit in 255 bytes.
    prefix_a = f"p{uid()[:4]}/ct"
    trail_a = new_trail(ct, trails, bucket_a, S3KeyPrefix=prefix_a, IsMultiRegionTrail=True)
    # Trail B: single-region (us-east-1), no prefix, WriteOnly (set before StartLogging).
    bucket_b = create_bucket(s3.client, bucket_name())
    trail_b = new_trail(ct, trails, bucket_b)
    ct.put_event_selectors(
        TrailName=trail_b,
        EventSelectors=[{"ReadWriteType": "WriteOnly", "IncludeManagementEvents": True}],
    )
    ct.start_logging(Name=trail_a)
    ct.start_logging(Name=trail_b)

    write_home = [rec(marker, requestParameters={"n": i, "nested": {"x": [1, 2.5, True, None]}}) for i in range(4)]
    read_home = [rec(marker, read_only=True) for _ in range(3)]
    write_other = [rec(marker, region=OTHER) for _ in range(3)]
    read_other = [rec(marker, region=OTHER, read_only=True) for _ in range(2)]
    batch = [write_home[0], read_home[0], write_other[0], read_other[0], write_home[1],
             read_home[1], write_other[1], write_home[2], read_other[1], read_home[2], write_other[2]]
    assert server.ingest_ok(batch) == [r["eventID"] for r in batch]
    # A later write in the home region: once trail B has it, every record
    # ingested before it went through B's filter.
    sentinel = write_home[3]
    assert server.ingest_ok([sentinel]) == [sentinel["eventID"]]
    sent = {r["eventID"]: r for r in batch + [sentinel]}

    want_a = set(sent)
    want_b = {r["eventID"] for r in write_home}
    wait_delivered(s3.client, bucket_a, marker, want_a, prefix=prefix_a, what="trail A")
    wait_delivered(s3.client, bucket_b, marker, want_b, what="trail B")
    time.sleep(SETTLE_S)
    got_a = read_bucket(s3.client, bucket_a, prefix_a)
    got_b = read_bucket(s3.client, bucket_b)
    t_end = dt.datetime.now(dt.timezone.utc)

    # Key layout: prefix, account, region folder, delivery time (UTC minute).
    lo = t_start.replace(second=0, microsecond=0)
    for got, prefix in ((got_a, prefix_a), (got_b, None)):
        for key in got.files:
            m = KEY_RE.match(key)
            assert m["prefix"] == prefix, f"{key}: prefix {m['prefix']!r}, expected {prefix!r}"
            assert m["account"] == ACCOUNT_ID, key
            stamp = dt.datetime.strptime(m["stamp"], "%Y%m%dT%H%MZ").replace(tzinfo=dt.timezone.utc)
            assert lo <= stamp <= t_end, f"{key}: delivery time {stamp} outside [{lo}, {t_end}]"

    # Trail A: everything exactly once, eu-west-1 under CloudTrail/eu-west-1/.
    assert_exactly_once(got_a, marker, want_a, "trail A")
    marked_a = got_a.marked(marker)
    for eid, [(key, delivered)] in marked_a.items():
        region = sent[eid]["awsRegion"]
        assert f"{prefix_a}/AWSLogs/{ACCOUNT_ID}/CloudTrail/{region}/" in key, (eid, key)
        assert key.startswith(f"{prefix_a}/AWSLogs/{ACCOUNT_ID}/CloudTrail/{region}/"), (eid, key)
        assert_record_roundtrip(json.dumps(delivered), sent[eid])
    assert any(f"/CloudTrail/{OTHER}/" in k for k in got_a.files), sorted(got_a.files)

    # Trail B: only the home-region writes.
    marked_b = got_b.marked(marker)
    unexpected = set(marked_b) - want_b
    assert not unexpected, (
        "WriteOnly single-region trail B got events it must not: "
        + json.dumps([{"eventID": e, "awsRegion": sent[e]["awsRegion"], "readOnly": sent[e]["readOnly"]}
                      for e in sorted(unexpected)])
    )
    assert_exactly_once(got_b, marker, want_b, "trail B")
    for key, r in got_b.records():
        assert r.get("readOnly") is not True, f"trail B (WriteOnly) got a read-only record in {key}: {r.get('eventName')}"
        assert r.get("awsRegion") == HOME, key
    for eid, [(key, delivered)] in marked_b.items():
        assert key.startswith(f"AWSLogs/{ACCOUNT_ID}/CloudTrail/{HOME}/"), key
        assert_record_roundtrip(json.dumps(delivered), sent[eid])

    # Each delivered record is the record LookupEvents shows, exactly.
    for eid, [(key, delivered)] in marked_a.items():
        regional = cloudtrail_client(server, sent[eid]["awsRegion"])  # LookupEvents is regional
        events = regional.lookup_events(LookupAttributes=attrs(("EventId", eid)))["Events"]
        assert len(events) == 1, (eid, events)
        stored = json.loads(events[0]["CloudTrailEvent"])
        assert json_equal(delivered, stored), f"{key}: delivered {delivered!r} != LookupEvents {stored!r}"

    # s3s-fs itself never failed a request (its failures would be retried
    # by the server and could hide or fake behaviour).
    assert not s3.errors_since(s3_mark), s3.errors_since(s3_mark)[:6]

    # Status after successful deliveries.
    for name in (trail_a, trail_b):
        st = status(ct, name)
        assert st["IsLogging"] is True, st
        assert isinstance(st.get("LatestDeliveryTime"), dt.datetime), st
        assert st.get("LatestDeliveryAttemptTime"), st
        assert st.get("LatestDeliveryAttemptSucceeded"), st
        assert "LatestDeliveryError" not in st, st


# ---------------------------------------------------------------------------
# 3. S3 outage: ingest unaffected, error reported, backlog delivered once
# ---------------------------------------------------------------------------


def test_s3_outage_keeps_ingest_and_delivers_backlog_exactly_once(server, s3, trails):
    ct = cloudtrail_client(server)
    marker = f"outage-user-{uid()}"
    s3_mark = s3.log_size()
    bucket = create_bucket(s3.client, bucket_name("oto"))
    trail = new_trail(ct, trails, bucket)
    ct.start_logging(Name=trail)

    writer = Ingester(server.url, marker, period=0.1)
    writer.start()
    try:
        # Steady state first: the writer's events arrive.
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        while True:
            acked, _ = writer.snapshot()
            if acked and set(acked[:3]) <= set(read_bucket(s3.client, bucket).marked(marker)):
                break
            assert time.monotonic() < deadline, f"no delivery before the outage; acked {len(acked)}"
            time.sleep(0.3)
        before = status(ct, trail)
        assert "LatestDeliveryError" not in before, before

        # Outage.
        s3.stop()
        down_at = time.monotonic()
        errors_seen: list[tuple[str, str]] = []  # (LatestDeliveryError, LatestDeliveryAttemptTime)
        while True:
            st = status(ct, trail)
            if st.get("LatestDeliveryError"):
                errors_seen.append((st["LatestDeliveryError"], st.get("LatestDeliveryAttemptTime")))
            attempts = {a for _, a in errors_seen}
            elapsed = time.monotonic() - down_at
            if elapsed >= 7.0 and len(attempts) >= 2:
                break
            if elapsed >= 20.0:
                break
            time.sleep(0.25)
        outage_s = time.monotonic() - down_at
        acked_by_restart, _ = writer.snapshot()
        s3.start()
        up_at = time.monotonic()

        assert errors_seen, f"GetTrailStatus never showed a LatestDeliveryError during a {outage_s:.1f} s outage: {st}"
        assert all(isinstance(e, str) and e.strip() for e, _ in errors_seen), errors_seen
        attempts = sorted({a for _, a in errors_seen if a})
        assert len(attempts) >= 2, (
            f"LatestDeliveryAttemptTime did not move during the outage ({outage_s:.1f} s): {errors_seen}"
        )
        assert all(a > before.get("LatestDeliveryAttemptTime", "") for a in attempts), (before, attempts)

        # A few more events after the restart, then stop writing.
        while time.monotonic() - up_at < 1.0:
            time.sleep(0.1)
    finally:
        writer.stop()
    acked, problems = writer.snapshot()
    assert not problems, f"ingest was affected by the S3 outage: {problems[:10]} (max latency {writer.max_latency:.2f} s)"
    assert len(acked_by_restart) > 20, f"too few events acknowledged around the outage: {len(acked_by_restart)}"

    want = set(acked)
    got = wait_delivered(s3.client, bucket, marker, want, what="after the outage")
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    while True:
        st = status(ct, trail)
        if "LatestDeliveryError" not in st:
            break
        assert time.monotonic() < deadline, f"LatestDeliveryError still set after recovery: {st}"
        time.sleep(0.3)
    time.sleep(SETTLE_S)
    got = read_bucket(s3.client, bucket)
    assert_exactly_once(got, marker, want, "outage trail")
    for eid, [(_, delivered)] in got.marked(marker).items():
        assert_record_roundtrip(json.dumps(delivered), writer.sent[eid])
    st = status(ct, trail)
    assert "LatestDeliveryError" not in st, st
    assert st.get("LatestDeliveryAttemptSucceeded"), st
    assert not s3.errors_since(s3_mark), s3.errors_since(s3_mark)[:6]
    print(f"outage: {outage_s:.1f} s, acked {len(acked)}, files {len(got.files)}, "
          f"errors seen {sorted({e for e, _ in errors_seen})}, attempts {len(attempts)}, "
          f"max ingest latency {writer.max_latency:.3f} s")


# ---------------------------------------------------------------------------
# 4. Bucket deleted on S3 -> NoSuchBucket; recreated -> backlog exactly once
# ---------------------------------------------------------------------------


class _S3RulesProxy(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def _make_proxy_handler(upstream_port: int, root: Path, log: list[str]):
    hop = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:  # keep pytest output clean
            pass

        def _body(self) -> bytes:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                return b"".join(chunks)
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _handle(self) -> None:
            body = self._body()
            path = self.path.split("?", 1)[0]
            parts = path.lstrip("/").split("/", 1)
            bucket = parts[0]
            is_object = len(parts) == 2 and parts[1] != ""
            if self.command == "PUT" and is_object and bucket and not (root / bucket).is_dir():
                # Real S3: PutObject into a missing bucket is 404 NoSuchBucket
                # (s3s-fs 0.14.1 would recreate the bucket directory instead).
                xml = (
                    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchBucket</Code>'
                    "<Message>The specified bucket does not exist</Message>"
                    f"<BucketName>{bucket}</BucketName><RequestId>{uuid.uuid4().hex}</RequestId></Error>"
                ).encode()
                log.append(f"PUT {self.path} -> 404 NoSuchBucket")
                self.send_response(404)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(xml)))
                self.end_headers()
                self.wfile.write(xml)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
            if body or self.command in ("PUT", "POST"):
                headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
                headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in headers.items():
                    conn.putheader(k, v)
                conn.endheaders(body if body else None)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() in hop or k.lower() == "content-length":
                        continue
                    self.send_header(k, v)
                if self.command == "HEAD":
                    self.send_header("Content-Length", resp.getheader("Content-Length") or "0")
                    self.end_headers()
                else:
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                sse = self.headers.get("x-amz-server-side-encryption")
                log.append(f"{self.command} {self.path} -> {resp.status}"
                           + (f" sse={sse}" if sse else ""))
            finally:
                conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    return Handler


def test_deleted_bucket_reports_no_such_bucket_and_recreation_delivers_backlog(
        s3, opentrail_bin, tmp_path):
    proxy_log: list[str] = []
    proxy = _S3RulesProxy(("127.0.0.1", 0), _make_proxy_handler(s3.port, s3.root, proxy_log))
    proxy_thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    proxy_thread.start()
    endpoint = f"http://127.0.0.1:{proxy.server_address[1]}"
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    srv = OpenTrailServer(opentrail_bin, data_dir, tmp_path / "server.log", free_port(),
                          extra_env={**SERVER_ENV, "OPENTRAIL_S3_ENDPOINT": endpoint})
    srv.start()
    try:
        _deleted_bucket_scenario(srv, s3, endpoint)
    except BaseException:
        print(f"server log ({srv.log_path}):\n{srv.log_text()[-6000:]}")
        print("proxy log (tail):\n" + "\n".join(proxy_log[-40:]))
        print(s3.log_tail(2000))
        raise
    finally:
        srv.stop()
        proxy.shutdown()
        proxy.server_close()


def _deleted_bucket_scenario(srv: OpenTrailServer, s3: S3sFs, endpoint: str) -> None:
    ct = cloudtrail_client(srv)
    client = s3_client(endpoint)  # through the proxy, like the server
    marker = f"gone-user-{uid()}"
    bucket = create_bucket(client, bucket_name("otg"))
    trail = f"deliv-{uid()}"
    ct.create_trail(Name=trail, S3BucketName=bucket)
    ct.start_logging(Name=trail)

    first = [rec(marker) for _ in range(3)]
    srv.ingest_ok(first)
    wait_delivered(client, bucket, marker, {r["eventID"] for r in first}, what="before deletion")

    # Delete the bucket: all objects, then the bucket itself.
    for key in list_keys(client, bucket):
        client.delete_object(Bucket=bucket, Key=key)
    client.delete_bucket(Bucket=bucket)
    with pytest.raises(ClientError) as ei:
        client.list_objects_v2(Bucket=bucket)
    assert ei.value.response["Error"]["Code"] == "NoSuchBucket"

    backlog: dict[str, dict] = {}
    for _ in range(4):
        batch = [rec(marker) for _ in range(3)]
        assert srv.ingest_ok(batch) == [r["eventID"] for r in batch]
        backlog.update((r["eventID"], r) for r in batch)
        time.sleep(0.3)

    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    seen: list[dict] = []
    while True:
        st = status(ct, trail)
        seen.append(st)
        if st.get("LatestDeliveryError") == "NoSuchBucket":
            break
        assert time.monotonic() < deadline, (
            f"LatestDeliveryError never became 'NoSuchBucket' after the bucket was deleted; "
            f"last statuses: {seen[-3:]}"
        )
        time.sleep(0.25)
    # It keeps trying (attempt time moves) and keeps reporting the error.
    t_first = st.get("LatestDeliveryAttemptTime")
    deadline = time.monotonic() + 15
    while True:
        st2 = status(ct, trail)
        if st2.get("LatestDeliveryAttemptTime") != t_first:
            break
        assert time.monotonic() < deadline, f"no new delivery attempt while the bucket is missing: {st2}"
        time.sleep(0.25)
    assert st2.get("LatestDeliveryError") == "NoSuchBucket", st2
    # Ingest is unaffected meanwhile.
    more = [rec(marker) for _ in range(3)]
    assert srv.ingest_ok(more) == [r["eventID"] for r in more]
    backlog.update((r["eventID"], r) for r in more)
    assert not list(Path(s3.root).glob(f"{bucket}")), "the bucket came back although nobody created it"

    create_bucket(client, bucket)
    got = wait_delivered(client, bucket, marker, set(backlog), what="backlog after recreation")
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    while True:
        st3 = status(ct, trail)
        if "LatestDeliveryError" not in st3:
            break
        assert time.monotonic() < deadline, f"LatestDeliveryError still set after the bucket came back: {st3}"
        time.sleep(0.3)
    time.sleep(SETTLE_S)
    got = read_bucket(client, bucket)
    # The files written before the deletion are gone; everything after it
    # arrives exactly once.
    assert_exactly_once(got, marker, set(backlog), "recreated bucket")
    for eid, [(_, delivered)] in got.marked(marker).items():
        assert_record_roundtrip(json.dumps(delivered), backlog[eid])
    assert st3.get("LatestDeliveryAttemptSucceeded"), st3


# ---------------------------------------------------------------------------
# 5. opentrail logs get from an S3 bucket
# ---------------------------------------------------------------------------


def test_logs_cli_fetches_from_s3(server, s3, trails, tmp_path):
    client = s3_client()
    bucket = create_bucket(client, bucket_name("otl"))
    ct = cloudtrail_client(server)
    name = new_trail(ct, trails, bucket)
    ct.start_logging(Name=name)
    marker = f"cli-{uid()}"
    ids = set(server.ingest_ok([rec(marker) for _ in range(3)]))
    wait_delivered(client, bucket, marker, ids)
    keys = sorted(list_keys(client, bucket))
    dest = tmp_path / "fetched"
    out = subprocess.run(
        [server.binary, "logs", "get", "--bucket", bucket, "--out", str(dest),
         "--data-dir", str(server.data_dir)],
        env=server._env(), capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    fetched = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert fetched == keys, "logs get fetched exactly the bucket's log files"
    for k in keys:
        assert (dest / k).read_bytes() == client.get_object(Bucket=bucket, Key=k)["Body"].read()


# ---------------------------------------------------------------------------
# 6. A trail with a KMS key on an S3 store
# ---------------------------------------------------------------------------


def test_encrypted_trail_on_s3_stores_only_ciphertext_and_logs_get_decrypts(server, s3, trails,
                                                                           tmp_path):
    import base64
    import gzip

    kms = boto3.session.Session().client(
        "kms", region_name=HOME, endpoint_url=server.url,
        aws_access_key_id=FAKE_ACCESS_KEY, aws_secret_access_key=FAKE_SECRET_KEY,
        config=Config(retries={"max_attempts": 1}))
    key = kms.create_key(Description="s3 trail")["KeyMetadata"]
    client = s3_client()
    bucket = create_bucket(client, bucket_name("otk"))
    ct = cloudtrail_client(server)
    name = new_trail(ct, trails, bucket, KmsKeyId=key["KeyId"])
    ct.start_logging(Name=name)
    marker = f"kms-{uid()}"
    ids = set(server.ingest_ok([rec(marker) for _ in range(5)]))

    dest = tmp_path / "fetched"

    def fetch_mine(want: set[str]) -> list[str]:
        """``opentrail logs get`` (decrypting) until every id of ``want`` is there."""
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        while True:
            shutil.rmtree(dest, ignore_errors=True)
            env = {**server._env(), "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY,
                   "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY}
            out = subprocess.run(
                [server.binary, "logs", "get", "--bucket", bucket, "--out", str(dest),
                 "--data-dir", str(server.data_dir), "--endpoint-url", server.url],
                env=env, capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr
            got = []
            for p in dest.rglob("*.json.gz"):
                got += json.loads(gzip.decompress(p.read_bytes()))["Records"]
            mine = [r["eventID"] for r in got
                    if r.get("userIdentity", {}).get("userName") == marker]
            if want <= set(mine) or time.monotonic() > deadline:
                return mine
            time.sleep(0.5)

    # Part of the stream before a rotation of the key's material, part after.
    fetch_mine(ids)
    kms.rotate_key_on_demand(KeyId=key["KeyId"])
    ids |= set(server.ingest_ok([rec(marker) for _ in range(5)]))
    mine = fetch_mine(ids)
    assert set(mine) == ids and len(mine) == len(ids), "each acknowledged record once"
    keys = list_keys(client, bucket)
    assert keys
    for k in keys:
        obj = client.get_object(Bucket=bucket, Key=k)
        raw = obj["Body"].read()
        assert raw[:2] != b"\x1f\x8b", k
        meta = obj["Metadata"]
        assert meta["x-amz-kms-key-arn"] == key["Arn"]
        assert meta["x-amz-cek-alg"] == "AES/GCM/NoPadding"
        dk = kms.decrypt(CiphertextBlob=base64.b64decode(meta["x-amz-key-v2"]),
                         EncryptionContext=json.loads(meta["x-amz-matdesc"]))
        assert len(dk["Plaintext"]) == 32
        # The fetched copy is the plaintext of exactly this object.
        assert int(meta["x-amz-unencrypted-content-length"]) == len((dest / k).read_bytes())


def test_server_side_encryption_is_asked_of_the_store_on_every_write(s3, opentrail_bin, tmp_path):
    """``s3_server_side_encryption = AES256``: every object PUT carries
    ``x-amz-server-side-encryption: AES256`` (seen by a pass-through proxy), and the objects
    still arrive whole."""
    proxy_log: list[str] = []
    proxy = _S3RulesProxy(("127.0.0.1", 0), _make_proxy_handler(s3.port, s3.root, proxy_log))
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{proxy.server_address[1]}"
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    srv = OpenTrailServer(opentrail_bin, data_dir, tmp_path / "server.log", free_port(),
                          extra_env={**SERVER_ENV, "OPENTRAIL_S3_ENDPOINT": endpoint,
                                     "OPENTRAIL_S3_SERVER_SIDE_ENCRYPTION": "AES256"})
    srv.start()
    try:
        client = s3_client()
        bucket = create_bucket(client, bucket_name("sse"))
        ct = cloudtrail_client(srv)
        name = f"sse-{uid()}"
        ct.create_trail(Name=name, S3BucketName=bucket)
        ct.start_logging(Name=name)
        marker = f"sse-{uid()}"
        ids = set(srv.ingest_ok([rec(marker) for _ in range(3)]))
        wait_delivered(client, bucket, marker, ids)
        puts = [line for line in proxy_log if line.startswith("PUT ") and "/AWSLogs/" in line]
        assert puts, proxy_log[-20:]
        assert all(line.endswith("sse=AES256") for line in puts), puts
    finally:
        srv.stop()
        proxy.shutdown()


def test_an_unknown_server_side_encryption_is_refused_at_start(opentrail_bin, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = {**os.environ, "OPENTRAIL_DATA_DIR": str(data_dir),
           "OPENTRAIL_S3_SERVER_SIDE_ENCRYPTION": "ROT13"}
    p = subprocess.run([opentrail_bin, "serve", "--listen", f"127.0.0.1:{free_port()}"],
                       env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    assert "s3_server_side_encryption" in p.stderr and "ROT13" in p.stderr, p.stderr
