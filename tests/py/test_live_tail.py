"""Live tail end to end: ``GET /v1/tail`` (Server-Sent Events, SigV4-signed) streams events as
they are recorded, filtered by lookup attributes and EventBridge patterns, and resumes from a
sequence number (``Last-Event-ID`` or ``after=``) without gaps or repeats, across reconnects and
server restarts; ``opentrail tail`` does the same from the command line and reconnects by itself.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import threading
import time
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import requests

from conftest import (
    ACCOUNT_ID,
    FAKE_ACCESS_KEY,
    FAKE_SECRET_KEY,
    cloudtrail_client,
    lookup_all,
    attrs,
    make_record,
    poll_until,
    signed_session,
    uid,
)


def tail_url(server, params: dict | None) -> str:
    """SigV4 wants spaces as %20, not the form encoding's '+'."""
    q = urlencode(params or {}, quote_via=quote)
    return f"{server.url}/v1/tail" + (f"?{q}" if q else "")


class Tail:
    """One SSE connection, read on a thread: ``events`` are ``(id, event, data)``."""

    def __init__(self, server, params: dict | None = None, last_event_id: int | None = None,
                 session: requests.Session | None = None):
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self.resp = (session or signed_session()).get(
            tail_url(server, params), headers=headers, stream=True, timeout=30)
        self.events: list[tuple[int | None, str, str, float]] = []
        self.lock = threading.Lock()
        self.ended = threading.Event()
        if self.resp.status_code == 200:
            assert self.resp.headers["content-type"] == "text/event-stream"
            threading.Thread(target=self._read, daemon=True).start()
            poll_until("the stream to open", lambda: self.opened or None, timeout=10)

    opened = False

    def _read(self) -> None:
        ev: dict[str, Any] = {}
        try:
            for raw in self.resp.iter_lines(chunk_size=None):
                line = raw.decode()
                if line == "":
                    if ev.get("data") is not None:
                        with self.lock:
                            self.events.append((ev.get("id"), ev.get("event", "message"), ev["data"],
                                                time.monotonic()))
                    ev = {}
                    continue
                if line.startswith(":"):
                    self.opened = True
                    continue
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "id":
                    ev["id"] = int(value)
                elif field == "event":
                    ev["event"] = value
                elif field == "data":
                    ev["data"] = value if "data" not in ev else ev["data"] + "\n" + value
        except (requests.RequestException, OSError, AttributeError):
            pass
        finally:
            self.ended.set()

    def records(self) -> list[tuple[int, dict]]:
        with self.lock:
            return [(i, json.loads(d)) for i, e, d, _ in self.events if e == "record"]

    def ids(self) -> list[str]:
        return [r["eventID"] for _, r in self.records()]

    def wait_for(self, event_ids: list[str], timeout: float = 10) -> None:
        poll_until(f"{len(event_ids)} events on the tail", lambda: set(event_ids) <= set(self.ids()) or None,
                   timeout=timeout, interval=0.02)

    def close(self) -> None:
        # Shut the socket down first: the reader thread is blocked in a read that would otherwise
        # last until the server's next heartbeat.
        try:
            self.resp.raw._fp.fp.raw._sock.shutdown(socket.SHUT_RDWR)
        except (AttributeError, OSError):
            pass
        self.resp.close()


def named(name: str, n: int, **fields) -> list[dict]:
    return [make_record(eventName=name, readOnly=False, **fields) for _ in range(n)]


def test_events_stream_as_recorded_filtered_by_attributes(server):
    name = f"Tail{uid()}"
    tail = Tail(server, {"EventName": name, "ReadOnly": "false"})
    try:
        latencies = []
        mine: list[str] = []
        for i in range(30):
            batch = named(name, 1) + named(f"Other{uid()}", 1) + [make_record(eventName=name, readOnly=True)]
            t0 = time.monotonic()
            ids = server.ingest_ok(batch)
            mine.append(ids[0])
            tail.wait_for([ids[0]])
            with tail.lock:
                got = next(t for _, _, d, t in tail.events if json.loads(d)["eventID"] == ids[0])
            latencies.append((got - t0) * 1000)
        time.sleep(0.3)
        assert tail.ids() == mine, "exactly the matching events, in order, once"
        seqs = [i for i, _ in tail.records()]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        # Each record is the stored one.
        stored = {e["EventId"]: json.loads(e["CloudTrailEvent"])
                  for e in lookup_all(cloudtrail_client(server), LookupAttributes=attrs(("EventName", name)))}
        for _, r in tail.records():
            assert r == stored[r["eventID"]]
        print(f"\nack -> tail, 30 events: p50 {statistics.median(latencies):.1f} ms, "
              f"max {max(latencies):.1f} ms")
        assert statistics.median(latencies) < 1000
    finally:
        tail.close()


def test_event_patterns_filter_the_envelope(server):
    user = f"tailer-{uid()}"
    pattern = {"source": ["aws.iam"], "detail-type": ["AWS API Call via CloudTrail"],
               "detail": {"userIdentity": {"userName": [user]}, "errorCode": [{"exists": True}]}}
    tail = Tail(server, {"EventPattern": json.dumps(pattern)})
    try:
        ident = {"type": "IAMUser", "userName": user, "principalId": "AIDAEXAMPLE",
                 "arn": f"arn:aws:iam::{ACCOUNT_ID}:user/{user}", "accountId": ACCOUNT_ID}
        hit = make_record(eventSource="iam.amazonaws.com", eventName="DeleteUser", userIdentity=ident,
                          errorCode="AccessDenied", errorMessage="no")
        misses = [
            make_record(eventSource="iam.amazonaws.com", eventName="DeleteUser", userIdentity=ident),
            make_record(eventSource="s3.amazonaws.com", eventName="GetObject", userIdentity=ident,
                        errorCode="AccessDenied"),
        ]
        ids = server.ingest_ok(misses + [hit])
        tail.wait_for([ids[2]])
        time.sleep(0.3)
        assert tail.ids() == [ids[2]]
    finally:
        tail.close()


def test_resuming_after_a_reconnect_and_a_restart_has_no_gaps(server):
    name = f"Resume{uid()}"
    sent: list[str] = []
    tail = Tail(server, {"EventName": name})
    sent += server.ingest_ok(named(name, 50))
    tail.wait_for(sent[:50])
    tail.close()
    last = tail.records()[-1][0]
    got = tail.ids()
    # Recorded while nobody listens: a resumed tail gets them first.
    sent += server.ingest_ok(named(name, 50))
    tail = Tail(server, {"EventName": name}, last_event_id=last)
    tail.wait_for(sent[50:])
    sent += server.ingest_ok(named(name, 25))
    tail.wait_for(sent[100:])
    # A restart ends the stream; resuming after the last id goes on where it stopped.
    server.restart()
    assert tail.ended.wait(15), "the stream ends when the server shuts down"
    got += tail.ids()
    last = tail.records()[-1][0]
    tail.close()
    sent += server.ingest_ok(named(name, 25))
    tail = Tail(server, {"EventName": name, "after": str(last)})
    tail.wait_for(sent[125:])
    got += tail.ids()
    tail.close()
    assert got == sent, "every event once, in order, across two reconnects and a restart"


def test_refusals_are_clear_and_recorded(server):
    s = signed_session()
    for params, code in (
        ({"Colour": "red"}, "InvalidParameterException"),
        ({"after": "soon"}, "InvalidParameterException"),
        ({"EventPattern": '{"source": "not-a-list"}'}, "InvalidEventPatternException"),
    ):
        r = s.get(tail_url(server, params), timeout=10)
        assert r.status_code == 400 and r.json()["__type"].endswith(code), (params, r.text)
    r = requests.get(f"{server.url}/v1/tail", timeout=10)
    assert r.status_code == 403, r.text
    # A user without cloudtrail:StartLiveTail is refused; with it, served.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY})
    iam = [server.binary, "iam", "--endpoint-url", server.url]
    user = f"tail-{uid()}"
    subprocess.run(iam + ["create-user", "--user-name", user], env=env, check=True, capture_output=True)
    key = json.loads(subprocess.run(iam + ["create-access-key", "--user-name", user], env=env,
                                    check=True, capture_output=True, text=True).stdout)["AccessKey"]
    sess = signed_session(key["AccessKeyId"], key["SecretAccessKey"])
    r = sess.get(f"{server.url}/v1/tail", timeout=10)
    assert r.status_code == 403 and "AccessDenied" in r.text, r.text
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "cloudtrail:StartLiveTail", "Resource": "*"}]}
    subprocess.run(iam + ["put-user-policy", "--user-name", user, "--policy-name", "tail",
                          "--policy-document", json.dumps(policy)], env=env, check=True, capture_output=True)
    tail = Tail(server, {"Username": user}, session=sess)
    assert tail.resp.status_code == 200
    tail.close()
    ct = cloudtrail_client(server)

    def recorded():
        evs = lookup_all(ct, LookupAttributes=attrs(("EventName", "StartLiveTail"), ("Username", user)))
        return evs if len(evs) >= 2 else None

    evs = poll_until("the refused and the served StartLiveTail in history", recorded, timeout=10)
    bodies = [json.loads(e["CloudTrailEvent"]) for e in evs]
    assert {b.get("errorCode") for b in bodies} == {None, "AccessDenied"}
    served = next(b for b in bodies if "errorCode" not in b)
    assert served["requestParameters"] == {"username": user}
    assert served["readOnly"] is True


def cli_tail(server, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY})
    return subprocess.Popen([server.binary, "tail", "--endpoint-url", server.url, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_opentrail_tail_prints_and_reconnects_by_itself(server):
    name = f"Cli{uid()}"
    proc = cli_tail(server, "--event-name", name, "--max-events", "40", "--ids")
    try:
        # The tail is open once its own StartLiveTail is in history.
        ct = cloudtrail_client(server)
        poll_until("the CLI's StartLiveTail", lambda: [
            e for e in lookup_all(ct, LookupAttributes=attrs(("EventName", "StartLiveTail")))
            if json.loads(e["CloudTrailEvent"])["requestParameters"].get("eventName") == name] or None,
            timeout=15)
        sent = server.ingest_ok(named(name, 20))
        time.sleep(1.0)
        server.restart()
        sent += server.ingest_ok(named(name, 20))
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert [json.loads(line.split("\t", 1)[1])["eventID"] for line in lines] == sent
    seqs = [int(line.split("\t", 1)[0]) for line in lines]
    assert seqs == sorted(seqs)
    assert "reconnecting" in err, err
    # --after and --output text: the same events again, as readable lines.
    text = subprocess.run(
        [server.binary, "tail", "--endpoint-url", server.url, "--event-name", name,
         "--after", str(seqs[0] - 1), "--max-events", "40", "--output", "text"],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
             "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY},
        capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    assert len(text.stdout.splitlines()) == 40
    assert all(f"  {name}  " in line for line in text.stdout.splitlines())
    bad = subprocess.run([server.binary, "tail", "--endpoint-url", server.url, "--event-pattern", "{"],
                         env={**os.environ, "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY,
                              "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY},
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "InvalidEventPatternException" in bad.stderr, bad.stderr
