"""Crash safety of trail delivery on the local bucket store.

One logging trail (single-region us-east-1, WriteOnly selectors put before
StartLogging) delivers into ``<data_dir>/buckets/NAME``.  A writer thread
ingests small batches all the time, mixing events the trail must get
(readOnly false, us-east-1) with events it must never get (readOnly true
and/or awsRegion eu-west-1), while the main thread SIGKILLs and restarts the
server (``server.kill9()``) after a random 0.3-2.0 s, round after round.

Every batch is "acked" when the ingest answered 200 with the batch's
EventIds, and "maybe" when the request failed in any other way (connection
refused or dropped, timeout, non-200): such a batch may or may not have been
stored.  Afterwards, over the union of all the trail's files:

* every acked should-get event is delivered exactly once;
* no eventID (the test's or the server's self-audit records) appears twice;
* every delivered test event was acked or maybe;
* no should-not-get event ever appears;
* the bucket holds nothing but complete ``*.json.gz`` log files (no staging
  or temporary files), each one gzip member with ``{"Records": [...]}``.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
import uuid
from pathlib import Path

import requests

from conftest import (
    ACCOUNT_ID,
    assert_record_roundtrip,
    cloudtrail_client,
    gunzip_single_member,
    make_record,
    uid,
    signed_session,
)

SERVER_ENV = {
    "OPENTRAIL_DELIVERY_INTERVAL": "1s",
    "OPENTRAIL_DELIVERY_MAX_BACKOFF": "1s",
}

HOME = "us-east-1"
OTHER = "eu-west-1"
ROUNDS = 14
BATCH = 4
CATCH_UP_S = 60.0
SETTLE_S = 3.0

KEY_RE = re.compile(
    rf"^AWSLogs/{ACCOUNT_ID}/CloudTrail/{HOME}/(?P<y>\d{{4}})/(?P<m>\d{{2}})/(?P<d>\d{{2}})/"
    rf"{ACCOUNT_ID}_CloudTrail_{HOME}_(?P<stamp>\d{{8}})T\d{{4}}Z_[0-9A-Za-z]{{16}}\.json\.gz$"
)

# (readOnly, awsRegion) -> should the trail get it?
KINDS = [
    ((False, HOME), True),
    ((False, HOME), True),
    ((True, HOME), False),
    ((False, OTHER), False),
    ((True, OTHER), False),
]


class Writer(threading.Thread):
    """Ingests batches until stopped; survives the server going away."""

    def __init__(self, url: str, marker: str, seed: int):
        super().__init__(daemon=True)
        self.url = url
        self.marker = marker
        self.rng = random.Random(seed)
        self.stop_evt = threading.Event()
        self.lock = threading.Lock()
        self.acked: dict[str, dict] = {}
        self.maybe: dict[str, dict] = {}
        self.should_get: set[str] = set()
        self.failures: dict[str, int] = {}
        self.batches = 0
        self.crashed: BaseException | None = None

    def record(self) -> dict:
        (read_only, region), get = self.rng.choice(KINDS)
        r = make_record(
            user_name=self.marker,
            eventID=str(uuid.uuid4()),
            awsRegion=region,
            readOnly=read_only,
            eventSource="ec2.amazonaws.com",
            eventName="DescribeInstances" if read_only else "RunInstances",
        )
        if get:
            with self.lock:
                self.should_get.add(r["eventID"])
        return r

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.crashed = e

    def _run(self) -> None:
        sess = signed_session()
        while not self.stop_evt.is_set():
            batch = [self.record() for _ in range(BATCH)]
            ids = [r["eventID"] for r in batch]
            outcome = "maybe"
            try:
                resp = sess.post(f"{self.url}/v1/events", json={"Records": batch}, timeout=15)
                if resp.status_code == 200 and resp.json().get("EventIds") == ids:
                    outcome = "acked"
                else:
                    reason = f"HTTP {resp.status_code}"
            except (requests.RequestException, ValueError) as e:
                reason = type(e).__name__
                sess.close()
                sess = signed_session()
            with self.lock:
                self.batches += 1
                target = self.acked if outcome == "acked" else self.maybe
                for r in batch:
                    target[r["eventID"]] = r
                if outcome == "maybe":
                    self.failures[reason] = self.failures.get(reason, 0) + 1
            self.stop_evt.wait(0.03 if outcome == "acked" else 0.05)

    def stop(self) -> None:
        self.stop_evt.set()
        self.join(timeout=60)
        assert not self.is_alive(), "writer thread did not stop"



def scan_bucket(root: Path, cache: dict[str, list[dict]]) -> tuple[dict[str, list[dict]], list[str]]:
    """All log files under the bucket directory (parsed; cached by key) and
    every file that is not a finished log file."""
    files: dict[str, list[dict]] = {}
    stray: list[str] = []
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            path = Path(dirpath) / n
            key = path.relative_to(root).as_posix()
            if not KEY_RE.match(key):
                stray.append(key)
                continue
            if key not in cache:
                text = gunzip_single_member(path.read_bytes(), key).decode("utf-8")
                doc = json.loads(text)
                assert isinstance(doc, dict) and list(doc) == ["Records"], f"{key}: {text[:300]}"
                assert isinstance(doc["Records"], list) and doc["Records"], f"{key}: no records"
                cache[key] = doc["Records"]
            files[key] = cache[key]
    return files, stray


def test_sigkill_rounds_deliver_every_acked_event_exactly_once(server):
    ct = cloudtrail_client(server)
    bucket = f"crash-{uid()}"
    root = Path(server.data_dir) / "buckets" / bucket
    os.makedirs(root)
    trail = f"crash-{uid()}"
    ct.create_trail(Name=trail, S3BucketName=bucket)  # single-region, us-east-1
    ct.put_event_selectors(
        TrailName=trail,
        EventSelectors=[{"ReadWriteType": "WriteOnly", "IncludeManagementEvents": True}],
    )
    ct.start_logging(Name=trail)

    marker = f"crash-user-{uid()}"
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    writer = Writer(server.url, marker, seed + 1)
    writer.start()
    pauses = []
    try:
        for _ in range(ROUNDS):
            pause = rng.uniform(0.3, 2.0)
            pauses.append(round(pause, 2))
            time.sleep(pause)
            assert writer.is_alive(), f"writer died: {writer.crashed!r}"
            server.kill9()
        time.sleep(1.0)  # some traffic after the last restart
    finally:
        writer.stop()
    assert writer.crashed is None, f"writer crashed: {writer.crashed!r}"

    acked = writer.acked
    maybe = writer.maybe
    should_get = writer.should_get
    want = {e for e in acked if e in should_get}
    assert want, "no should-get event was acknowledged"

    cache: dict[str, list[dict]] = {}

    def delivered_ids(files: dict[str, list[dict]]) -> set[str]:
        return {r.get("eventID") for recs in files.values() for r in recs}

    deadline = time.monotonic() + CATCH_UP_S
    while True:
        files, _ = scan_bucket(root, cache)
        missing = want - delivered_ids(files)
        if not missing:
            break
        if time.monotonic() >= deadline:
            st = ct.get_trail_status(Name=trail)
            raise AssertionError(
                f"{len(missing)} of {len(want)} acknowledged should-get events not delivered after "
                f"{CATCH_UP_S:.0f} s (seed {seed}), e.g. {sorted(missing)[:5]}; "
                f"status {({k: v for k, v in st.items() if k != 'ResponseMetadata'})}"
            )
        time.sleep(0.5)
    time.sleep(SETTLE_S)
    files, stray = scan_bucket(root, cache)

    where: dict[str, list[str]] = {}
    test_events: dict[str, dict] = {}
    for key, recs in files.items():
        for r in recs:
            eid = r.get("eventID")
            where.setdefault(eid, []).append(key)
            if (r.get("userIdentity") or {}).get("userName") == marker:
                test_events[eid] = r
            assert r.get("awsRegion") == HOME, f"{key}: record of region {r.get('awsRegion')!r}"
            assert r.get("readOnly") is not True, f"{key}: read-only record {r.get('eventName')} ({eid})"
    delivered = set(test_events)

    # How often a kill landed between writing a file and committing it (the
    # restarted worker then replays the stored plan onto the same keys).
    replays = server.log_text().count("log file was already delivered by an earlier attempt")
    summary = (
        f"crash: seed {seed}, rounds {ROUNDS}, pauses {pauses}, batches {writer.batches}, "
        f"acked {len(acked)} ({len(want)} should-get), maybe {len(maybe)} "
        f"(failures {writer.failures}), delivered test events {len(delivered)}, "
        f"files {len(files)}, stray {len(stray)}, replayed writes {replays}"
    )
    print(summary)

    assert not stray, f"non-log files left in the bucket directory: {stray[:10]} ({summary})"
    dups = {eid: keys for eid, keys in where.items() if len(keys) > 1}
    assert not dups, f"eventIDs delivered more than once: {dict(list(dups.items())[:5])} ({summary})"
    missing = want - delivered
    assert not missing, f"acknowledged should-get events missing: {sorted(missing)[:10]} ({summary})"
    unknown = delivered - set(acked) - set(maybe)
    assert not unknown, f"delivered test events that were never sent: {sorted(unknown)[:10]}"
    forbidden = {e for e in delivered if e not in should_get}
    assert not forbidden, (
        "events the trail must not get were delivered: "
        + json.dumps([{"eventID": e, "awsRegion": test_events[e]["awsRegion"],
                       "readOnly": test_events[e]["readOnly"]} for e in sorted(forbidden)[:10]])
    )
    for eid, r in test_events.items():
        assert_record_roundtrip(json.dumps(r), acked.get(eid) or maybe[eid])
