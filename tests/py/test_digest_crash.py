"""Crash safety of digest files on the local bucket store, and the last digest
of a deleted trail.

A trail with log file validation logs while a writer ingests all the time and
the main thread SIGKILLs and restarts the server round after round (digest
period 1 s, key rotation 4 s, so kills land inside rounds, between a round's
digests and its commit, and across key rotations).  Afterwards the digests
must form one unforked chain: one digest per window, contiguous windows,
each pointing at its real predecessor (hash and signature), every signature
valid under a key ListPublicKeys returns, and every log file the trail
delivered listed in exactly one digest with its true hash.  `opentrail
validate-logs` must then report everything valid.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import subprocess
import threading
import time
import uuid
from pathlib import Path

import requests
import rsa

from conftest import ACCOUNT_ID, FAKE_ACCESS_KEY, FAKE_SECRET_KEY, cloudtrail_client, gunzip_single_member, make_record, uid, signed_session

SERVER_ENV = {
    "OPENTRAIL_DELIVERY_INTERVAL": "1s",
    "OPENTRAIL_DELIVERY_MAX_BACKOFF": "1s",
    "OPENTRAIL_DIGEST_INTERVAL": "1s",
    "OPENTRAIL_SIGNING_KEY_ROTATION": "4s",
}

HOME = "us-east-1"
ROUNDS = 10
CATCH_UP_S = 60.0


class Writer(threading.Thread):
    """Ingests small batches until stopped; remembers what was acknowledged."""

    def __init__(self, url: str, marker: str):
        super().__init__(daemon=True)
        self.url = url
        self.marker = marker
        self.stop_evt = threading.Event()
        self.acked: set[str] = set()

    def run(self) -> None:
        sess = signed_session()
        while not self.stop_evt.is_set():
            batch = [
                make_record(user_name=self.marker, eventID=str(uuid.uuid4()), awsRegion=HOME,
                            readOnly=False, eventSource="ec2.amazonaws.com", eventName="RunInstances")
                for _ in range(3)
            ]
            try:
                r = sess.post(f"{self.url}/v1/events", json={"Records": batch}, timeout=15)
                if r.status_code == 200:
                    self.acked.update(x["eventID"] for x in batch)
            except requests.RequestException:
                sess.close()
                sess = signed_session()
            self.stop_evt.wait(0.05)

    def stop(self) -> None:
        self.stop_evt.set()
        self.join(timeout=30)


def digest_prefix(trail: str) -> str:
    return f"AWSLogs/{ACCOUNT_ID}/CloudTrail-Digest/{HOME}/"


def load_digests(root: Path) -> dict[str, tuple[dict, bytes, dict]]:
    """key -> (document, uncompressed bytes, sidecar metadata) of every digest."""
    out = {}
    base = root / "AWSLogs" / ACCOUNT_ID / "CloudTrail-Digest"
    for dirpath, _dirs, names in os.walk(base):
        for n in names:
            path = Path(dirpath) / n
            key = path.relative_to(root).as_posix()
            assert key.endswith(".json.gz"), f"stray file among digests: {key}"
            raw = gunzip_single_member(path.read_bytes(), key)
            meta_path = root / ".opentrail-metadata" / f"{key}.json"
            assert meta_path.is_file(), f"{key}: no metadata sidecar"
            out[key] = (json.loads(raw), raw, json.loads(meta_path.read_text()))
    return out


def log_files(root: Path) -> dict[str, bytes]:
    """key -> uncompressed content of every delivered log file."""
    out = {}
    base = root / "AWSLogs" / ACCOUNT_ID / "CloudTrail"
    for dirpath, _dirs, names in os.walk(base):
        for n in names:
            path = Path(dirpath) / n
            key = path.relative_to(root).as_posix()
            out[key] = gunzip_single_member(path.read_bytes(), key)
    return out


def public_keys(ct) -> dict[str, rsa.PublicKey]:
    resp = ct.list_public_keys(StartTime=time.time() - 3600, EndTime=time.time() + 3600)
    keys = {}
    for k in resp["PublicKeyList"]:
        der = k["Value"]
        if isinstance(der, str):
            der = base64.b64decode(der)
        assert hashlib.md5(der).hexdigest() == k["Fingerprint"]
        keys[k["Fingerprint"]] = rsa.PublicKey.load_pkcs1(der, format="DER")
    return keys


def check_chain(bucket: str, root: Path, ct) -> tuple[int, int]:
    """Asserts one unforked, contiguous, correctly linked and signed chain
    that lists every log file exactly once. Returns (digests, log files)."""
    digests = load_digests(root)
    logs = log_files(root)
    keys = public_keys(ct)
    assert digests, "no digests"
    by_prev: dict[str | None, list[str]] = {}
    listed: dict[str, str] = {}
    fingerprints = set()
    for key, (doc, raw, meta) in digests.items():
        assert doc["digestS3Bucket"] == bucket and doc["digestS3Object"] == key
        assert meta["signature-algorithm"] == "SHA256withRSA"
        fp = doc["digestPublicKeyFingerprint"]
        fingerprints.add(fp)
        assert fp in keys, f"{key}: fingerprint {fp} not listed by ListPublicKeys"
        prev_sig = doc["previousDigestSignature"] or "null"
        to_sign = (f"{doc['digestEndTime']}\n{bucket}/{key}\n"
                   f"{hashlib.sha256(raw).hexdigest()}\n{prev_sig}").encode()
        rsa.verify(to_sign, bytes.fromhex(meta["signature"]), keys[fp])
        assert key[-24:-8] == doc["digestEndTime"].replace("-", "").replace(":", "")
        by_prev.setdefault(doc["previousDigestS3Object"], []).append(key)
        for f in doc["logFiles"]:
            assert f["s3Object"] not in listed, (
                f"{f['s3Object']} listed by both {listed[f['s3Object']]} and {key}")
            listed[f["s3Object"]] = key
            assert f["s3Object"] in logs, f"{key} lists a file that is not there: {f['s3Object']}"
            assert f["hashValue"] == hashlib.sha256(logs[f["s3Object"]]).hexdigest()
    forks = {p: ks for p, ks in by_prev.items() if len(ks) > 1}
    assert not forks, f"the chain forked: {forks}"
    starts = by_prev.get(None, [])
    assert len(starts) == 1, f"expected one chain start, got {starts}"
    # Walk from the start forwards: every digest is on the one chain.
    seen = [starts[0]]
    while seen[-1] in by_prev:
        nxt = by_prev[seen[-1]][0]
        prev_doc, prev_raw, prev_meta = digests[seen[-1]]
        doc = digests[nxt][0]
        assert doc["digestStartTime"] == prev_doc["digestEndTime"], f"{nxt}: window not contiguous"
        assert doc["previousDigestHashValue"] == hashlib.sha256(prev_raw).hexdigest()
        assert doc["previousDigestSignature"] == prev_meta["signature"]
        seen.append(nxt)
    assert len(seen) == len(digests), f"{len(digests) - len(seen)} digests are off the chain"
    unlisted = sorted(set(logs) - set(listed))
    assert not unlisted, f"log files in no digest: {unlisted[:5]}"
    return len(digests), len(logs)


def wait_for_last_digest(ct, trail: str, after: float) -> None:
    deadline = time.monotonic() + CATCH_UP_S
    while time.monotonic() < deadline:
        st = ct.get_trail_status(Name=trail)
        t = st.get("LatestDigestDeliveryTime")
        if t is not None and t.timestamp() > after:
            return
        time.sleep(0.3)
    raise AssertionError(f"no digest after {after}: {st}")


def test_sigkill_rounds_leave_one_unforked_chain(server, opentrail_bin):
    ct = cloudtrail_client(server)
    bucket = f"dcrash-{uid()}"
    root = Path(server.data_dir) / "buckets" / bucket
    os.makedirs(root)
    trail = f"dcrash-{uid()}"
    arn = ct.create_trail(Name=trail, S3BucketName=bucket, EnableLogFileValidation=True)["TrailARN"]
    started = time.time()
    ct.start_logging(Name=trail)
    writer = Writer(server.url, f"dcrash-{uid()}")
    writer.start()
    rng = random.Random()
    try:
        for _ in range(ROUNDS):
            time.sleep(rng.uniform(0.3, 2.0))
            server.kill9()
        time.sleep(1.0)
    finally:
        writer.stop()
    assert writer.acked
    # Every acknowledged event is delivered, then logging stops and the last digest lands.
    deadline = time.monotonic() + CATCH_UP_S
    while True:
        got = set()
        for body in log_files(root).values():
            got.update(r["eventID"] for r in json.loads(body)["Records"])
        if writer.acked <= got:
            break
        assert time.monotonic() < deadline, f"{len(writer.acked - got)} acked events undelivered"
        time.sleep(0.5)
    stop = time.time()
    ct.stop_logging(Name=trail)
    wait_for_last_digest(ct, trail, stop)
    time.sleep(2.5)  # nothing may follow the last digest
    n_digests, n_logs = check_chain(bucket, root, ct)
    replays = server.log_text().count("digest was already written by an earlier attempt")
    print(f"digest crash: {ROUNDS} kills, {n_digests} digests, {n_logs} log files, "
          f"replayed digest writes {replays}, {time.time() - started:.1f} s")
    assert n_digests >= 5
    fingerprints = {digests[0]["digestPublicKeyFingerprint"] for digests in load_digests(root).values()}
    assert len(fingerprints) >= 2, "the run should have crossed a key rotation"

    proc = subprocess.run(
        [opentrail_bin, "validate-logs", "--trail-arn", arn,
         "--start-time", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started - 60)),
         "--endpoint-url", server.url, "--local-dir", str(root), "--no-progress"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{n_digests}/{n_digests} digest files valid" in proc.stdout
    assert f"{n_logs}/{n_logs} log files valid" in proc.stdout


def test_deleting_a_trail_delivers_its_last_events_and_a_last_digest(server):
    ct = cloudtrail_client(server)
    bucket = f"ddel-{uid()}"
    root = Path(server.data_dir) / "buckets" / bucket
    os.makedirs(root)
    trail = f"ddel-{uid()}"
    ct.create_trail(Name=trail, S3BucketName=bucket, EnableLogFileValidation=True)
    ct.start_logging(Name=trail)
    time.sleep(1.5)
    marker = f"ddel-{uid()}"
    ids = server.ingest_ok([
        make_record(user_name=marker, eventID=str(uuid.uuid4()), awsRegion=HOME, readOnly=False)
        for _ in range(5)
    ])
    # Deleted at once: the events are delivered and listed by a last digest before the trail goes.
    ct.delete_trail(Name=trail)
    got = set()
    for body in log_files(root).values():
        got.update(r["eventID"] for r in json.loads(body)["Records"])
    assert set(ids) <= got, "events logged before DeleteTrail were not delivered"
    check_chain(bucket, root, ct)
    n = len(load_digests(root))
    time.sleep(2.5)
    assert len(load_digests(root)) == n, "digests were written after the trail was deleted"
