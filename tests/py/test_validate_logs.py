"""Log file validation against a real S3-compatible server (s3s-fs), with the AWS CLI's own
``aws cloudtrail validate-logs`` and with ``opentrail validate-logs``.

s3s-fs runs for the module (the ``S3sFs`` helper of test_delivery_s3.py, on a port of its own)
and the module's OpenTrail server keeps every bucket there (``SERVER_ENV``).  Digests every
``PERIOD_S`` (2 s), a new signing key every ``ROTATION_S`` (6 s).

The module fixture ``fleet`` runs one multi-region trail with validation per case below, all at
once, each with its own bucket, through several digest periods and at least one key rotation,
with events in us-east-1 and eu-west-1; then stops them all and waits for their final digests.
``clean`` is left alone; every other trail gets one kind of damage (``TAMPERS``), done with boto3
(``put_object`` with ``Metadata`` for digests), and both validators must report exactly the AWS
CLI's verdict lines (OpenTrail's adds its own chain and "not referenced" lines) and exit 1.

The expected output of each run is computed by ``aws_report`` (test_digests.py), a step-by-step
model of the AWS CLI's validator; for the AWS CLI itself this checks the model, for OpenTrail's
validator it checks that it prints what the AWS CLI prints.

Names are short on purpose: s3s-fs keeps an object's metadata in a file named after
base64(bucket) + base64(key), which must fit in 255 bytes, and digest keys are long.
"""

from __future__ import annotations

import binascii
import datetime as dt
import gzip
import hashlib
import json
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import pytest
import rsa

from conftest import AWS_CLI, cloudtrail_client, free_port, uid
from test_delivery_s3 import S3_ACCESS_KEY, S3_SECRET_KEY, S3sFs, s3s_fs_binary
from test_digests import (
    HOME,
    OTHER,
    PERIOD_S,
    ROTATION_S,
    Digest,
    LogFile,
    Store,
    aws_report,
    check_digest_shape,
    check_links,
    check_listing,
    check_signatures,
    check_windows,
    digest_prefix,
    disp,
    rec,
    report_mismatch,
    request_id,
    run_opentrail_validate,
    split_chains,
    string_to_sign,
    validator_env,
    whole,
)

S3_PORT = free_port()
S3_ENDPOINT = f"http://127.0.0.1:{S3_PORT}"

SERVER_ENV = {
    "OPENTRAIL_DELIVERY_INTERVAL": "1s",
    "OPENTRAIL_DELIVERY_MAX_BACKOFF": "1s",
    "OPENTRAIL_DIGEST_INTERVAL": f"{PERIOD_S}s",
    "OPENTRAIL_SIGNING_KEY_ROTATION": f"{ROTATION_S}s",
    "OPENTRAIL_S3_ENDPOINT": S3_ENDPOINT,
    "OPENTRAIL_S3_REGION": "us-east-1",
    "OPENTRAIL_S3_ACCESS_KEY_ID": S3_ACCESS_KEY,
    "OPENTRAIL_S3_SECRET_ACCESS_KEY": S3_SECRET_KEY,
    "OPENTRAIL_MAX_TRAILS_PER_REGION": "50",
}

CASES = [
    "clean",
    "log_byte_changed",
    "log_record_edited",
    "log_deleted",
    "log_trailing_bytes",
    "log_not_gzip",
    "log_moved",
    "digest_deleted",
    "two_digests_deleted",
    "digest_forged_signature",
    "digest_unknown_key",
    "newest_digests_deleted",
]
MIN_HOME_DIGESTS = 8


# ---------------------------------------------------------------------------
# s3s-fs and the server
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("s3s-fs-validate")
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
    """conftest's server, but only once s3s-fs is up (CreateTrail checks the bucket there)."""
    return server


class S3Bucket(Store):
    """A bucket on s3s-fs, parsed object by object (``written`` = LastModified)."""

    def __init__(self, client, name: str):
        super().__init__(name)
        self.client = client
        self.unsigned: set[str] = set()

    def scan(self) -> "S3Bucket":
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name):
            for o in page.get("Contents", []):
                key = o["Key"]
                if not key.endswith(".json.gz") or key in self.digest_files or key in self.log_files:
                    continue
                obj = self.client.get_object(Bucket=self.name, Key=key)
                raw = obj["Body"].read()
                written = o["LastModified"].timestamp()
                if "/CloudTrail-Digest/" in key:
                    meta = obj.get("Metadata") or {}
                    if "signature" not in meta:
                        self.unsigned.add(key)
                        continue
                    self.unsigned.discard(key)
                    self.digest_files[key] = Digest(self.name, key, raw, meta, written)
                elif "/CloudTrail/" in key:
                    self.log_files[key] = LogFile(self.name, key, raw, written)
        return self


# ---------------------------------------------------------------------------
# The fleet of trails
# ---------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    store: S3Bucket
    trail: str
    arn: str
    stop_rid: str = ""
    final: Digest | None = None
    moved: tuple[str, str] | None = None  # (original key, new key) for log_moved
    moved_at: float = 0.0


@dataclass
class Fleet:
    cases: dict[str, Case]
    start: dt.datetime
    end: dt.datetime
    fresh_key: rsa.PrivateKey
    notes: list[str] = field(default_factory=list)


def fresh_rsa_key() -> rsa.PrivateKey:
    """A new RSA-2048 key nobody else knows (openssl is much faster than pure-Python rsa)."""
    try:
        pem = subprocess.run(["openssl", "genrsa", "-traditional", "2048"], capture_output=True,
                             check=True, timeout=60).stdout
        return rsa.PrivateKey.load_pkcs1(pem)
    except (OSError, subprocess.SubprocessError, ValueError):
        return rsa.newkeys(2048)[1]


def public_der(key: rsa.PrivateKey) -> bytes:
    return rsa.PublicKey(key.n, key.e).save_pkcs1(format="DER")


def final_of(store: S3Bucket, rid: str) -> Digest | None:
    f = store.file_with_request(rid)
    if f is None:
        return None
    listers = store.lister_of(HOME, f.key)
    return listers[0] if listers else None


@pytest.fixture(scope="module")
def fleet(server, s3) -> Fleet:
    ct = cloudtrail_client(server, HOME)
    key_box: dict = {}
    keygen = threading.Thread(target=lambda: key_box.setdefault("key", fresh_rsa_key()), daemon=True)
    keygen.start()
    cases: dict[str, Case] = {}
    for name in CASES:
        bucket = f"v{uid()[:7]}"
        s3.client.create_bucket(Bucket=bucket)
        trail = f"t{uid()[:7]}"
        arn = ct.create_trail(Name=trail, S3BucketName=bucket, IsMultiRegionTrail=True,
                              EnableLogFileValidation=True)["TrailARN"]
        cases[name] = Case(name, S3Bucket(s3.client, bucket), trail, arn)
    created = time.time()
    for c in cases.values():
        ct.start_logging(Name=c.trail)

    marker = f"vl-user-{uid()}"
    clean, moving = cases["clean"], cases["log_moved"]
    i = 0
    deadline = time.monotonic() + 120
    while True:
        server.ingest_ok([rec(marker)] + ([rec(marker, region=OTHER)] if i % 4 == 0 else []))
        i += 1
        if i % 2 == 0:
            home = clean.store.scan().digests(HOME)
            clean_done = (len(home) >= MIN_HOME_DIGESTS and len({d.fingerprint for d in home}) >= 2
                          and clean.store.digests(OTHER))
            mds = moving.store.scan().digests(HOME)
            if moving.moved is None and len(mds) >= 3:
                # Move a log file that a digest already lists, while the trail is logging: the new
                # key appears inside a window whose digest is written (and validated) later.
                listed = next(d for d in mds[1:] if d.log_keys)
                old = listed.log_keys[0]
                new = old[:-24] + (uid() + uid()).upper()[:16] + ".json.gz"
                body = s3.client.get_object(Bucket=moving.store.name, Key=old)["Body"].read()
                s3.client.put_object(Bucket=moving.store.name, Key=new, Body=body)
                s3.client.delete_object(Bucket=moving.store.name, Key=old)
                moving.moved, moving.moved_at = (old, new), time.time()
                moving.store.log_files.pop(old, None)  # gone from the bucket
            moved_done = moving.moved is not None and any(d.start.timestamp() > moving.moved_at + 0.5 for d in mds)
            if clean_done and moved_done:
                break
        assert time.monotonic() < deadline, (
            f"fleet run stuck: clean has {len(home)} home digests, keys {sorted({d.fingerprint for d in home})}, "
            f"moved {moving.moved}")
        time.sleep(0.5)

    for c in cases.values():
        c.stop_rid = request_id(ct.stop_logging(Name=c.trail))
    deadline = time.monotonic() + 60
    while True:
        for c in cases.values():
            if c.final is None:
                c.final = final_of(c.store.scan(), c.stop_rid)
        pending = [c.name for c in cases.values() if c.final is None or
                   not any(d.end == c.final.end for d in c.store.digests(OTHER))]
        if not pending:
            break
        assert time.monotonic() < deadline, f"no final digests (both regions) for {pending}"
        time.sleep(0.5)
    time.sleep(PERIOD_S)
    for c in cases.values():
        c.store.scan()
    keygen.join(timeout=120)
    end = whole(time.time())
    return Fleet(cases, whole(created - 60), end, key_box["key"])


# ---------------------------------------------------------------------------
# Validators
# ---------------------------------------------------------------------------


def s3_env() -> dict:
    return validator_env({"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY})


def run_aws(server, s3, fleet: Fleet, c: Case, region: str = HOME) -> subprocess.CompletedProcess:
    env = {**s3_env(), "AWS_ENDPOINT_URL_S3": s3.endpoint}
    cmd = [str(AWS_CLI), "cloudtrail", "validate-logs", "--trail-arn", c.arn,
           "--start-time", disp(fleet.start), "--end-time", disp(fleet.end),
           "--endpoint-url", server.url, "--region", region, "--verbose"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def run_ours(server, s3, fleet: Fleet, c: Case, region: str = HOME) -> subprocess.CompletedProcess:
    return run_opentrail_validate(server, c.arn, fleet.start, fleet.end, region,
                                  "--s3-endpoint-url", s3.endpoint, env=s3_env())


def summary_counts(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stdout.splitlines() if re.match(r"^\d+/\d+ (digest|log) files valid", line)]


# ---------------------------------------------------------------------------
# The clean trail
# ---------------------------------------------------------------------------


def test_clean_trail_chain_in_s3(server, fleet):
    c = fleet.cases["clean"]
    assert not c.store.unsigned, f"digests without signature metadata: {sorted(c.store.unsigned)}"
    for region in (HOME, OTHER):
        ds = c.store.digests(region)
        logs = c.store.logs(region)
        assert ds and logs, (region, len(ds), len(logs))
        for d in ds:
            check_digest_shape(d, bucket=c.store.name, region=region, trail=c.trail, logs=logs)
        chains = split_chains(ds)
        assert len(chains) == 1, f"{region}: {len(chains)} chains"
        check_links(ds, c.store.name)
        check_listing(ds, logs, complete=True)
        assert ds[-1].end == c.final.end, (region, ds[-1], c.final)
    assert len(c.store.digests(HOME)) >= MIN_HOME_DIGESTS
    assert len({d.fingerprint for d in c.store.digests(HOME)}) >= 2, "the run did not cross a key rotation"
    # The signature in the S3 object metadata verifies with the region's listed key.
    for region in (HOME, OTHER):
        check_signatures(server, region, c.store.digests(region))
    for region in (HOME, OTHER):
        check_windows(c.store.digests(region), PERIOD_S, ended=True)


def test_clean_trail_is_valid_for_the_aws_cli_and_opentrail(server, s3, fleet):
    c = fleet.cases["clean"]
    for region in (HOME, OTHER):
        ds = c.store.digests(region)
        exp = aws_report(c.arn, c.store.name, ds, fleet.start, fleet.end)
        assert (exp.valid_digests, exp.invalid_digests, exp.invalid_logs, exp.exit_code) == (len(ds), 0, 0, 0)
        assert exp.valid_logs == len(c.store.logs(region)) > 0
        aws_proc = run_aws(server, s3, fleet, c, region)
        why_aws = report_mismatch(aws_proc, exp)
        ours = run_ours(server, s3, fleet, c, region)
        why_ours = report_mismatch(ours, exp)
        assert why_aws is None, f"aws cloudtrail validate-logs ({region}): {why_aws}"
        assert why_ours is None, f"opentrail validate-logs ({region}): {why_ours}"
        assert summary_counts(ours) == summary_counts(aws_proc) == exp.summary[-2:], (
            summary_counts(ours), summary_counts(aws_proc))


# ---------------------------------------------------------------------------
# Tampering
# ---------------------------------------------------------------------------


@dataclass
class Expect:
    """What the AWS CLI must report (``aws_report`` keywords) and what OpenTrail adds."""
    aws: dict
    ours_digest_errors: list[list[str]] = field(default_factory=lambda: [[]])  # alternatives
    ours_log_errors: list[str] = field(default_factory=list)
    aws_exit: int = 1
    not_in_aws_output: list[str] = field(default_factory=list)


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def middle_out(n: int, lo: int, hi: int) -> list[int]:
    """Indices lo..hi ordered by distance from the middle of 0..n-1."""
    mid = (n - 1) // 2
    return sorted(range(lo, hi + 1), key=lambda i: (abs(i - mid), i))


def written_in_own_window(d: Digest, store: Store) -> bool:
    """Each file the digest lists was written (LastModified) inside the digest's own window, so
    hiding this digest cannot make a file look "delivered in a validated window but unreferenced"
    (a file written just before a window boundary and committed after it would)."""
    logs = store.log_files
    return all(k in logs and logs[k].written >= d.start.timestamp() for k in d.log_keys)


def pick_log(c: Case) -> LogFile:
    ds = c.store.digests(HOME)
    for i in middle_out(len(ds), 1, len(ds) - 2):
        for k in ds[i].log_keys:
            if k in c.store.log_files:
                return c.store.log_files[k]
    pytest.fail(f"{c.name}: no listed log file in the middle of the chain")


def pick_digest(c: Case, lo_offset: int, must_be_clean: Callable[[int], list[int]]) -> int:
    ds = c.store.digests(HOME)
    for i in middle_out(len(ds), lo_offset, len(ds) - 2):
        if all(written_in_own_window(ds[j], c.store) for j in must_be_clean(i)):
            return i
    pytest.fail(f"{c.name}: no digest in the middle of the chain whose files were written in its window")


def put(s3, c: Case, key: str, body: bytes, metadata: dict | None = None) -> None:
    kw = {"Metadata": metadata} if metadata is not None else {}
    s3.client.put_object(Bucket=c.store.name, Key=key, Body=body, **kw)
    assert s3.client.get_object(Bucket=c.store.name, Key=key)["Body"].read() == body


def tamper_log_byte_changed(server, s3, fleet, c: Case) -> Expect:
    f = pick_log(c)
    m = re.search(rb'"eventID"\s*:\s*"', f.body)
    assert m, f.key
    i = m.end()
    changed = f.body[:i] + (b"0" if f.body[i:i + 1] != b"0" else b"1") + f.body[i + 1:]
    assert changed != f.body and len(changed) == len(f.body)
    json.loads(changed)  # still one valid JSON document
    put(s3, c, f.key, gz(changed))
    return Expect({"log_verdicts": {f.key: "INVALID: hash value doesn't match"}})


def tamper_log_record_edited(server, s3, fleet, c: Case) -> Expect:
    f = pick_log(c)
    doc = json.loads(f.body)
    doc["Records"][0]["sourceIPAddress"] = "203.0.113.250"
    edited = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    assert json.loads(edited) != json.loads(f.body)
    put(s3, c, f.key, gz(edited))
    return Expect({"log_verdicts": {f.key: "INVALID: hash value doesn't match"}})


def tamper_log_deleted(server, s3, fleet, c: Case) -> Expect:
    f = pick_log(c)
    s3.client.delete_object(Bucket=c.store.name, Key=f.key)
    return Expect({"log_verdicts": {f.key: "INVALID: not found"}})


def tamper_log_trailing_bytes(server, s3, fleet, c: Case) -> Expect:
    f = pick_log(c)
    put(s3, c, f.key, f.raw + b"appended after the gzip member")
    return Expect({"log_verdicts": {f.key: "INVALID: unexpected data after end of compressed stream"}})


def tamper_log_not_gzip(server, s3, fleet, c: Case) -> Expect:
    f = pick_log(c)
    put(s3, c, f.key, b'{"Records": "this object is not gzip"}')
    return Expect({"log_verdicts": {f.key: "INVALID: invalid format"}})


def tamper_log_moved(server, s3, fleet, c: Case) -> Expect:
    assert c.moved is not None
    old, new = c.moved
    lister = c.store.lister_of(HOME, old)
    assert len(lister) == 1, f"the moved file {old} is listed by {lister}"
    assert new in c.store.log_files and old not in c.store.log_files
    return Expect({"log_verdicts": {old: "INVALID: not found"}},
                  ours_log_errors=[f"Log file\ts3://{c.store.name}/{new}\tINVALID: not referenced by any digest"])


def tamper_digest_deleted(server, s3, fleet, c: Case) -> Expect:
    ds = c.store.digests(HOME)
    k = pick_digest(c, 1, lambda i: [i])
    s3.client.delete_object(Bucket=c.store.name, Key=ds[k].key)
    return Expect({"missing": {ds[k].key}})


def tamper_two_digests_deleted(server, s3, fleet, c: Case) -> Expect:
    ds = c.store.digests(HOME)
    k = pick_digest(c, 2, lambda i: [i - 1])
    for d in (ds[k], ds[k - 1]):
        s3.client.delete_object(Bucket=c.store.name, Key=d.key)
    chain_line = (f"Digest chain\ts3://{c.store.name}/{digest_prefix(HOME)}/\tINVALID: digest files between "
                  f"{disp(ds[k - 2].end)} and {disp(ds[k - 1].end)} are missing")
    return Expect({"missing": {ds[k].key, ds[k - 1].key}}, ours_digest_errors=[[chain_line]],
                  not_in_aws_output=[ds[k - 1].key])


def tamper_digest_forged_signature(server, s3, fleet, c: Case) -> Expect:
    ds = c.store.digests(HOME)
    d = ds[pick_digest(c, 1, lambda i: [i])]
    forged = rsa.sign(string_to_sign(d.doc, d.body), fleet.fresh_key, "SHA-256").hex()
    assert forged != d.signature and len(forged) == len(d.signature)
    put(s3, c, d.key, d.raw, {"signature": forged, "signature-algorithm": "SHA256withRSA"})
    assert s3.client.head_object(Bucket=c.store.name, Key=d.key)["Metadata"]["signature"] == forged
    return Expect({"invalid": {d.key: f"Digest file\ts3://{c.store.name}/{d.key}\tINVALID: signature verification failed"}})


def tamper_digest_unknown_key(server, s3, fleet, c: Case) -> Expect:
    ds = c.store.digests(HOME)
    d = ds[pick_digest(c, 1, lambda i: [i])]
    fp = hashlib.md5(public_der(fleet.fresh_key)).hexdigest()
    doc = json.loads(d.body)
    doc["digestPublicKeyFingerprint"] = fp
    body = json.dumps(doc, separators=(",", ":")).encode()
    sig = rsa.sign(string_to_sign(doc, body), fleet.fresh_key, "SHA-256").hex()
    # Correctly signed -- by a key OpenTrail never listed.
    rsa.verify(string_to_sign(doc, body), binascii.unhexlify(sig), rsa.PublicKey(fleet.fresh_key.n, fleet.fresh_key.e))
    put(s3, c, d.key, gz(body), {"signature": sig, "signature-algorithm": "SHA256withRSA"})
    return Expect({"invalid": {d.key: (f"Digest file\ts3://{c.store.name}/{d.key}\tINVALID: public key not found "
                                       f"in region {HOME} for fingerprint {fp}")}})


def tamper_newest_digests_deleted(server, s3, fleet, c: Case) -> Expect:
    ds = c.store.digests(HOME)
    n = len(ds)
    # Delete the newest m >= 4 digests (the remaining chain then ends more than two periods
    # before the stop), so that the oldest deleted one's files were written in its own window.
    m = next((m for m in range(4, n - 2) if written_in_own_window(ds[n - m], c.store)), None)
    assert m is not None, f"{c.name}: no suitable cut in {ds}"
    gone = ds[n - m:]
    for d in gone:
        s3.client.delete_object(Bucket=c.store.name, Key=d.key)
    last = ds[n - m - 1]
    st = cloudtrail_client(server, HOME).get_trail_status(Name=c.trail)
    reach = {disp(ds[-1].end)}
    stop = st.get("StopLoggingTime")
    assert isinstance(stop, dt.datetime), st
    # "should reach the stop time": the final digest's end, or StopLoggingTime to the second.
    reach |= {disp(whole(stop.timestamp())), disp(whole(stop.timestamp() + 0.999))}
    lines = [[f"Digest chain\ts3://{c.store.name}/{digest_prefix(HOME)}/\tINVALID: the chain ends at "
              f"{disp(last.end)} but should reach {t}"] for t in sorted(reach)]
    return Expect({"missing": {d.key for d in gone}}, ours_digest_errors=lines, aws_exit=0)


TAMPERS: dict[str, Callable[..., Expect]] = {
    "log_byte_changed": tamper_log_byte_changed,
    "log_record_edited": tamper_log_record_edited,
    "log_deleted": tamper_log_deleted,
    "log_trailing_bytes": tamper_log_trailing_bytes,
    "log_not_gzip": tamper_log_not_gzip,
    "log_moved": tamper_log_moved,
    "digest_deleted": tamper_digest_deleted,
    "two_digests_deleted": tamper_two_digests_deleted,
    "digest_forged_signature": tamper_digest_forged_signature,
    "digest_unknown_key": tamper_digest_unknown_key,
    "newest_digests_deleted": tamper_newest_digests_deleted,
}
assert set(TAMPERS) == set(CASES) - {"clean"}


@pytest.mark.parametrize("case", list(TAMPERS))
def test_tampering_is_reported_by_both_validators(server, s3, fleet, case):
    c = fleet.cases[case]
    ds = c.store.digests(HOME)
    # Before the damage: one chain, ended by StopLogging.
    assert len(split_chains(ds)) == 1 and ds[-1] is c.final, (case, split_chains(ds), c.final)
    exp = TAMPERS[case](server, s3, fleet, c)

    aws_exp = aws_report(c.arn, c.store.name, ds, fleet.start, fleet.end, **exp.aws)
    assert aws_exp.exit_code == exp.aws_exit, aws_exp
    ours_exps = [aws_report(c.arn, c.store.name, ds, fleet.start, fleet.end, **exp.aws,
                            extra_digest_errors=alt, extra_log_errors=exp.ours_log_errors)
                 for alt in exp.ours_digest_errors]
    assert all(e.exit_code == 1 for e in ours_exps)

    aws_proc = run_aws(server, s3, fleet, c)
    ours = run_ours(server, s3, fleet, c)
    for key in exp.not_in_aws_output:
        assert key not in aws_proc.stdout + aws_proc.stderr, f"the AWS CLI reported {key} after all"
    why_aws = report_mismatch(aws_proc, aws_exp)
    whys = [report_mismatch(ours, e) for e in ours_exps]
    assert why_aws is None, f"aws cloudtrail validate-logs [{case}]: {why_aws}"
    assert any(w is None for w in whys), f"opentrail validate-logs [{case}]: {min(whys, key=len)}"
