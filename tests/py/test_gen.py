"""``opentrail gen``: the benchmarks' event generator, end to end.

Its output is deterministic from the seed, is accepted by the ingest API as it is, and every
generated event is then found in event history by the values it was generated with.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter

from conftest import ACCOUNT_ID, attrs, cloudtrail_client, lookup_ids, wait_for_events


def gen(opentrail_bin: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([opentrail_bin, "gen", "--account", ACCOUNT_ID, *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_same_seed_same_events_other_seed_other_events(opentrail_bin):
    fixed = ("--count", "200", "--end", "2026-11-01T12:00:00Z")
    a = gen(opentrail_bin, "--seed", "3", *fixed)
    b = gen(opentrail_bin, "--seed", "3", *fixed)
    c = gen(opentrail_bin, "--seed", "4", *fixed)
    assert a.returncode == b.returncode == c.returncode == 0, a.stderr + c.stderr
    assert a.stdout == b.stdout
    lines = a.stdout.splitlines()
    assert len(lines) == 200
    assert not set(lines) & set(c.stdout.splitlines())
    records = [json.loads(line) for line in lines]
    assert len({r["eventID"] for r in records}) == 200
    assert all(r["recipientAccountId"] == ACCOUNT_ID for r in records)
    assert all(r["eventTime"] <= "2026-11-01T12:00:00Z" for r in records)


def test_stats_and_bad_arguments(opentrail_bin):
    r = gen(opentrail_bin, "--count", "3000", "--stats")
    assert r.returncode == 0
    assert "3000 events: size min" in r.stderr and "event names" in r.stderr
    bad = gen(opentrail_bin, "--end", "yesterday")
    assert bad.returncode != 0 and "--end" in bad.stderr
    bad = gen(opentrail_bin, "--days", "0")
    assert bad.returncode != 0


def test_generated_bodies_ingest_and_are_found_by_their_values(server, opentrail_bin):
    r = gen(opentrail_bin, "--seed", "11", "--count", "450", "--batch", "100", "--days", "2")
    assert r.returncode == 0, r.stderr
    bodies = r.stdout.splitlines()
    assert [len(json.loads(b)["Records"]) for b in bodies] == [100, 100, 100, 100, 50]
    records = [rec for b in bodies for rec in json.loads(b)["Records"]]
    for body in bodies:
        resp = server.ingest_raw(body)
        assert resp.status_code == 200, resp.text[:500]
    client = cloudtrail_client(server)
    wait_for_events(client, [rec["eventID"] for rec in records[-5:]])
    # Each event by its id; the busiest user and event name by their own lookups.
    for rec in records[::37]:
        assert lookup_ids(client, LookupAttributes=attrs(("EventId", rec["eventID"]))) == [rec["eventID"]]
    users = Counter(rec["userIdentity"]["userName"] for rec in records
                    if rec["userIdentity"]["type"] == "IAMUser")
    user, n = users.most_common(1)[0]
    ids = lookup_ids(client, LookupAttributes=attrs(("Username", user)))
    generated = {rec["eventID"] for rec in records if rec["userIdentity"].get("userName") == user}
    assert len(generated) == n and generated <= set(ids)
    names = Counter(rec["eventName"] for rec in records)
    name, n = names.most_common(1)[0]
    ids = set(lookup_ids(client, LookupAttributes=attrs(("EventName", name))))
    assert {rec["eventID"] for rec in records if rec["eventName"] == name} <= ids
    assert len(ids) >= n
