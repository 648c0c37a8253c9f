"""Log streaming end to end: trails whose ``CloudWatchLogsLogGroupArn`` names a declared log
group send every record they deliver to that group's destination, and real receivers get it:

- a JSON-lines file set (rotated by size and by age), and the default file set of a group
  declared without a destination;
- RFC 5424 syslog over TCP and over TLS (a test CA the server is told to trust), octet-counted;
- HTTP NDJSON batches to a local collector, with the configured Authorization header.

Every record arrives once across rotations, graceful restarts and a receiver dropping its
connections; after SIGKILLs the file set still has every record exactly once and the network
destinations every record at least once. Records over CloudWatch Logs' event size are left
out; GetTrailStatus reports the latest delivery and the latest error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import (
    ACCOUNT_ID,
    DEFAULT_REGION,
    cloudtrail_client,
    find_event,
    free_port,
    make_record,
    poll_until,
    trail_status_with_body,
    uid,
)
from receivers import SyslogReceiver, Webhook, make_cert

G = f"arn:aws:logs:{DEFAULT_REGION}:{ACCOUNT_ID}:log-group:"
ROLE = f"arn:aws:iam::{ACCOUNT_ID}:role/CloudTrail_CloudWatchLogs_Role"
FILES_GROUP, DEFAULT_GROUP = G + "ot/files", G + "ot/default"
TCP_GROUP, TLS_GROUP = G + "ot/syslog", G + "ot/syslog-tls"
HTTP_GROUP, FLAKY_GROUP = G + "ot/http", G + "ot/http-flaky"
MAX_BYTES = 65536
MAX_AGE_S = 2
# CloudWatch Logs counts 26 bytes of overhead per event against its 256 KB event limit.
MAX_STREAMED = 256 * 1024 - 26

_TMP = Path(os.environ.get("TMPDIR", "/tmp")) / f"opentrail-streams-{uid()}"
_TMP.mkdir(parents=True, exist_ok=True)
FILES_DIR = _TMP / "files"
CA, CERT, KEY = make_cert(_TMP)
TCP = SyslogReceiver()
TLS = SyslogReceiver(CERT, KEY)
HOOK = Webhook()

SERVER_ENV = {
    "OPENTRAIL_CLOUDWATCH_LOG_GROUPS": ",".join([
        f"{FILES_GROUP}=file://{FILES_DIR}#max_bytes={MAX_BYTES}&max_age={MAX_AGE_S}s",
        DEFAULT_GROUP,
        f"{TCP_GROUP}=syslog+tcp://127.0.0.1:{TCP.port}#hostname=ot-test",
        f"{TLS_GROUP}=syslog+tls://127.0.0.1:{TLS.port}#ca_file={CA}",
        f"{HTTP_GROUP}={HOOK.url}/ndjson?source=ot#authorization=Bearer%20tok-123&batch_records=40",
        f"{FLAKY_GROUP}={HOOK.url}/ndjson-flaky",
    ]),
    "OPENTRAIL_DELIVERY_MAX_BACKOFF": "1s",
    "OPENTRAIL_MAX_TRAILS_PER_REGION": "20",
}


@pytest.fixture(scope="module", autouse=True)
def _receivers():
    yield
    TCP.close()
    TLS.close()
    HOOK.close()
    shutil.rmtree(_TMP, ignore_errors=True)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def streaming_trail(server, group: str, **params) -> str:
    """A logging trail streaming to ``group``; returns its name."""
    name = f"stream-{uid()}"
    bucket = f"b-{uid()}"
    (Path(server.data_dir) / "buckets" / bucket).mkdir(parents=True)
    ct = cloudtrail_client(server)
    ct.create_trail(Name=name, S3BucketName=bucket, CloudWatchLogsLogGroupArn=group,
                    CloudWatchLogsRoleArn=ROLE, **params)
    ct.start_logging(Name=name)
    return name


def file_set_dir(root: Path, trail: str) -> Path:
    return root / f"{ACCOUNT_ID}_{DEFAULT_REGION}_{trail}"


def file_lines(d: Path) -> list[dict]:
    out = []
    for f in sorted(d.glob("*.jsonl")):
        text = f.read_text()
        assert text == "" or text.endswith("\n"), f"{f.name} ends in a partial line"
        out += [json.loads(line) for line in text.splitlines()]
    return out


SD = re.compile(rb'^<110>1 (\S+) (\S+) (\S+) - (\S+) \[opentrail@32473 trail="([^"]*)" '
                rb'seq="(\d+)" eventID="([^"]*)"\] ')


def syslog_records(rx: SyslogReceiver, trail: str) -> list[tuple[int, dict]]:
    """(sequence number, record) of each message for ``trail``, header checked."""
    out = []
    for msg in rx.all():
        m = SD.match(msg)
        assert m, f"not an RFC 5424 message in OpenTrail's shape: {msg[:200]!r}"
        if m.group(5).decode() != trail:
            continue
        record = json.loads(msg[m.end():])
        assert m.group(7).decode() == record["eventID"]
        assert m.group(4).decode() == record["eventName"][:32]
        assert m.group(3) == b"cloudtrail"
        out.append((int(m.group(6)), record))
    return out


def http_records(path: str, trail_arn: str) -> list[tuple[int, int, list[dict]]]:
    """(first seq, last seq, records) of each accepted batch for ``trail_arn``."""
    out = []
    for p in HOOK.accepted(path):
        if p["headers"]["x-opentrail-trail"] != trail_arn:
            continue
        assert p["headers"]["content-type"] == "application/x-ndjson"
        lines = p["body"].decode().splitlines()
        out.append((int(p["headers"]["x-opentrail-first-seq"]),
                    int(p["headers"]["x-opentrail-last-seq"]),
                    [json.loads(x) for x in lines]))
    return out


def trail_arn(name: str) -> str:
    return f"arn:aws:cloudtrail:{DEFAULT_REGION}:{ACCOUNT_ID}:trail/{name}"


def records(n: int, pad: int = 0, **fields) -> list[dict]:
    return [make_record(readOnly=False, requestParameters={"pad": "x" * pad, "i": i}, **fields)
            for i in range(n)]


def ids_of(recs: list[dict]) -> list[str]:
    return [r["eventID"] for r in recs]


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


def test_every_destination_gets_every_record_once_across_rotations_and_restarts(server):
    trails = {
        "files": streaming_trail(server, FILES_GROUP),
        "default": streaming_trail(server, DEFAULT_GROUP + ":*"),
        "tcp": streaming_trail(server, TCP_GROUP),
        "tls": streaming_trail(server, TLS_GROUP),
        "http": streaming_trail(server, HTTP_GROUP),
    }
    # A few records, then a pause past the age limit: the next record starts a new file
    # however small the first one is.
    sent: list[str] = server.ingest_ok(records(5))
    files_dir = file_set_dir(FILES_DIR, trails["files"])
    poll_until("the first records in a file", lambda: set(sent) <= set(ids_of(file_lines(files_dir))) or None,
               timeout=10)
    time.sleep(MAX_AGE_S + 0.5)
    for round_no in range(4):
        sent += server.ingest_ok(records(60, pad=300))
        if round_no == 1:
            server.restart()
        if round_no == 2:
            # The collectors restart: the next batch goes over new connections.
            time.sleep(1.5)
            TCP.drop_connections()
            TLS.drop_connections()
            time.sleep(0.3)

    default_root = Path(server.data_dir) / "log-groups" / "ot" / "default"
    wanted = set(sent)

    def got(name: str) -> list[str]:
        t = trails[name]
        if name == "files":
            return ids_of(file_lines(file_set_dir(FILES_DIR, t)))
        if name == "default":
            return ids_of(file_lines(file_set_dir(default_root, t)))
        if name in ("tcp", "tls"):
            return ids_of([r for _, r in syslog_records(TCP if name == "tcp" else TLS, t)])
        return [i for _, _, recs in http_records("/ndjson?source=ot", trail_arn(t)) for i in ids_of(recs)]

    for name in trails:
        poll_until(f"every record at the {name} destination", lambda: wanted <= set(got(name)) or None,
                   timeout=30)
    for name in trails:
        ids = got(name)
        assert len(ids) == len(set(ids)), f"{name}: {len(ids) - len(set(ids))} records arrived twice"
        # The trails' own calls are streamed too; nothing else but this test's records.
        for e in set(ids) - wanted:
            rec = find_event(cloudtrail_client(server), e)
            assert rec is not None and rec["EventSource"] == "cloudtrail.amazonaws.com", (name, rec)

    # Order is the log's: each destination's records follow the ingest order.
    for name in trails:
        mine = [i for i in got(name) if i in wanted]
        assert mine == sent, f"{name}: records out of order"

    # Rotation: by size (no file above the limit) and by age (the pause started a new file).
    files = sorted(file_set_dir(FILES_DIR, trails["files"]).glob("*.jsonl"))
    assert len(files) >= 5, [f.name for f in files]
    for f in files:
        assert f.stat().st_size <= MAX_BYTES, f"{f.name} is {f.stat().st_size} bytes"
    holding = {f.name: set(ids_of(file_lines_of(f))) for f in files}
    before = next(n for n, i in holding.items() if sent[4] in i)
    after = next(n for n, i in holding.items() if sent[5] in i)
    assert before != after, "the record after the pause went to a new file"
    line = json.dumps(next(r for r in file_lines_of(files_dir / after) if r["eventID"] == sent[5]),
                      separators=(",", ":"))
    assert (files_dir / before).stat().st_size + len(line) + 1 <= MAX_BYTES, "it would have fit"

    # The syslog messages carry the log's sequence numbers, rising; TLS got a new connection.
    seqs = [s for s, _ in syslog_records(TCP, trails["tcp"])]
    assert seqs == sorted(seqs)
    assert TLS.accepted >= 2 and TCP.accepted >= 2

    # HTTP: batches of at most 40, the Authorization header, and the seq headers.
    batches = http_records("/ndjson?source=ot", trail_arn(trails["http"]))
    assert all(len(b[2]) <= 40 for b in batches)
    assert max(len(b[2]) for b in batches) == 40
    assert all(first <= last for first, last, _ in batches)
    for p in HOOK.accepted("/ndjson?source=ot"):
        assert p["headers"]["authorization"] == "Bearer tok-123"

    # Each trail's status has the latest delivery and no error.
    for name, t in trails.items():
        parsed, raw = trail_status_with_body(server, t, DEFAULT_REGION)
        assert "LatestCloudWatchLogsDeliveryTime" in raw, (name, raw)
        assert abs(parsed["LatestCloudWatchLogsDeliveryTime"].timestamp() - time.time()) < 120
        assert "LatestCloudWatchLogsDeliveryError" not in raw, (name, raw)


def file_lines_of(f: Path) -> list[dict]:
    return [json.loads(line) for line in f.read_text().splitlines()]


def test_sigkill_while_streaming_loses_nothing(server):
    trails = {
        "files": streaming_trail(server, FILES_GROUP),
        "tcp": streaming_trail(server, TCP_GROUP),
        "http": streaming_trail(server, HTTP_GROUP),
    }
    sent: list[str] = []
    for batch in range(6):
        sent += server.ingest_ok(records(100, pad=100))
        if batch in (1, 4):
            server.kill9()
    server.kill9()  # right after the last acknowledgement

    def files_ids():
        return ids_of(file_lines(file_set_dir(FILES_DIR, trails["files"])))

    def tcp_ids():
        return ids_of([r for _, r in syslog_records(TCP, trails["tcp"])])

    def http_ids():
        return [i for _, _, recs in http_records("/ndjson?source=ot", trail_arn(trails["http"]))
                for i in ids_of(recs)]

    for what, fn in (("files", files_ids), ("syslog", tcp_ids), ("http", http_ids)):
        poll_until(f"all 600 records at {what}", lambda: set(sent) <= set(fn()) or None, timeout=60)
    f = [i for i in files_ids() if i in set(sent)]
    assert f == sent, "the file set holds every record exactly once, in order"
    tcp, http = tcp_ids(), http_ids()
    print(f"\n600 records, three SIGKILLs: files exactly once; syslog {len(tcp) - len(set(tcp))} "
          f"repeated, http {len(http) - len(set(http))} repeated (at least once)")


def test_records_over_the_event_size_limit_are_left_out(server):
    name = streaming_trail(server, FILES_GROUP)
    small = make_record(readOnly=False)
    # Sized so the stored record is past CloudWatch Logs' limit but within ingest's 256 KiB.
    # The stored record has members ingest fills in: measure one the same shape first.
    probe = make_record(readOnly=False, requestParameters={"pad": ""})
    probe_id = server.ingest_ok([probe])[0]
    stored_probe = poll_until("the probe in history",
                              lambda: find_event(cloudtrail_client(server), probe_id), timeout=10)
    base = len(stored_probe["CloudTrailEvent"].encode())
    big = json.loads(json.dumps(probe))
    big["eventID"] = str(uuid.uuid4())
    big["requestParameters"]["pad"] = "y" * (MAX_STREAMED + 10 - base)
    after = make_record(readOnly=False)
    # Compact JSON: ingest's limit applies to the record as sent, too.
    r = server.ingest_raw(json.dumps({"Records": [small, big, after]}, separators=(",", ":")))
    assert r.status_code == 200, r.text[:500]
    ids = r.json()["EventIds"]
    stored = poll_until("the big record in history", lambda: find_event(cloudtrail_client(server), ids[1]),
                        timeout=10)
    size = len(stored["CloudTrailEvent"].encode())
    assert MAX_STREAMED < size <= 256 * 1024, size
    d = file_set_dir(FILES_DIR, name)
    poll_until("the records around the big one", lambda: {ids[0], ids[2]} <= set(ids_of(file_lines(d))) or None,
               timeout=20)
    assert ids[1] not in ids_of(file_lines(d))
    metrics = server._session.get(f"{server.url}/metrics", timeout=10).text
    skipped = re.search(r"^opentrail_stream_skipped_total (\d+)$", metrics, re.M)
    assert skipped and int(skipped.group(1)) >= 1


def test_a_failing_collector_shows_in_status_and_catches_up(server):
    HOOK.fail("/ndjson-flaky")
    name = streaming_trail(server, FLAKY_GROUP)
    ids = server.ingest_ok(records(25))

    def errored():
        _, raw = trail_status_with_body(server, name, DEFAULT_REGION)
        return raw.get("LatestCloudWatchLogsDeliveryError")

    error = poll_until("the collector's refusal in the trail status", errored, timeout=20)
    assert "500" in error, error
    assert not HOOK.accepted("/ndjson-flaky")
    HOOK.release("/ndjson-flaky")
    poll_until("the batch after the collector recovers",
               lambda: set(ids) <= {i for _, _, r in http_records("/ndjson-flaky", trail_arn(name))
                                    for i in ids_of(r)} or None, timeout=20)
    poll_until("the error cleared", lambda: errored() is None or None, timeout=10)
    got = [i for _, _, r in http_records("/ndjson-flaky", trail_arn(name)) for i in ids_of(r)]
    assert len(got) == len(set(got))


def test_selectors_and_stopped_logging_apply_to_the_stream(server):
    name = streaming_trail(server, DEFAULT_GROUP)
    ct = cloudtrail_client(server)
    ct.put_event_selectors(TrailName=name, EventSelectors=[
        {"ReadWriteType": "WriteOnly", "IncludeManagementEvents": True}])
    writes = server.ingest_ok(records(5))
    reads = server.ingest_ok([make_record(readOnly=True) for _ in range(5)])
    d = file_set_dir(Path(server.data_dir) / "log-groups" / "ot" / "default", name)
    poll_until("the writes", lambda: set(writes) <= set(ids_of(file_lines(d))) or None, timeout=20)
    ct.stop_logging(Name=name)
    later = server.ingest_ok(records(5))
    ct.start_logging(Name=name)
    again = server.ingest_ok(records(5))
    poll_until("records after logging restarted", lambda: set(again) <= set(ids_of(file_lines(d))) or None,
               timeout=20)
    got = set(ids_of(file_lines(d)))
    assert not got & set(reads), "read-only events are not streamed by a WriteOnly trail"
    assert not got & set(later), "nothing is streamed while the trail is stopped"


def test_undeclared_groups_and_bad_destinations_are_refused(server, opentrail_bin, tmp_path):
    ct = cloudtrail_client(server)
    bucket = f"b-{uid()}"
    (Path(server.data_dir) / "buckets" / bucket).mkdir(parents=True)
    with pytest.raises(ct.exceptions.InvalidCloudWatchLogsLogGroupArnException) as e:
        ct.create_trail(Name=f"x-{uid()}", S3BucketName=bucket,
                        CloudWatchLogsLogGroupArn=G + "not-declared", CloudWatchLogsRoleArn=ROLE)
    assert "does not exist" in str(e.value)
    env = dict(os.environ, OPENTRAIL_CLOUDWATCH_LOG_GROUPS=f"{G}bad=ftp://somewhere")
    p = subprocess.run([opentrail_bin, "serve", "--data-dir", str(tmp_path / "d"), "--listen",
                        f"127.0.0.1:{free_port()}"], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    assert "cloudwatch_log_groups" in p.stderr and "ftp" in p.stderr, p.stderr
