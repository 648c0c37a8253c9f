"""Log file integrity (digest files) on the local bucket store, end to end.

One server for the module (``SERVER_ENV``): log files every second, a digest every
``PERIOD_S`` (2 s) and a new signing key every ``ROTATION_S`` (6 s), so a few seconds of
activity cover several digest periods and key rotations.

Most tests share one scripted run (the module fixture ``scenario``), played once before them:

* trail ``main``: multi-region, validation on.  Events arrive, then nothing at all for 2.5
  periods (no ingest, no API call: every CloudTrail API call is itself a record that trails
  deliver), then events in both regions until the home chain has seen a key rotation.  Then
  StopLogging, 2.5 quiet periods, StartLogging, a few events in both regions, StopLogging.
* trail ``toggle``: single-region, validation on; validation is turned off (UpdateTrail) while
  it keeps logging, log files are delivered without validation, validation is turned back on.
* trail ``plain``: no validation (no digests at all).

The tests then read the bucket directories (digest files, their ``.opentrail-metadata``
sidecars, the log files) and check them against the contract: key layout, fields, contiguous
windows of exactly one period, ``previous*`` pointers equal to the predecessor's real hash and
signature, signatures that verify (python ``rsa``, as the AWS CLI does) with the keys of
ListPublicKeys, log files listed once with their real SHA-256 and event times, empty windows,
chain ends and restarts, GetTrailStatus, and ``opentrail validate-logs --local-dir``.

The last tests run trails of their own: a bucket removed under a trail (digest delivery error),
and SIGKILLs timed on digest rounds (crash safety).

Helpers here (``Digest``, ``aws_report``, ...) are also used by ``test_validate_logs.py``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest
import requests
import rsa
from botocore.exceptions import ClientError

from conftest import (
    poll_until,
    ACCOUNT_ID,
    FAKE_ACCESS_KEY,
    FAKE_SECRET_KEY,
    cloudtrail_client,
    gunzip_single_member,
    make_record,
    trail_status_with_body,
    uid,
    signed_session,
)

HOME = "us-east-1"
OTHER = "eu-west-1"
PERIOD_S = 2
ROTATION_S = 6

SERVER_ENV = {
    "OPENTRAIL_DELIVERY_INTERVAL": "1s",
    "OPENTRAIL_DELIVERY_MAX_BACKOFF": "1s",
    "OPENTRAIL_DIGEST_INTERVAL": f"{PERIOD_S}s",
    "OPENTRAIL_SIGNING_KEY_ROTATION": f"{ROTATION_S}s",
    "OPENTRAIL_MAX_TRAILS_PER_REGION": "50",
}

POLL_S = 0.2
WAIT_S = 30.0
# A digest is written after its window closed, and soon after (generous for a loaded 2-core box).
DIGEST_LATENESS_S = 10.0
# A log file is written just before its delivery commits; the commit decides the window.
COMMIT_SLACK_S = 1.0

TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")
# RSA-2048: a 256-byte signature, lowercase hex.
SIG_RE = re.compile(r"^[0-9a-f]{512}$")
DIGEST_FIELDS = {
    "awsAccountId", "digestStartTime", "digestEndTime", "digestS3Bucket", "digestS3Object",
    "digestPublicKeyFingerprint", "digestSignatureAlgorithm", "newestEventTime", "oldestEventTime",
    "previousDigestS3Bucket", "previousDigestS3Object", "previousDigestHashValue",
    "previousDigestHashAlgorithm", "previousDigestSignature", "logFiles",
}
PREVIOUS_FIELDS = ("previousDigestS3Bucket", "previousDigestS3Object", "previousDigestHashValue",
                   "previousDigestHashAlgorithm", "previousDigestSignature")
LOG_ENTRY_FIELDS = {"s3Bucket", "s3Object", "hashValue", "hashAlgorithm", "newestEventTime", "oldestEventTime"}
UTC = dt.timezone.utc


# ---------------------------------------------------------------------------
# Times
# ---------------------------------------------------------------------------


def disp(t: dt.datetime) -> str:
    """CloudTrail / AWS CLI display format."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def key_stamp(t: dt.datetime) -> str:
    return t.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, UTC)


def whole(ts: float) -> dt.datetime:
    return utc(math.floor(ts))


def parse_z(value: Any, where: str) -> dt.datetime:
    assert isinstance(value, str) and TIME_RE.match(value), f"{where}: {value!r} is not YYYY-MM-DDTHH:MM:SSZ"
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def stamp_of_key(key: str) -> dt.datetime:
    """The digestEndTime a digest key carries (what the AWS CLI reads from it)."""
    return dt.datetime.strptime(key[-24:-8], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


# ---------------------------------------------------------------------------
# Objects
# ---------------------------------------------------------------------------


class LogFile:
    def __init__(self, bucket: str, key: str, raw: bytes, written: float):
        self.bucket = bucket
        self.key = key
        self.raw = raw
        self.written = written
        self.body = gunzip_single_member(raw, key)
        doc = json.loads(self.body.decode("utf-8"))
        assert isinstance(doc, dict) and isinstance(doc.get("Records"), list) and doc["Records"], key
        self.records: list[dict] = doc["Records"]
        self.sha256 = hashlib.sha256(self.body).hexdigest()
        times = [parse_z(r.get("eventTime"), f"{key} eventTime") for r in self.records]
        self.oldest = disp(min(times))
        self.newest = disp(max(times))

    def ids(self) -> set[str]:
        return {r["eventID"] for r in self.records}


class Digest:
    def __init__(self, bucket: str, key: str, raw: bytes, meta: dict, written: float):
        self.bucket = bucket
        self.key = key
        self.raw = raw
        self.meta = meta
        self.written = written
        self.body = gunzip_single_member(raw, key)
        self.doc = json.loads(self.body.decode("utf-8"))
        assert isinstance(self.doc, dict), f"{key}: digest is not a JSON object"
        self.sha256 = hashlib.sha256(self.body).hexdigest()
        self.start = parse_z(self.doc.get("digestStartTime"), f"{key} digestStartTime")
        self.end = parse_z(self.doc.get("digestEndTime"), f"{key} digestEndTime")

    @property
    def signature(self) -> str | None:
        return self.meta.get("signature")

    @property
    def fingerprint(self) -> str:
        return self.doc["digestPublicKeyFingerprint"]

    @property
    def prev_key(self) -> str | None:
        return self.doc.get("previousDigestS3Object")

    @property
    def log_keys(self) -> list[str]:
        return [lf["s3Object"] for lf in self.doc["logFiles"]]

    def duration(self) -> float:
        return (self.end - self.start).total_seconds()

    def __repr__(self) -> str:
        return f"Digest({self.key.rsplit('_', 1)[-1]} [{disp(self.start)}, {disp(self.end)}) files={len(self.doc.get('logFiles') or [])})"


def string_to_sign(doc: dict, body: bytes) -> bytes:
    prev = doc["previousDigestSignature"]
    return (f"{doc['digestEndTime']}\n{doc['digestS3Bucket']}/{doc['digestS3Object']}\n"
            f"{hashlib.sha256(body).hexdigest()}\n{'null' if prev is None else prev}").encode()


def region_logs_prefix(region: str, prefix: str | None = None) -> str:
    return (f"{prefix}/" if prefix else "") + f"AWSLogs/{ACCOUNT_ID}/CloudTrail/{region}/"


def digest_prefix(region: str, prefix: str | None = None) -> str:
    """What the AWS CLI lists a chain under; OpenTrail's chain verdicts name it with a trailing slash."""
    return (f"{prefix}/" if prefix else "") + f"AWSLogs/{ACCOUNT_ID}/CloudTrail-Digest/{region}"


def digest_key_re(region: str, trail: str, home: str = HOME, prefix: str | None = None) -> re.Pattern:
    return re.compile(
        "^" + re.escape(digest_prefix(region, prefix)) + r"/(\d{4})/(\d{2})/(\d{2})/"
        + re.escape(f"{ACCOUNT_ID}_CloudTrail-Digest_{region}_{trail}_{home}_") + r"(\d{8}T\d{6}Z)\.json\.gz$"
    )


LOG_KEY_RE = re.compile(
    r"^(?:.+/)?AWSLogs/(?P<account>\d{12})/CloudTrail/(?P<region>[a-z]{2}(?:-[a-z]+)+-\d)/\d{4}/\d{2}/\d{2}/"
    r"(?P=account)_CloudTrail_(?P=region)_\d{8}T\d{4}Z_[0-9A-Za-z]{16}\.json\.gz$"
)


class Store:
    """Digests and log files of one bucket, parsed once (objects are create-only)."""

    def __init__(self, name: str):
        self.name = name
        self.digest_files: dict[str, Digest] = {}
        self.log_files: dict[str, LogFile] = {}

    def digests(self, region: str) -> list[Digest]:
        head = digest_prefix(region) + "/"
        ds = [d for k, d in self.digest_files.items() if head in k]
        return sorted(ds, key=lambda d: (d.end, d.key))

    def logs(self, region: str) -> dict[str, LogFile]:
        head = f"/CloudTrail/{region}/"
        return {k: f for k, f in self.log_files.items() if head in "/" + k}

    def records(self, region: str | None = None) -> Iterable[tuple[LogFile, dict]]:
        files = self.log_files.values() if region is None else self.logs(region).values()
        for f in files:
            for r in f.records:
                yield f, r

    def file_with_request(self, request_id: str) -> LogFile | None:
        for f, r in self.records():
            if r.get("requestID") == request_id and r.get("eventSource") == "cloudtrail.amazonaws.com":
                return f
        return None

    def file_with_event(self, event_id: str) -> LogFile | None:
        for f, r in self.records():
            if r.get("eventID") == event_id:
                return f
        return None

    def lister_of(self, region: str, log_key: str) -> list[Digest]:
        return [d for d in self.digests(region) if log_key in d.log_keys]


class LocalBucket(Store):
    """A bucket directory of the local store: ``<data_dir>/buckets/NAME``, digest signatures in
    ``.opentrail-metadata/<key>.json``."""

    def __init__(self, server, name: str, create: bool = True):
        super().__init__(name)
        self.path = Path(server.data_dir) / "buckets" / name
        if create:
            os.makedirs(self.path)
        self.no_sidecar: set[str] = set()

    def sidecar(self, key: str) -> Path:
        return self.path / ".opentrail-metadata" / (key + ".json")

    def scan(self) -> "LocalBucket":
        if not self.path.is_dir():
            return self
        for root, dirs, files in os.walk(self.path):
            if Path(root) == self.path and ".opentrail-metadata" in dirs:
                dirs.remove(".opentrail-metadata")
            for f in files:
                full = Path(root) / f
                key = full.relative_to(self.path).as_posix()
                if not key.endswith(".json.gz") or key in self.digest_files or key in self.log_files:
                    continue
                try:
                    raw = full.read_bytes()
                    written = full.stat().st_mtime
                except FileNotFoundError:
                    continue
                if "/CloudTrail-Digest/" in key:
                    try:
                        meta = json.loads(self.sidecar(key).read_text())
                    except (FileNotFoundError, ValueError):
                        self.no_sidecar.add(key)  # maybe not written yet: looked at again next scan
                        continue
                    self.no_sidecar.discard(key)
                    self.digest_files[key] = Digest(self.name, key, raw, meta, written)
                elif "/CloudTrail/" in key:
                    self.log_files[key] = LogFile(self.name, key, raw, written)
        return self

    def forget(self) -> None:
        self.digest_files.clear()
        self.log_files.clear()
        self.no_sidecar.clear()


# ---------------------------------------------------------------------------
# Checks shared by both modules
# ---------------------------------------------------------------------------


def check_digest_shape(d: Digest, *, bucket: str, region: str, trail: str, home: str = HOME,
                       logs: dict[str, LogFile] | None = None) -> None:
    """One digest file on its own: key, fields, signature metadata, listed files."""
    m = digest_key_re(region, trail, home).match(d.key)
    assert m, f"digest key {d.key!r} does not follow {digest_key_re(region, trail, home).pattern}"
    y, mo, day, stamp = m.groups()
    assert stamp == key_stamp(d.end), f"{d.key}: key stamp {stamp} != digestEndTime {disp(d.end)}"
    assert (y, mo, day) == (stamp[:4], stamp[4:6], stamp[6:8]), f"{d.key}: date folders != stamp date"
    doc = d.doc
    assert set(doc) == DIGEST_FIELDS, (
        f"{d.key}: fields differ: missing {sorted(DIGEST_FIELDS - set(doc))}, extra {sorted(set(doc) - DIGEST_FIELDS)}")
    assert doc["awsAccountId"] == ACCOUNT_ID, doc["awsAccountId"]
    assert doc["digestS3Bucket"] == bucket, (d.key, doc["digestS3Bucket"])
    assert doc["digestS3Object"] == d.key, (d.key, doc["digestS3Object"])
    assert isinstance(doc["digestPublicKeyFingerprint"], str) and HEX32.match(doc["digestPublicKeyFingerprint"]), doc
    assert doc["digestSignatureAlgorithm"] == "SHA256withRSA", doc["digestSignatureAlgorithm"]
    assert d.start < d.end, f"{d.key}: empty or negative window [{disp(d.start)}, {disp(d.end)}]"
    # Signature metadata (S3 object metadata or the local sidecar): exactly these two.
    assert set(d.meta) == {"signature", "signature-algorithm"}, f"{d.key}: signature metadata {d.meta!r}"
    assert d.meta["signature-algorithm"] == "SHA256withRSA", d.meta
    assert isinstance(d.signature, str) and SIG_RE.match(d.signature), f"{d.key}: signature {d.signature!r}"
    # previous*: all five null (a chain's first digest) or all five set.
    prev = [doc[f] for f in PREVIOUS_FIELDS]
    if any(v is None for v in prev):
        assert all(v is None for v in prev), f"{d.key}: some previous* fields null, some not: {prev}"
    else:
        assert doc["previousDigestS3Bucket"] == bucket, doc["previousDigestS3Bucket"]
        assert digest_key_re(region, trail, home).match(doc["previousDigestS3Object"]), doc["previousDigestS3Object"]
        assert HEX64.match(doc["previousDigestHashValue"]), doc["previousDigestHashValue"]
        assert doc["previousDigestHashAlgorithm"] == "SHA-256", doc["previousDigestHashAlgorithm"]
        assert SIG_RE.match(doc["previousDigestSignature"]), doc["previousDigestSignature"]
    files = doc["logFiles"]
    assert isinstance(files, list), f"{d.key}: logFiles is not a list"
    for lf in files:
        assert isinstance(lf, dict) and set(lf) == LOG_ENTRY_FIELDS, f"{d.key}: log file entry {lf!r}"
        assert lf["s3Bucket"] == bucket, lf
        m2 = LOG_KEY_RE.match(lf["s3Object"])
        assert m2 and m2["region"] == region and m2["account"] == ACCOUNT_ID, f"{d.key}: listed {lf['s3Object']!r}"
        assert lf["hashAlgorithm"] == "SHA-256", lf
        assert isinstance(lf["hashValue"], str) and HEX64.match(lf["hashValue"]), lf
        assert parse_z(lf["oldestEventTime"], d.key) <= parse_z(lf["newestEventTime"], d.key), lf
        if logs is not None and lf["s3Object"] in logs:
            real = logs[lf["s3Object"]]
            assert lf["hashValue"] == real.sha256, f"{d.key}: hash of {lf['s3Object']} is not the file's SHA-256"
            assert (lf["oldestEventTime"], lf["newestEventTime"]) == (real.oldest, real.newest), (
                f"{d.key}: event times of {lf['s3Object']}: listed {lf['oldestEventTime']}..{lf['newestEventTime']}, "
                f"records {real.oldest}..{real.newest}")
    keys = [lf["s3Object"] for lf in files]
    assert len(keys) == len(set(keys)), f"{d.key}: a log file listed twice: {keys}"
    if files:
        assert doc["oldestEventTime"] == min(lf["oldestEventTime"] for lf in files), d.key
        assert doc["newestEventTime"] == max(lf["newestEventTime"] for lf in files), d.key
    else:
        assert doc["oldestEventTime"] is None and doc["newestEventTime"] is None, (
            f"{d.key}: no log files but event times {doc['oldestEventTime']!r}/{doc['newestEventTime']!r}")


def split_chains(digests: list[Digest]) -> list[list[Digest]]:
    """Digests of one region (sorted by end) cut where a digest starts a chain (previous null)."""
    chains: list[list[Digest]] = []
    for d in digests:
        if d.prev_key is None or not chains:
            chains.append([])
        chains[-1].append(d)
    return chains


def check_links(chain: list[Digest], bucket: str) -> None:
    """First: previous* null.  Every other: previous* = the digest just before it, with that
    digest's real (uncompressed) SHA-256 and its signature; windows contiguous."""
    first = chain[0]
    assert all(first.doc[f] is None for f in PREVIOUS_FIELDS), (
        f"chain's first digest {first.key} has previous* {[first.doc[f] for f in PREVIOUS_FIELDS]}")
    for p, d in zip(chain, chain[1:]):
        assert d.doc["previousDigestS3Bucket"] == bucket, d.key
        assert d.doc["previousDigestS3Object"] == p.key, (
            f"{d.key} points back to {d.doc['previousDigestS3Object']}, but the digest before it is {p.key}")
        assert d.doc["previousDigestHashValue"] == p.sha256, (
            f"{d.key}: previousDigestHashValue {d.doc['previousDigestHashValue']} != sha256 of the uncompressed "
            f"{p.key} ({p.sha256})")
        assert d.doc["previousDigestHashAlgorithm"] == "SHA-256"
        assert d.doc["previousDigestSignature"] == p.signature, f"{d.key}: previousDigestSignature != {p.key}'s signature"
        assert d.start == p.end, f"windows not contiguous: {p!r} then {d!r}"


def check_windows(chain: list[Digest], period: float, ended: bool) -> None:
    """Regular windows are exactly one period; a chain's final window (once it ended) may be shorter."""
    regular = chain[:-1] if ended else chain
    for d in regular:
        assert d.duration() == period, f"{d!r}: window of {d.duration()} s, the period is {period} s"
    if ended:
        last = chain[-1]
        assert 0 < last.duration() <= period, f"final {last!r}: window of {last.duration()} s"


def check_listing(digests: list[Digest], logs: dict[str, LogFile], *, complete: bool = True) -> dict[str, Digest]:
    """Every listed file exists (hash and event times checked by check_digest_shape) and is
    listed once; with ``complete``, every log file of the region is listed.  Returns key ->
    the digest listing it."""
    lister: dict[str, Digest] = {}
    for d in digests:
        for k in d.log_keys:
            assert k not in lister, f"{k} listed by two digests: {lister[k].key} and {d.key}"
            lister[k] = d
            assert k in logs, f"{d.key} lists {k}, which is not in the bucket"
    if complete:
        unlisted = sorted(set(logs) - set(lister))
        assert not unlisted, f"{len(unlisted)} log files delivered with validation on are in no digest: {unlisted[:5]}"
    return lister


def check_delivery_windows(lister: dict[str, Digest], logs: dict[str, LogFile]) -> None:
    """A file is listed by the digest of the window its delivery committed in (written just before)."""
    for k, d in lister.items():
        w = logs[k].written
        assert d.start.timestamp() - COMMIT_SLACK_S <= w <= d.end.timestamp() + 0.05, (
            f"{k} written at {utc(w)} is listed by {d!r}")


# ---------------------------------------------------------------------------
# Public keys
# ---------------------------------------------------------------------------


@dataclass
class PubKey:
    fingerprint: str
    der: bytes
    start: dt.datetime
    end: dt.datetime

    def rsa(self) -> rsa.PublicKey:
        return rsa.PublicKey.load_pkcs1(self.der, format="DER")


def check_public_key(k: dict) -> PubKey:
    assert set(k) == {"Value", "ValidityStartTime", "ValidityEndTime", "Fingerprint"}, k
    # On the wire Value is base64 of the DER PKCS#1 RSAPublicKey ("MIIBCgKCAQEA..."); boto3 decodes
    # the blob, so it hands back the DER bytes.  (The AWS CLI's session leaves blobs undecoded and
    # its validator base64-decodes Value itself.)
    der = k["Value"]
    assert isinstance(der, bytes) and base64.b64encode(der).startswith(b"MIIBCgKCAQEA"), (
        f"ListPublicKeys Value is not base64 of a DER PKCS#1 RSA-2048 public key: {der[:24]!r}")
    pub = rsa.PublicKey.load_pkcs1(der, format="DER")
    assert pub.n.bit_length() == 2048 and pub.e == 65537, (pub.n.bit_length(), pub.e)
    assert pub.save_pkcs1(format="DER") == der, "Value is not exactly one DER RSAPublicKey"
    assert k["Fingerprint"] == hashlib.md5(der).hexdigest(), (k["Fingerprint"], hashlib.md5(der).hexdigest())
    assert isinstance(k["ValidityStartTime"], dt.datetime) and isinstance(k["ValidityEndTime"], dt.datetime), k
    assert k["ValidityStartTime"] < k["ValidityEndTime"], k
    return PubKey(k["Fingerprint"], der, k["ValidityStartTime"], k["ValidityEndTime"])


def public_keys(server, region: str, start: dt.datetime | None = None, end: dt.datetime | None = None) -> dict[str, PubKey]:
    params = {}
    if start is not None:
        params["StartTime"] = start
    if end is not None:
        params["EndTime"] = end
    resp = cloudtrail_client(server, region).list_public_keys(**params)
    assert "NextToken" not in resp, resp
    keys = [check_public_key(k) for k in resp["PublicKeyList"]]
    out = {k.fingerprint: k for k in keys}
    assert len(out) == len(keys), f"a fingerprint listed twice: {[k.fingerprint for k in keys]}"
    return out


def verify_digest(d: Digest, key: PubKey) -> None:
    """What the AWS CLI does: PKCS#1 v1.5 SHA-256 over the 4-line string, hex signature."""
    msg = string_to_sign(d.doc, d.body)
    try:
        assert rsa.verify(msg, binascii.unhexlify(d.signature), key.rsa()) == "SHA-256"
    except rsa.VerificationError:
        pytest.fail(f"{d.key}: signature does not verify with key {key.fingerprint} over {msg!r}", pytrace=False)


def check_signatures(server, region: str, digests: list[Digest]) -> set[str]:
    """Each digest's key is listed by ListPublicKeys (request region = the chain's region) for a
    range covering the digest (its window up to when it was written) and verifies it."""
    fps = set()
    for d in digests:
        hi = utc(math.ceil(max(d.end.timestamp(), d.written)) + 1)
        keys = public_keys(server, region, d.start, hi)
        assert d.fingerprint in keys, (
            f"{d.key}: key {d.fingerprint} not listed by ListPublicKeys({region}, {disp(d.start)}, {disp(hi)}): "
            f"{sorted(keys)}")
        verify_digest(d, keys[d.fingerprint])
        fps.add(d.fingerprint)
    return fps


# ---------------------------------------------------------------------------
# The AWS CLI's validate-logs, modelled (for exact expected output)
# ---------------------------------------------------------------------------


@dataclass
class Report:
    header: str
    ok_lines: list[str]
    summary: list[str]
    err_lines: list[str]
    exit_code: int
    valid_digests: int = 0
    invalid_digests: int = 0
    valid_logs: int = 0
    invalid_logs: int = 0


def aws_report(arn: str, bucket: str, digests: list[Digest], start: dt.datetime, end: dt.datetime, *,
               home: str = HOME, missing: Iterable[str] = (), invalid: dict[str, str] | None = None,
               log_verdicts: dict[str, str] | None = None, extra_digest_errors: Iterable[str] = (),
               extra_log_errors: Iterable[str] = ()) -> Report:
    """What ``aws cloudtrail validate-logs --verbose`` prints for one chain region of a bucket
    (awscli/customizations/cloudtrail/validation.py, followed step by step).

    ``digests``: the region's digests as delivered; ``missing``: keys deleted since;
    ``invalid``: key -> the digest's error line; ``log_verdicts``: log key -> "INVALID: ...".
    ``extra_*``: lines only OpenTrail's validator adds (each one an invalid digest / log file)."""
    missing = set(missing)
    invalid = dict(invalid or {})
    log_verdicts = dict(log_verdicts or {})
    by_key = {d.key: d for d in digests}
    lo, hi = key_stamp(start), key_stamp(end + dt.timedelta(hours=1))
    listing = sorted(k for k in by_key if k not in missing and lo <= k[-24:-8] <= hi)

    def pop_before(before: str | None) -> str | None:
        if before is None:
            return listing.pop() if listing else None
        while listing:
            k = listing.pop()
            if stamp_of_key(k) < stamp_of_key(before):
                return k
        return None

    ok: list[str] = []
    err: list[str] = []
    vd = idg = vl = il = 0
    found_start = found_end = None
    key = pop_before(None)
    last_start = stamp_of_key(key) if key else None
    while key and start <= last_start:
        if key in missing or key not in by_key:
            err.append(f"Digest file\ts3://{bucket}/{key}\tINVALID: not found")
            idg += 1
            key = pop_before(key)
            continue
        if key in invalid:
            err.append(invalid[key])
            idg += 1
            key = pop_before(key)
            continue
        d = by_key[key]
        vd += 1
        last_start = d.start
        s, e = max(d.start, start), min(d.end, end)
        found_start = s if found_start is None or s < found_start else found_start
        found_end = e if found_end is None or e > found_end else found_end
        ok.append(f"Digest file\ts3://{bucket}/{key}\tvalid")
        for lf in d.doc["logFiles"]:
            verdict = log_verdicts.get(lf["s3Object"])
            line = f"Log file\ts3://{lf['s3Bucket']}/{lf['s3Object']}\t"
            if verdict is None:
                ok.append(line + "valid")
                vl += 1
            else:
                err.append(line + verdict)
                il += 1
        if d.doc["previousDigestS3Bucket"] is None or d.doc["previousDigestS3Object"] is None:
            nxt = pop_before(key)
            if nxt:
                err.append(f"No log files were delivered by CloudTrail between {disp(stamp_of_key(nxt))} "
                           f"and {disp(d.start)}")
            key = nxt
        else:
            key = d.doc["previousDigestS3Object"]
    for line in extra_digest_errors:
        err.append(line)
        idg += 1
    for line in extra_log_errors:
        err.append(line)
        il += 1
    summary = [f"Results requested for {disp(start)} to {disp(end)}"]
    if not vd and not idg:
        summary.append("No digests found")
    else:
        if found_start is None:
            summary.append("No valid digests found in range")
        else:
            summary.append(f"Results found for {disp(found_start)} to {disp(found_end)}:")
        for valid, bad, name in ((vd, idg, "digest"), (vl, il, "log")):
            total = valid + bad
            if total:
                summary.append(f"{valid}/{total} {name} files valid" + (f", {bad}/{total} {name} files INVALID" if bad else ""))
    return Report(
        header=f"Validating log files for trail {arn} between {disp(start)} and {disp(end)}",
        ok_lines=ok, summary=summary, err_lines=err, exit_code=1 if (idg or il) else 0,
        valid_digests=vd, invalid_digests=idg, valid_logs=vl, invalid_logs=il,
    )


def report_mismatch(proc: subprocess.CompletedProcess, exp: Report) -> str | None:
    """None if the validator printed exactly ``exp`` (per-file lines in any order), else why not."""
    out = [line for line in proc.stdout.splitlines() if line.strip()]
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    problems = []
    if proc.returncode != exp.exit_code:
        problems.append(f"exit status {proc.returncode}, expected {exp.exit_code}")
    n = len(exp.summary)
    if not out or out[0] != exp.header:
        problems.append(f"first stdout line {out[:1]!r}, expected {exp.header!r}")
    if out[-n:] != exp.summary:
        problems.append(f"summary {out[-n:]!r}, expected {exp.summary!r}")
    body = out[1:-n] if len(out) > n else []
    if sorted(body) != sorted(exp.ok_lines):
        problems.append(f"stdout per-file lines: unexpected {sorted(set(body) - set(exp.ok_lines))[:8]}, "
                        f"missing {sorted(set(exp.ok_lines) - set(body))[:8]} ({len(body)} vs {len(exp.ok_lines)} lines)")
    if sorted(err) != sorted(exp.err_lines):
        problems.append(f"stderr: unexpected {sorted(set(err) - set(exp.err_lines))[:8]}, "
                        f"missing {sorted(set(exp.err_lines) - set(err))[:8]}")
    if not problems:
        return None
    return "; ".join(problems) + f"\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"


def assert_report(proc: subprocess.CompletedProcess, exp: Report, who: str) -> None:
    why = report_mismatch(proc, exp)
    assert why is None, f"{who}: {why}"


def validator_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "OPENTRAIL_")) and k != "RUST_LOG"}
    env.update({
        "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_PAGER": "",
        "PYTHONWARNINGS": "ignore",
    })
    env.update(extra or {})
    return env


def run_opentrail_validate(server, arn: str, start: dt.datetime, end: dt.datetime, region: str,
                           *source: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [server.binary, "validate-logs", "--trail-arn", arn, "--start-time", disp(start),
           "--end-time", disp(end), "--endpoint-url", server.url, "--region", region,
           *source, "--verbose", "--no-progress"]
    return subprocess.run(cmd, env=env or validator_env(), capture_output=True, text=True, timeout=180)


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def poll(what: str, fn: Callable[[], Any], timeout: float = WAIT_S, interval: float = POLL_S) -> Any:
    return poll_until(what, fn, timeout, interval)


def trail_status(server, name: str) -> tuple[dict, dict]:
    """GetTrailStatus: boto3's parse and the raw JSON (boto3 drops nulls; absence is checked raw)."""
    return trail_status_with_body(server, name, HOME)


def request_id(resp: dict) -> str:
    rid = resp["ResponseMetadata"]["RequestId"]
    assert rid, resp
    return rid


def rec(marker: str, region: str = HOME, **kw: Any) -> dict:
    return make_record(user_name=marker, awsRegion=region, eventSource="ec2.amazonaws.com",
                       eventName="RunInstances", **kw)


def ingest(server, records: list[dict]) -> list[str]:
    ids = server.ingest_ok(records)
    assert ids == [r["eventID"] for r in records]
    return ids


def wait_records(bucket: LocalBucket, ids: Iterable[str], what: str) -> None:
    want = set(ids)

    def got():
        bucket.scan()
        have = {r["eventID"] for _f, r in bucket.records()}
        return want <= have

    poll(f"{what} in bucket {bucket.name}", got)


# ---------------------------------------------------------------------------
# The scripted run shared by most tests
# ---------------------------------------------------------------------------


@dataclass
class Scenario:
    main: LocalBucket
    toggle: LocalBucket
    plain: LocalBucket
    main_name: str
    toggle_name: str
    plain_name: str
    main_arn: str = ""
    toggle_arn: str = ""
    created: float = 0.0
    start1: tuple[float, float] = (0.0, 0.0)
    start2: tuple[float, float] = (0.0, 0.0)
    stop1_rid: str = ""
    stop2_rid: str = ""
    toggle_stop_rid: str = ""
    toggle_disable: tuple[float, float] = (0.0, 0.0)
    toggle_disable_rid: str = ""
    toggle_final_seen: float = 0.0
    toggle_final_key: str = ""
    toggle_enable: tuple[float, float] = (0.0, 0.0)
    status_before: tuple[dict, dict] = ({}, {})
    quiet: tuple[float, float] = (0.0, 0.0)
    old_event: dict = field(default_factory=dict)
    default_keys: dict = field(default_factory=dict)
    keys_at_final1: set = field(default_factory=set)
    keys_after_stop1: set = field(default_factory=set)
    keys_at_final2: set = field(default_factory=set)
    keys_after_stop2: set = field(default_factory=set)
    end: float = 0.0


def final_digest(bucket: LocalBucket, region: str, rid: str) -> Digest | None:
    f = bucket.file_with_request(rid)
    if f is None:
        return None
    listers = bucket.lister_of(region, f.key)
    return listers[0] if listers else None


def digest_keys(bucket: LocalBucket) -> set[str]:
    bucket.scan()
    return set(bucket.digest_files)


@pytest.fixture(scope="module")
def scenario(server) -> Scenario:
    ct = cloudtrail_client(server, HOME)
    sc = Scenario(
        main=LocalBucket(server, f"dgm-{uid()}"), toggle=LocalBucket(server, f"dgt-{uid()}"),
        plain=LocalBucket(server, f"dgp-{uid()}"),
        main_name=f"dg-main-{uid()}", toggle_name=f"dg-toggle-{uid()}", plain_name=f"dg-plain-{uid()}",
    )
    sc.main_arn = ct.create_trail(Name=sc.main_name, S3BucketName=sc.main.name, IsMultiRegionTrail=True,
                                  EnableLogFileValidation=True)["TrailARN"]
    sc.toggle_arn = ct.create_trail(Name=sc.toggle_name, S3BucketName=sc.toggle.name,
                                    EnableLogFileValidation=True)["TrailARN"]
    ct.create_trail(Name=sc.plain_name, S3BucketName=sc.plain.name, IsMultiRegionTrail=True)
    sc.created = time.time()
    t0 = time.time()
    ct.start_logging(Name=sc.main_name)
    sc.start1 = (t0, time.time())
    ct.start_logging(Name=sc.toggle_name)
    ct.start_logging(Name=sc.plain_name)
    sc.status_before = trail_status(server, sc.main_name)

    marker = f"dg-user-{uid()}"
    now = dt.datetime.now(UTC).replace(microsecond=0)
    sc.old_event = rec(marker, event_time=now - dt.timedelta(days=3))
    batch_a = [sc.old_event, rec(marker, event_time=now - dt.timedelta(seconds=90)), rec(marker, event_time=now)]
    wait_records(sc.main, ingest(server, batch_a), "batch A")

    # Nothing at all for 2.5 periods: at least one whole window without a delivery.
    q0 = time.time()
    time.sleep(2.5 * PERIOD_S)
    sc.quiet = (q0, time.time())

    batch_b = [rec(marker), rec(marker), rec(marker, region=OTHER)]
    wait_records(sc.main, ingest(server, batch_b), "batch B")

    # Activity until the home chain crossed a key rotation; meanwhile the toggle trail's
    # validation goes off and on again.
    phase = 0
    i = 0
    deadline = time.monotonic() + 90
    while True:
        batch = [rec(marker)] + ([rec(marker, region=OTHER)] if i % 4 == 0 else [])
        ingest(server, batch)
        i += 1
        sc.main.scan()
        sc.toggle.scan()
        home = sc.main.digests(HOME)
        main_done = len(home) >= 8 and len({d.fingerprint for d in home}) >= 2
        if phase == 0 and len(sc.toggle.digests(HOME)) >= 2:
            t = time.time()
            sc.toggle_disable_rid = request_id(ct.update_trail(Name=sc.toggle_name, EnableLogFileValidation=False))
            sc.toggle_disable = (t, time.time())
            phase = 1
        elif phase == 1:
            # The chain's last digest: written after the UpdateTrail call, then none for 1.5 periods.
            newest = sc.toggle.digests(HOME)[-1]
            if newest.written > sc.toggle_disable[0] and time.time() - newest.written > 1.5 * PERIOD_S:
                sc.toggle_final_key = newest.key
                sc.toggle_final_seen = time.time()
                phase = 2
        elif phase == 2:
            fin = sc.toggle.digest_files[sc.toggle_final_key]
            later = [f for f in sc.toggle.logs(HOME).values() if f.written > fin.written]
            if len(later) >= 2:
                t = time.time()
                ct.update_trail(Name=sc.toggle_name, EnableLogFileValidation=True)
                sc.toggle_enable = (t, time.time())
                phase = 3
        elif phase == 3:
            if sum(1 for d in sc.toggle.digests(HOME) if d.start.timestamp() >= math.floor(sc.toggle_enable[0])) >= 2:
                phase = 4
        if main_done and phase == 4:
            break
        assert time.monotonic() < deadline, (
            f"scenario stuck: home digests {len(home)} with keys {sorted({d.fingerprint for d in home})}, "
            f"toggle phase {phase}")
        time.sleep(0.5)

    # ListPublicKeys without a range, while trails are signing.
    for region in (HOME, OTHER):
        t0 = time.time()
        resp = cloudtrail_client(server, region).list_public_keys()
        sc.default_keys[region] = (t0, resp["PublicKeyList"], time.time())  # checked by the tests

    # StopLogging: a final digest listing the StopLogging record, then nothing.
    sc.stop1_rid = request_id(ct.stop_logging(Name=sc.main_name))
    fin1 = poll("main's final digest (listing its StopLogging record)",
                lambda: sc.main.scan() and final_digest(sc.main, HOME, sc.stop1_rid))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the other region's chain ends in the same round
        sc.main.scan()
        if any(d.end == fin1.end for d in sc.main.digests(OTHER)):
            break
        time.sleep(POLL_S)
    sc.keys_at_final1 = digest_keys(sc.main)
    time.sleep(2.5 * PERIOD_S)
    sc.keys_after_stop1 = digest_keys(sc.main)

    # StartLogging again: a new chain per region (the other region's with its first file).
    t0 = time.time()
    ct.start_logging(Name=sc.main_name)
    sc.start2 = (t0, time.time())
    marker2 = f"dg-user2-{uid()}"
    wait_records(sc.main, ingest(server, [rec(marker2), rec(marker2, region=OTHER)]), "events after the restart")
    poll("two digests of the restarted home chain and one of the other region",
         lambda: sc.main.scan() and
         sum(1 for d in sc.main.digests(HOME) if d.start.timestamp() >= math.floor(sc.start2[0])) >= 2 and
         any(d.start.timestamp() >= math.floor(sc.start2[0]) for d in sc.main.digests(OTHER)))
    sc.stop2_rid = request_id(ct.stop_logging(Name=sc.main_name))
    sc.toggle_stop_rid = request_id(ct.stop_logging(Name=sc.toggle_name))
    ct.stop_logging(Name=sc.plain_name)
    fin2 = poll("main's second final digest", lambda: sc.main.scan() and final_digest(sc.main, HOME, sc.stop2_rid))
    poll("toggle's final digest", lambda: sc.toggle.scan() and final_digest(sc.toggle, HOME, sc.toggle_stop_rid))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        sc.main.scan()
        if any(d.end == fin2.end for d in sc.main.digests(OTHER)):
            break
        time.sleep(POLL_S)
    sc.keys_at_final2 = digest_keys(sc.main)
    time.sleep(2.5 * PERIOD_S)
    sc.keys_after_stop2 = digest_keys(sc.main)
    sc.toggle.scan()
    sc.plain.scan()
    sc.end = time.time()
    return sc


# ---------------------------------------------------------------------------
# Tests on the scripted run
# ---------------------------------------------------------------------------


def test_digest_files_keys_fields_and_signature_sidecars(scenario):
    sc = scenario
    for bucket, trail, region in ((sc.main, sc.main_name, HOME), (sc.main, sc.main_name, OTHER),
                                  (sc.toggle, sc.toggle_name, HOME)):
        ds = bucket.digests(region)
        assert ds, f"no digests for {trail} in {region}"
        logs = bucket.logs(region)
        for d in ds:
            check_digest_shape(d, bucket=bucket.name, region=region, trail=trail, logs=logs)
            sidecar = json.loads(bucket.sidecar(d.key).read_text())
            assert sidecar == {"signature": d.signature, "signature-algorithm": "SHA256withRSA"}, sidecar
        ends = [d.end for d in ds]
        assert len(ends) == len(set(ends)), f"{trail}/{region}: two digests for one window end"
    assert not sc.main.no_sidecar and not sc.toggle.no_sidecar, (
        f"digest files without a signature sidecar: {sorted(sc.main.no_sidecar | sc.toggle.no_sidecar)}")
    # Every digest in the bucket is one of the trail's (nothing else under CloudTrail-Digest/).
    for bucket in (sc.main, sc.toggle):
        assert set(bucket.digest_files) == {d.key for r in (HOME, OTHER) for d in bucket.digests(r)}
    assert sc.toggle.digests(OTHER) == [], "a single-region trail wrote digests for another region"


def test_digests_are_written_once_per_period_after_their_window(scenario):
    for bucket, region in ((scenario.main, HOME), (scenario.main, OTHER), (scenario.toggle, HOME)):
        for chain in split_chains(bucket.digests(region)):
            # A regular digest is written once its window has closed, and soon.
            for d in chain[:-1]:
                assert d.end.timestamp() - 0.05 <= d.written <= d.end.timestamp() + DIGEST_LATENESS_S, (
                    f"{d!r} written at {utc(d.written)}")
            # A chain's final digest is written when the chain ends; its (whole-second) end time
            # is at most a second past that.
            fin = chain[-1]
            assert fin.end.timestamp() - 1.0 <= fin.written <= fin.end.timestamp() + DIGEST_LATENESS_S, (
                f"final {fin!r} written at {utc(fin.written)}")


def test_chains_are_contiguous_linked_and_one_period_per_window(scenario):
    sc = scenario
    for bucket, region, n_chains in ((sc.main, HOME, 2), (sc.main, OTHER, 2), (sc.toggle, HOME, 2)):
        chains = split_chains(bucket.digests(region))
        assert len(chains) == n_chains, (
            f"{bucket.name}/{region}: {len(chains)} chains, expected {n_chains}: {[c[0] for c in chains]}")
        for chain in chains:
            check_links(chain, bucket.name)
        for chain in chains:
            check_windows(chain, PERIOD_S, ended=True)
    home1 = split_chains(sc.main.digests(HOME))[0]
    assert len(home1) >= 8, home1
    # The first window starts when logging started.
    first = home1[0]
    assert math.floor(sc.start1[0]) <= first.start.timestamp() <= sc.start1[1] + 1.0, (
        f"first window starts {disp(first.start)}; StartLogging at {utc(sc.start1[0])}..{utc(sc.start1[1])}")


def test_log_files_listed_once_with_their_sha256_and_event_times(scenario):
    sc = scenario
    for region in (HOME, OTHER):
        logs = sc.main.logs(region)
        assert logs, region
        lister = check_listing(sc.main.digests(region), logs, complete=True)
        check_delivery_windows(lister, logs)
    # The record that happened three days ago is the oldest of its file, in the digest too.
    f = sc.main.file_with_event(sc.old_event["eventID"])
    assert f is not None
    entry = [lf for d in sc.main.digests(HOME) for lf in d.doc["logFiles"] if lf["s3Object"] == f.key]
    assert len(entry) == 1
    assert entry[0]["oldestEventTime"] == sc.old_event["eventTime"], entry
    assert entry[0]["hashValue"] == hashlib.sha256(gunzip_single_member((sc.main.path / f.key).read_bytes(), f.key)).hexdigest()
    lister = sc.main.lister_of(HOME, f.key)[0]
    assert lister.doc["oldestEventTime"] == sc.old_event["eventTime"], lister.doc["oldestEventTime"]


def test_empty_windows_still_get_a_digest(scenario):
    sc = scenario
    q0, q1 = sc.quiet
    quiet = [d for d in sc.main.digests(HOME)
             if d.start.timestamp() >= q0 + 0.5 and d.end.timestamp() <= q1]
    assert quiet, f"no digest window inside the quiet stretch {utc(q0)}..{utc(q1)}"
    for d in quiet:
        assert d.doc["logFiles"] == [], f"{d!r} lists files delivered in a quiet stretch"
        assert d.doc["oldestEventTime"] is None and d.doc["newestEventTime"] is None, d.doc
    # The other region's chain had not started yet: its first digest comes later.
    other = sc.main.digests(OTHER)
    assert other and other[0].start.timestamp() >= q1 - PERIOD_S, (other[:1], utc(q1))


def test_stop_logging_ends_the_chain_and_start_logging_starts_a_new_one(server, scenario):
    sc = scenario
    home = sc.main.digests(HOME)
    chain1, chain2 = split_chains(home)
    fin1 = final_digest(sc.main, HOME, sc.stop1_rid)
    fin2 = final_digest(sc.main, HOME, sc.stop2_rid)
    assert fin1 is not None and fin2 is not None
    assert chain1[-1] is fin1, f"the digest listing StopLogging ({fin1!r}) is not the chain's last ({chain1[-1]!r})"
    assert chain2[-1] is fin2, f"the digest listing the second StopLogging ({fin2!r}) is not the last ({chain2[-1]!r})"
    stop_file = sc.main.file_with_request(sc.stop1_rid)
    assert fin1.end.timestamp() >= stop_file.written - 0.05
    # No digest while stopped; none after the final one.
    assert sc.keys_after_stop1 == sc.keys_at_final1, (
        f"digests written after StopLogging: {sorted(sc.keys_after_stop1 - sc.keys_at_final1)}")
    assert sc.keys_after_stop2 == sc.keys_at_final2, sorted(sc.keys_after_stop2 - sc.keys_at_final2)
    assert set(sc.main.digest_files) == sc.keys_after_stop2, "digests written long after the final one"
    # The new chain starts at StartLogging, from scratch.
    first2 = chain2[0]
    assert all(first2.doc[f] is None for f in PREVIOUS_FIELDS), first2.doc
    assert math.floor(sc.start2[0]) <= first2.start.timestamp() <= sc.start2[1] + 1.0, (
        f"{first2!r}; StartLogging at {utc(sc.start2[0])}..{utc(sc.start2[1])}")
    assert len(chain2) >= 3, chain2  # two regular windows and the final one
    # The other region's chains end in the same rounds as the home chain's.
    o1, o2 = split_chains(sc.main.digests(OTHER))
    assert o1[-1].end == fin1.end, (o1[-1], fin1)
    assert o2[-1].end == fin2.end, (o2[-1], fin2)
    st, raw = trail_status(server, sc.main_name)
    assert st["IsLogging"] is False


def test_other_region_chain_starts_with_its_first_log_file(scenario):
    sc = scenario
    home = sc.main.digests(HOME)
    logs = sc.main.logs(OTHER)
    for n, chain in enumerate(split_chains(sc.main.digests(OTHER))):
        first = chain[0]
        lo = first.start.timestamp() - COMMIT_SLACK_S
        segment_files = [f for f in logs.values() if f.written >= lo and f.written <= chain[-1].end.timestamp() + 0.05]
        earliest = min(segment_files, key=lambda f: f.written)
        assert earliest.key in first.log_keys, (
            f"chain {n}: the first {OTHER} file {earliest.key} is not in the chain's first digest {first!r}")
        # Same round as the home chain's digest with that window.
        assert any(h.start == first.start and h.end == first.end for h in home), first
    # Before the first file of the other region there is no digest for it.
    first_file = min(logs.values(), key=lambda f: f.written)
    first_digest = sc.main.digests(OTHER)[0]
    assert first_digest.start.timestamp() <= first_file.written + 0.05, (first_digest, utc(first_file.written))
    assert first_digest.start.timestamp() > sc.quiet[0], "the other region's chain started before its first log file"


def test_turning_validation_off_ends_the_chain_and_on_starts_a_new_one(scenario):
    sc = scenario
    chains = split_chains(sc.toggle.digests(HOME))
    assert len(chains) == 2, chains
    chain1, chain2 = chains
    fin = chain1[-1]
    assert fin.key == sc.toggle_final_key
    assert fin.written > sc.toggle_disable[0], (fin, utc(sc.toggle_disable[0]))
    first2 = chain2[0]
    assert math.floor(sc.toggle_enable[0]) <= first2.start.timestamp() <= sc.toggle_enable[1] + 1.0, (
        f"{first2!r}; validation back on at {utc(sc.toggle_enable[0])}..{utc(sc.toggle_enable[1])}")
    logs = sc.toggle.logs(HOME)
    lister = check_listing(sc.toggle.digests(HOME), logs, complete=False)
    off = [k for k, f in logs.items() if fin.written < f.written < sc.toggle_enable[0]]
    assert len(off) >= 2, "the run did not deliver files while validation was off"
    listed_off = [k for k in off if k in lister]
    assert not listed_off, f"files delivered with validation off are listed: {listed_off}"
    on = [k for k, f in logs.items() if f.written > sc.toggle_enable[1] or f.written < fin.start.timestamp()]
    missing = [k for k in on if k not in lister]
    assert not missing, f"files delivered with validation on are in no digest: {missing}"
    # The chain covers the logs up to and including the UpdateTrail that ended it: the file
    # holding that call is listed by one of the chain's digests (the one whose window its
    # delivery fell in), and the final digest is written after it.
    update_file = sc.toggle.file_with_request(sc.toggle_disable_rid)
    assert update_file is not None, "the UpdateTrail record was not delivered"
    listers = [d for d in chain1 if update_file.key in d.log_keys]
    assert len(listers) == 1, (
        f"{update_file.key} (written {utc(update_file.written)}), the file with the UpdateTrail that "
        f"turned validation off, is listed by {listers} in chain 1 (final {fin!r})")
    # The window is decided by the delivery's commit, which follows the file's write.
    assert (listers[0].start.timestamp() - COMMIT_SLACK_S <= update_file.written
            < listers[0].end.timestamp() + 1.0)
    assert fin.written >= update_file.written


def test_trail_without_validation_gets_no_digests(server, scenario):
    sc = scenario
    assert sc.plain.logs(HOME), "the plain trail delivered nothing"
    assert sc.plain.digest_files == {} and not sc.plain.no_sidecar
    assert not any("CloudTrail-Digest" in p.as_posix() for p in sc.plain.path.rglob("*"))
    assert not (sc.plain.path / ".opentrail-metadata").exists()
    st, raw = trail_status(server, sc.plain_name)
    assert "LatestDigestDeliveryTime" not in raw and "LatestDigestDeliveryError" not in raw, raw


def test_trail_status_latest_digest_delivery_time(server, scenario):
    sc = scenario
    _, before = sc.status_before
    assert before.get("IsLogging") is True, before
    assert before.get("LatestDigestDeliveryTime") is None and before.get("LatestDigestDeliveryError") is None, (
        f"digest status before the first digest: {before}")
    for name, bucket in ((sc.main_name, sc.main), (sc.toggle_name, sc.toggle)):
        st, raw = trail_status(server, name)
        newest = max((d for r in (HOME, OTHER) for d in bucket.digests(r)), key=lambda d: d.written)
        t = st.get("LatestDigestDeliveryTime")
        assert isinstance(t, dt.datetime), st
        assert newest.written - 0.5 <= t.timestamp() <= newest.written + 2.0, (
            f"{name}: LatestDigestDeliveryTime {t}, newest digest {newest!r} written {utc(newest.written)}")
        assert "LatestDigestDeliveryError" not in raw, raw


def test_signatures_verify_with_listed_keys_and_keys_rotate(server, scenario):
    sc = scenario
    home = sc.main.digests(HOME) + sc.toggle.digests(HOME)
    other = sc.main.digests(OTHER)
    home_fps = check_signatures(server, HOME, home)
    other_fps = check_signatures(server, OTHER, other)
    # A changed byte of the signed string fails (the check above is not vacuous).
    d = home[0]
    key = public_keys(server, HOME, d.start, utc(math.ceil(d.written) + 1))[d.fingerprint]
    forged = string_to_sign(d.doc, d.body).replace(b"\n", b"\n ", 1)
    with pytest.raises(rsa.VerificationError):
        rsa.verify(forged, binascii.unhexlify(d.signature), key.rsa())

    main_home_fps = [d.fingerprint for d in sc.main.digests(HOME)]
    assert len(set(main_home_fps)) >= 2, f"no key rotation over the run: {set(main_home_fps)}"
    # A key signs for about one rotation period, then the next one takes over.
    for fp in set(main_home_fps):
        times = [d.written for d in sc.main.digests(HOME) if d.fingerprint == fp]
        assert max(times) - min(times) <= ROTATION_S + PERIOD_S + 2, (
            f"key {fp} signed digests over {max(times) - min(times):.1f} s (rotation {ROTATION_S} s)")
    # Keys are per region.
    assert not home_fps & other_fps, f"a key signs in both regions: {home_fps & other_fps}"
    run = (utc(sc.created - 5), utc(sc.end + 1))
    listed_home = public_keys(server, HOME, *run)
    listed_other = public_keys(server, OTHER, *run)
    assert home_fps <= set(listed_home), sorted(home_fps - set(listed_home))
    assert other_fps <= set(listed_other), sorted(other_fps - set(listed_other))
    assert not set(listed_home) & set(listed_other)
    # "Replaced after this long": while digests are signed, each key takes over one rotation
    # period after the one before it.
    ordered = sorted(listed_home.values(), key=lambda k: k.start)
    for a, b in zip(ordered, ordered[1:]):
        if sc.created <= a.start.timestamp() and b.start.timestamp() <= sc.end:
            gap = (b.start - a.start).total_seconds()
            assert ROTATION_S - 0.5 <= gap <= ROTATION_S + PERIOD_S + 3, (
                f"key {b.fingerprint} replaced {a.fingerprint} after {gap:.1f} s; rotation is {ROTATION_S} s")


def keys_valid_at(keys: dict[str, PubKey], t0: float, t1: float) -> tuple[set[str], set[str]]:
    """(keys valid over the whole of [t0, t1], keys with a validity bound too close to call)."""
    valid = {fp for fp, k in keys.items() if k.start.timestamp() <= t0 and k.end.timestamp() >= t1}
    close = {fp for fp, k in keys.items()
             if any(t0 - 1 <= b <= t1 + 1 for b in (k.start.timestamp(), k.end.timestamp()))}
    return valid, close


def test_list_public_keys_shape_and_time_ranges(server, scenario):
    sc = scenario
    for region in (HOME, OTHER):
        everything = public_keys(server, region, utc(sc.created - 60), utc(time.time() + 3600))
        # Without a range: the keys valid now.  Asked while trails were signing (during the run) ...
        t0, raw_list, t1 = sc.default_keys[region]
        listed = [check_public_key(k).fingerprint for k in raw_list]
        valid, close = keys_valid_at(everything, t0, t1)
        assert listed and set(listed) <= set(everything), (region, listed)
        assert set(listed) - close == valid - close, (
            f"{region}: ListPublicKeys() during the run gave {sorted(listed)}, keys valid then: {sorted(valid)}")
        # ... and now.
        t0 = time.time()
        now_keys = public_keys(server, region)
        t1 = time.time()
        valid, close = keys_valid_at(everything, t0, t1)
        assert set(now_keys) - close == valid - close, (region, sorted(now_keys), sorted(valid))
    # Before any key existed: nothing.
    assert public_keys(server, HOME, dt.datetime(2001, 1, 1, tzinfo=UTC), dt.datetime(2001, 1, 2, tzinfo=UTC)) == {}
    # One instant inside a key's validity lists it.
    k = max(public_keys(server, HOME, utc(sc.created - 60), utc(time.time() + 3600)).values(), key=lambda k: k.start)
    mid = k.start + (k.end - k.start) / 2
    assert k.fingerprint in public_keys(server, HOME, mid, mid)
    with pytest.raises(ClientError) as ei:
        cloudtrail_client(server, HOME).list_public_keys(
            StartTime=dt.datetime(2026, 1, 2, tzinfo=UTC), EndTime=dt.datetime(2026, 1, 1, tzinfo=UTC))
    assert ei.value.response["Error"]["Code"] == "InvalidTimeRangeException", ei.value.response


def test_opentrail_validate_logs_on_the_local_store(server, scenario):
    sc = scenario
    start = whole(sc.created - 60)
    end = whole(time.time())
    for arn, bucket, region in ((sc.main_arn, sc.main, HOME), (sc.main_arn, sc.main, OTHER),
                                (sc.toggle_arn, sc.toggle, HOME)):
        ds = bucket.digests(region)
        exp = aws_report(arn, bucket.name, ds, start, end)
        # Sanity of the model: every digest and every listed file is reported valid.
        assert (exp.valid_digests, exp.invalid_digests) == (len(ds), 0)
        assert exp.valid_logs == sum(len(d.log_keys) for d in ds) and exp.invalid_logs == 0
        gaps = [line for line in exp.err_lines if line.startswith("No log files were delivered")]
        assert len(gaps) == 1, exp.err_lines  # two chains each
        proc = run_opentrail_validate(server, arn, start, end, region, "--local-dir", str(bucket.path))
        assert_report(proc, exp, f"opentrail validate-logs --local-dir ({bucket.name}, {region})")


# ---------------------------------------------------------------------------
# Trails of their own
# ---------------------------------------------------------------------------


def test_master_key_is_made_at_first_start(server):
    path = Path(server.data_dir) / "master.key"
    assert path.is_file(), f"no {path}"
    assert re.fullmatch(r"[0-9a-fA-F]{64}\s*", path.read_text()), "master.key does not hold 64 hex characters"


def test_digest_delivery_error_while_the_bucket_is_missing(server):
    ct = cloudtrail_client(server, HOME)
    bucket = LocalBucket(server, f"dge-{uid()}")
    name = f"dg-err-{uid()}"
    ct.create_trail(Name=name, S3BucketName=bucket.name, EnableLogFileValidation=True)
    try:
        ct.start_logging(Name=name)

        def delivered():
            st, raw = trail_status(server, name)
            return (st, raw) if isinstance(st.get("LatestDigestDeliveryTime"), dt.datetime) else None

        st, raw = poll("LatestDigestDeliveryTime after the first digest", delivered)
        assert "LatestDigestDeliveryError" not in raw, raw
        bucket.scan()
        assert bucket.digests(HOME)
        deadline = time.monotonic() + 10
        while bucket.path.exists():
            shutil.rmtree(bucket.path, ignore_errors=True)
            assert time.monotonic() < deadline, "could not remove the bucket directory"
        removed_at = time.time()
        bucket.forget()

        def failing():
            st, raw = trail_status(server, name)
            return (st, raw) if raw.get("LatestDigestDeliveryError") is not None else None

        st, raw = poll("LatestDigestDeliveryError while the bucket is missing", failing, timeout=4 * PERIOD_S + 10)
        err = st["LatestDigestDeliveryError"]
        assert isinstance(err, str) and err.strip(), st
        assert st["LatestDigestDeliveryTime"].timestamp() <= removed_at, (st, utc(removed_at))
        assert not bucket.path.exists(), "the server recreated the removed bucket directory"

        os.makedirs(bucket.path)

        def recovered():
            st, raw = trail_status(server, name)
            ok = "LatestDigestDeliveryError" not in raw and st["LatestDigestDeliveryTime"].timestamp() > removed_at
            return (st, raw) if ok else None

        poll("the digest delivery error to clear once the bucket is back", recovered, timeout=4 * PERIOD_S + 10)
        rid = request_id(ct.stop_logging(Name=name))
        fin = poll("the final digest", lambda: bucket.scan() and final_digest(bucket, HOME, rid))
        ds = bucket.digests(HOME)
        assert ds[-1] is fin
        # The windows that ended while the bucket was missing were written once it was back: the
        # chain goes on from the digest before the removal, with no window skipped.
        first = ds[0]
        assert first.prev_key is not None, f"{first!r} starts a new chain after a failed write"
        assert first.start == stamp_of_key(first.prev_key), (first, first.prev_key)
        assert first.start.timestamp() <= removed_at, (
            f"the window during which the bucket vanished has no digest: first one now is {first!r}")
        for p, d in zip(ds, ds[1:]):
            assert d.prev_key == p.key and d.start == p.end and d.doc["previousDigestSignature"] == p.signature, (p, d)
            assert d.doc["previousDigestHashValue"] == p.sha256
        check_listing(ds[1:], bucket.logs(HOME), complete=False)
        listed = {k for d in ds for k in d.log_keys}
        unlisted = sorted(set(bucket.logs(HOME)) - listed)
        assert not unlisted, f"log files delivered after the bucket came back are in no digest: {unlisted}"
        check_windows(ds, PERIOD_S, ended=True)
    finally:
        ct.delete_trail(Name=name)


class Feeder(threading.Thread):
    """Ingests a record every 0.1 s; connection errors (server restarting) are expected."""

    def __init__(self, url: str, marker: str):
        super().__init__(daemon=True)
        self.url = url
        self.marker = marker
        self.stop_evt = threading.Event()
        self.acked: list[str] = []

    def run(self) -> None:
        sess = signed_session()
        while not self.stop_evt.is_set():
            r = rec(self.marker)
            try:
                resp = sess.post(f"{self.url}/v1/events", json={"Records": [r]}, timeout=10)
                if resp.status_code == 200 and resp.json().get("EventIds") == [r["eventID"]]:
                    self.acked.append(r["eventID"])
            except requests.RequestException:
                sess = signed_session()
            self.stop_evt.wait(0.1)

    def stop(self) -> None:
        self.stop_evt.set()
        self.join(timeout=30)
        assert not self.is_alive()


def test_sigkill_during_digest_rounds_never_forks_or_loses_anything(server):
    """Last in the module: it SIGKILLs the module's server (restarted on the same data)."""
    ct = cloudtrail_client(server, HOME)
    bucket = LocalBucket(server, f"dgk-{uid()}")
    name = f"dg-kill-{uid()}"
    arn = ct.create_trail(Name=name, S3BucketName=bucket.name, EnableLogFileValidation=True)["TrailARN"]
    ct.start_logging(Name=name)
    created = time.time()
    feeder = Feeder(server.url, f"dg-kill-{uid()}")
    feeder.start()
    first_seen: dict[str, tuple[bytes, dict]] = {}

    def remember():
        bucket.scan()
        for k, d in bucket.digest_files.items():
            first_seen.setdefault(k, (d.raw, d.meta))
        return bucket

    try:
        poll("the first digest", lambda: remember().digests(HOME))
        # Kill right at a window's end (while its digests are being written) and a little after.
        for offset in (0.0, 0.01, 0.03, 0.08, 0.25):
            last = remember().digests(HOME)[-1]
            target = last.end.timestamp() + PERIOD_S + offset
            while target < time.time() + 0.2:
                target += PERIOD_S
            time.sleep(target - time.time())
            server.kill9()
            poll(f"a digest for a window ending after the kill at {utc(target)}",
                 lambda: any(d.end.timestamp() > target for d in remember().digests(HOME)), timeout=30)
    finally:
        feeder.stop()
    rid = request_id(ct.stop_logging(Name=name))
    fin = poll("the final digest", lambda: remember() and final_digest(bucket, HOME, rid))
    time.sleep(1.5 * PERIOD_S)
    remember()

    ds = bucket.digests(HOME)
    assert ds[-1] is fin, (ds[-1], fin)
    chains = split_chains(ds)
    assert len(chains) == 1, f"the chain broke into {len(chains)}: {[c[0] for c in chains]}"
    check_links(ds, bucket.name)
    # A window never got two different digests: what is on disk is what was first seen.
    for k, (raw, meta) in first_seen.items():
        assert (bucket.path / k).read_bytes() == raw, f"digest {k} was rewritten with other bytes"
        assert json.loads(bucket.sidecar(k).read_text()) == meta, f"signature of {k} was rewritten"
    logs = bucket.logs(HOME)
    lister = check_listing(ds, logs, complete=True)
    for d in ds:
        check_digest_shape(d, bucket=bucket.name, region=HOME, trail=name, logs=logs)
    assert len(lister) == len(logs)
    have = {r["eventID"] for _f, r in bucket.records()}
    lost = [e for e in feeder.acked if e not in have]
    assert not lost, f"{len(lost)} acknowledged events never delivered"
    check_signatures(server, HOME, ds)
    start, end = whole(created - 60), whole(time.time())
    exp = aws_report(arn, bucket.name, ds, start, end)
    assert exp.valid_digests == len(ds) and exp.exit_code == 0
    assert_report(run_opentrail_validate(server, arn, start, end, HOME, "--local-dir", str(bucket.path)),
                  exp, "opentrail validate-logs after SIGKILLs")
    check_windows(ds, PERIOD_S, ended=True)
