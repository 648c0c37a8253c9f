"""The key service end to end: the real AWS CLI's ``kms`` commands and boto3's ``kms``
client against ``opentrail serve`` (create, describe in every key form, list, aliases,
enable/disable, rotation, deletion scheduling, encrypt/decrypt/data keys), KMS's exception
names, the self-audit of every call (eventSource ``kms.amazonaws.com``, no plaintext or
ciphertext in the record), IAM policies with ``kms:`` actions on key ARNs, keys surviving a
restart, and trails' ``KmsKeyId`` checked against the key service.
"""
from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import subprocess
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import (
    ACCOUNT_ID,
    FAKE_ACCESS_KEY,
    FAKE_SECRET_KEY,
    aws,
    cloudtrail_client,
    lookup_all,
    make_record,
    uid,
)

REGION = "us-east-1"
DECLARED_KEY = "6a3c9e2f-1b4d-4e8a-9c7f-2d5e8b1a4c6f"
SERVER_ENV = {
    "OPENTRAIL_KMS_KEYS": f"{DECLARED_KEY},alias/declared={DECLARED_KEY}",
    "OPENTRAIL_DELIVERY_INTERVAL": "1s",
    "OPENTRAIL_DELIVERY_MAX_BACKOFF": "1s",
    "OPENTRAIL_DIGEST_INTERVAL": "2s",
    "OPENTRAIL_MAX_TRAILS_PER_REGION": "50",
}


def kms_client(server, key: str = FAKE_ACCESS_KEY, secret: str = FAKE_SECRET_KEY,
               region: str = REGION):
    return boto3.session.Session().client(
        "kms", region_name=region, endpoint_url=server.url,
        aws_access_key_id=key, aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=60),
    )


def kms_ok(server, *args: str, region: str = REGION):
    rc, out, err = aws(server, "kms", *args, region=region)
    assert rc == 0, f"aws kms {' '.join(args)} exited {rc}: {err}"
    return out


def kms_fail(server, code: str, *args: str) -> str:
    rc, _, err = aws(server, "kms", *args)
    assert rc != 0, f"aws kms {' '.join(args)} succeeded; expected {code}"
    assert f"({code})" in err, err
    return err


def expect_error(code: str, fn, **kwargs) -> str:
    with pytest.raises(ClientError) as ei:
        fn(**kwargs)
    assert ei.value.response["Error"]["Code"] == code, ei.value.response
    return ei.value.response["Error"]["Message"]


def key_arn(key_id: str, region: str = REGION) -> str:
    return f"arn:aws:kms:{region}:{ACCOUNT_ID}:key/{key_id}"


def test_create_and_describe_a_key_in_every_form(server):
    out = kms_ok(server, "create-key", "--description", "trail logs",
                 "--tags", "TagKey=team,TagValue=audit")
    md = out["KeyMetadata"]
    kid = md["KeyId"]
    assert md["Arn"] == key_arn(kid)
    assert md["AWSAccountId"] == ACCOUNT_ID
    assert md["KeyState"] == "Enabled" and md["Enabled"] is True
    assert md["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert md["KeySpec"] == "SYMMETRIC_DEFAULT"
    assert md["KeyManager"] == "CUSTOMER" and md["Origin"] == "AWS_KMS"
    assert md["Description"] == "trail logs"
    assert abs(md["CreationDate"] - time.time()) < 60
    alias = f"alias/logs-{uid()}"
    kms_ok(server, "create-alias", "--alias-name", alias, "--target-key-id", kid)
    for form in (kid, key_arn(kid), alias, f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:{alias}"):
        got = kms_ok(server, "describe-key", "--key-id", form)["KeyMetadata"]
        assert got["KeyId"] == kid, form
    keys = kms_ok(server, "list-keys")["Keys"]
    assert {"KeyId": kid, "KeyArn": key_arn(kid)} in keys
    aliases = kms_ok(server, "list-aliases", "--key-id", kid)["Aliases"]
    assert [a["AliasName"] for a in aliases] == [alias]
    assert aliases[0]["AliasArn"] == f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:{alias}"
    assert aliases[0]["TargetKeyId"] == kid
    tags = kms_ok(server, "list-resource-tags", "--key-id", kid)["Tags"]
    assert tags == [{"TagKey": "team", "TagValue": "audit"}]
    # Keys are regional: another region does not see it.
    rc, _, err = aws(server, "kms", "describe-key", "--key-id", kid, region="eu-west-1")
    assert rc != 0 and "(NotFoundException)" in err
    assert kid not in [k["KeyId"] for k in kms_ok(server, "list-keys", region="eu-west-1")["Keys"]]


def test_paging_lists_every_key_once(server):
    kms = kms_client(server)
    made = {kms.create_key()["KeyMetadata"]["KeyId"] for _ in range(5)}
    seen, marker = [], None
    while True:
        page = kms.list_keys(Limit=2, **({"Marker": marker} if marker else {}))
        assert len(page["Keys"]) <= 2
        seen += [k["KeyId"] for k in page["Keys"]]
        if not page["Truncated"]:
            assert "NextMarker" not in page
            break
        marker = page["NextMarker"]
    assert made <= set(seen)
    assert len(seen) == len(set(seen))
    expect_error("InvalidMarkerException", kms.list_keys, Marker="bogus")


def test_encryption_round_trips_under_its_context_only(server):
    kms = kms_client(server)
    kid = kms.create_key()["KeyMetadata"]["KeyId"]
    ctx = {"purpose": "test"}
    enc = kms.encrypt(KeyId=kid, Plaintext=b"secret bytes", EncryptionContext=ctx)
    assert enc["KeyId"] == key_arn(kid)
    dec = kms.decrypt(CiphertextBlob=enc["CiphertextBlob"], EncryptionContext=ctx)
    assert dec["Plaintext"] == b"secret bytes" and dec["KeyId"] == key_arn(kid)
    expect_error("InvalidCiphertextException", kms.decrypt,
                 CiphertextBlob=enc["CiphertextBlob"], EncryptionContext={"purpose": "other"})
    expect_error("InvalidCiphertextException", kms.decrypt, CiphertextBlob=b"\x01" + b"\x00" * 60)
    other = kms.create_key()["KeyMetadata"]["KeyId"]
    expect_error("IncorrectKeyException", kms.decrypt, CiphertextBlob=enc["CiphertextBlob"],
                 EncryptionContext=ctx, KeyId=other)
    dk = kms.generate_data_key(KeyId=kid, KeySpec="AES_256")
    assert len(dk["Plaintext"]) == 32
    assert kms.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == dk["Plaintext"]
    bare = kms.generate_data_key_without_plaintext(KeyId=kid, NumberOfBytes=16)
    assert "Plaintext" not in bare
    assert len(kms.decrypt(CiphertextBlob=bare["CiphertextBlob"])["Plaintext"]) == 16
    expect_error("ValidationException", kms.encrypt, KeyId=kid, Plaintext=b"x" * 4097)
    # The AWS CLI's own encrypt/decrypt (base64 on the wire, blobs through fileb://).
    # AWS CLI v1 takes a blob argument's text as its bytes.
    out = kms_ok(server, "encrypt", "--key-id", kid, "--plaintext", "cli")
    blob = base64.b64decode(out["CiphertextBlob"])
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"cli"


def test_disable_rotate_and_schedule_deletion(server):
    kms = kms_client(server)
    kid = kms.create_key()["KeyMetadata"]["KeyId"]
    old = kms.encrypt(KeyId=kid, Plaintext=b"before rotation")["CiphertextBlob"]
    status = kms.get_key_rotation_status(KeyId=kid)
    assert status["KeyRotationEnabled"] is True and status["RotationPeriodInDays"] == 365
    kms.enable_key_rotation(KeyId=kid, RotationPeriodInDays=90)
    assert kms.get_key_rotation_status(KeyId=kid)["RotationPeriodInDays"] == 90
    assert kms.rotate_key_on_demand(KeyId=kid)["KeyId"] == kid
    new = kms.encrypt(KeyId=kid, Plaintext=b"after rotation")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=old)["Plaintext"] == b"before rotation"
    assert kms.decrypt(CiphertextBlob=new)["Plaintext"] == b"after rotation"

    kms.disable_key(KeyId=kid)
    assert kms.describe_key(KeyId=kid)["KeyMetadata"]["KeyState"] == "Disabled"
    expect_error("DisabledException", kms.encrypt, KeyId=kid, Plaintext=b"x")
    expect_error("DisabledException", kms.decrypt, CiphertextBlob=old)
    kms.enable_key(KeyId=kid)
    assert kms.decrypt(CiphertextBlob=old)["Plaintext"] == b"before rotation"

    expect_error("ValidationException", kms.schedule_key_deletion, KeyId=kid, PendingWindowInDays=3)
    out = kms.schedule_key_deletion(KeyId=kid, PendingWindowInDays=7)
    assert out["KeyId"] == key_arn(kid) and out["KeyState"] == "PendingDeletion"
    assert out["PendingWindowInDays"] == 7
    assert abs(out["DeletionDate"].timestamp() - (time.time() + 7 * 86400)) < 120
    md = kms.describe_key(KeyId=kid)["KeyMetadata"]
    assert md["KeyState"] == "PendingDeletion" and "DeletionDate" in md
    expect_error("KMSInvalidStateException", kms.decrypt, CiphertextBlob=old)
    expect_error("KMSInvalidStateException", kms.enable_key, KeyId=kid)
    kms.cancel_key_deletion(KeyId=kid)
    assert kms.describe_key(KeyId=kid)["KeyMetadata"]["KeyState"] == "Disabled"


def test_errors_carry_kms_exception_names(server):
    kms = kms_client(server)
    kid = kms.create_key()["KeyMetadata"]["KeyId"]
    missing = "11111111-2222-3333-4444-555555555555"
    msg = expect_error("NotFoundException", kms.describe_key, KeyId=missing)
    assert missing in msg
    expect_error("NotFoundException", kms.describe_key, KeyId="alias/never-made")
    expect_error("NotFoundException", kms.describe_key, KeyId="not-a-key")
    expect_error("InvalidArnException", kms.describe_key,
                 KeyId=f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/nope")
    name = f"alias/dup-{uid()}"
    kms.create_alias(AliasName=name, TargetKeyId=kid)
    expect_error("AlreadyExistsException", kms.create_alias, AliasName=name, TargetKeyId=kid)
    expect_error("InvalidAliasNameException", kms.create_alias,
                 AliasName="alias/aws/cloudtrail", TargetKeyId=kid)
    expect_error("ValidationException", kms.create_alias, AliasName="no-prefix", TargetKeyId=kid)
    expect_error("NotFoundException", kms.delete_alias, AliasName="alias/never-made")
    expect_error("UnsupportedOperationException", kms.create_key, KeySpec="RSA_2048")
    expect_error("UnsupportedOperationException", kms.create_key, Policy="{}")
    # The CLI shows the same names.
    kms_fail(server, "NotFoundException", "describe-key", "--key-id", missing)


def test_every_call_is_recorded_without_its_secrets(server):
    kms = kms_client(server)
    ct = cloudtrail_client(server)
    kid = kms.create_key(Description="audited")["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=kid, Plaintext=b"never in a record")["CiphertextBlob"]
    kms.decrypt(CiphertextBlob=blob)
    expect_error("NotFoundException", kms.describe_key, KeyId="alias/nothing-here")
    want = {"CreateKey": False, "Encrypt": True, "Decrypt": True, "DescribeKey": True}
    deadline = time.monotonic() + 10
    while True:
        events = lookup_all(ct, LookupAttributes=[
            {"AttributeKey": "EventSource", "AttributeValue": "kms.amazonaws.com"}])
        recs = [json.loads(e["CloudTrailEvent"]) for e in events]
        mine = [r for r in recs if kid in json.dumps(r) or r.get("errorCode") == "NotFoundException"]
        if {r["eventName"] for r in mine} >= set(want) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    by_name = {r["eventName"]: r for r in mine}
    assert set(want) <= set(by_name), sorted(by_name)
    for name, read_only in want.items():
        r = by_name[name]
        assert r["eventSource"] == "kms.amazonaws.com"
        assert r["readOnly"] is read_only, name
        assert r["awsRegion"] == REGION
    assert by_name["CreateKey"]["responseElements"]["keyMetadata"]["keyId"] == kid
    assert by_name["Encrypt"]["requestParameters"]["keyId"] == kid
    assert "plaintext" not in by_name["Encrypt"]["requestParameters"]
    assert "ciphertextBlob" not in by_name["Decrypt"]["requestParameters"]
    assert by_name["Decrypt"]["responseElements"] is None
    # The key a call used is the record's resource, as CloudTrail records KMS calls.
    for name in ("Encrypt", "Decrypt"):
        assert by_name[name]["resources"] == [
            {"ARN": key_arn(kid), "accountId": ACCOUNT_ID, "type": "AWS::KMS::Key"}], name
    assert by_name["DescribeKey"]["errorCode"] == "NotFoundException"
    text = json.dumps(recs)
    assert base64.b64encode(b"never in a record").decode() not in text
    assert base64.b64encode(blob).decode() not in text


def run_iam(server, *args: str) -> dict | None:
    env = {"AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY,
           "PATH": "/usr/bin:/bin"}
    p = subprocess.run([server.binary, "iam", "--endpoint-url", server.url, *args],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout) if p.stdout.strip() else None


def test_policies_grant_kms_actions_per_key(server):
    kms = kms_client(server)
    a = kms.create_key()["KeyMetadata"]["KeyId"]
    b = kms.create_key()["KeyMetadata"]["KeyId"]
    blob_a = kms.encrypt(KeyId=a, Plaintext=b"for a")["CiphertextBlob"]
    blob_b = kms.encrypt(KeyId=b, Plaintext=b"for b")["CiphertextBlob"]
    name = f"reader-{uid()}"
    run_iam(server, "create-user", "--user-name", name)
    key = run_iam(server, "create-access-key", "--user-name", name)["AccessKey"]
    run_iam(server, "put-user-policy", "--user-name", name, "--policy-name", "decrypt-a",
            "--policy-document", json.dumps({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": key_arn(a)}]}))
    run_iam(server, "attach-user-policy", "--user-name", name, "--policy-name",
            "OpenTrailReadOnlyAccess")
    user = kms_client(server, key["AccessKeyId"], key["SecretAccessKey"])
    assert user.decrypt(CiphertextBlob=blob_a)["Plaintext"] == b"for a"
    msg = expect_error("AccessDeniedException", user.decrypt, CiphertextBlob=blob_b)
    assert f"kms:Decrypt on resource: {key_arn(b)}" in msg
    # Read-only sees keys but changes nothing, and cannot decrypt without its own grant.
    assert user.describe_key(KeyId=b)["KeyMetadata"]["KeyId"] == b
    msg = expect_error("AccessDeniedException", user.disable_key, KeyId=a)
    assert f"kms:DisableKey on resource: {key_arn(a)}" in msg
    expect_error("AccessDeniedException", user.create_key)
    assert kms.describe_key(KeyId=a)["KeyMetadata"]["KeyState"] == "Enabled"


def test_keys_survive_a_restart_and_declared_keys_exist(server):
    kms = kms_client(server)
    kid = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName=f"alias/kept-{kid[:8]}", TargetKeyId=kid)
    blob = kms.encrypt(KeyId=f"alias/kept-{kid[:8]}", Plaintext=b"kept")["CiphertextBlob"]
    server.kill9()
    kms = kms_client(server)
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"kept"
    assert kms.describe_key(KeyId=f"alias/kept-{kid[:8]}")["KeyMetadata"]["KeyId"] == kid
    # Declared in the settings: created at first start, with its alias, once.
    md = kms.describe_key(KeyId="alias/declared")["KeyMetadata"]
    assert md["KeyId"] == DECLARED_KEY
    assert len([a for a in kms.list_aliases()["Aliases"] if a["AliasName"] == "alias/declared"]) == 1


def test_trails_take_keys_from_the_key_service(server):
    kms = kms_client(server)
    ct = cloudtrail_client(server)
    kid = kms.create_key()["KeyMetadata"]["KeyId"]
    alias = f"alias/trail-{uid()}"
    kms.create_alias(AliasName=alias, TargetKeyId=kid)
    bucket = f"kms-{uid()}"
    (Path(server.data_dir) / "buckets" / bucket).mkdir(parents=True)
    for form in (kid, key_arn(kid), alias, f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:{alias}"):
        name = f"enc-{uid()}"
        out = ct.create_trail(Name=name, S3BucketName=bucket, KmsKeyId=form)
        assert out["KmsKeyId"] == key_arn(kid), form
        ct.delete_trail(Name=name)
    expect_error("KmsKeyNotFoundException", ct.create_trail, Name=f"t-{uid()}", S3BucketName=bucket,
                 KmsKeyId="11111111-2222-3333-4444-555555555555")
    expect_error("KmsKeyNotFoundException", ct.create_trail, Name=f"t-{uid()}", S3BucketName=bucket,
                 KmsKeyId="alias/not-there")
    expect_error("InvalidKmsKeyIdException", ct.create_trail, Name=f"t-{uid()}", S3BucketName=bucket,
                 KmsKeyId="not a key")
    kms.disable_key(KeyId=kid)
    msg = expect_error("KmsException", ct.create_trail, Name=f"t-{uid()}", S3BucketName=bucket,
                       KmsKeyId=kid)
    assert "disabled" in msg
    kms.enable_key(KeyId=kid)
    kms.schedule_key_deletion(KeyId=kid, PendingWindowInDays=7)
    msg = expect_error("KmsException", ct.create_trail, Name=f"t-{uid()}", S3BucketName=bucket,
                       KmsKeyId=alias)
    assert "pending deletion" in msg


# ---------------------------------------------------------------------------
# Trails that encrypt their files
# ---------------------------------------------------------------------------


def logs_get(server, bucket: str, out: Path, key: str = FAKE_ACCESS_KEY,
             secret: str = FAKE_SECRET_KEY) -> subprocess.CompletedProcess:
    env = server._env()
    env.update({"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret})
    return subprocess.run(
        [server.binary, "logs", "get", "--bucket", bucket, "--out", str(out),
         "--endpoint-url", server.url, "--data-dir", str(server.data_dir)],
        env=env, capture_output=True, text=True, timeout=120)


def log_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.json.gz") if "/CloudTrail/" in str(p)
                  and ".opentrail-metadata" not in str(p))


def delivered_ids(server, bucket: str, out: Path) -> list[str]:
    """Every eventID in the bucket's log files, decrypted by ``opentrail logs get`` as root."""
    import shutil
    shutil.rmtree(out, ignore_errors=True)
    p = logs_get(server, bucket, out)
    assert p.returncode == 0, p.stderr
    ids = []
    for f in log_files(out):
        ids += [r["eventID"] for r in json.loads(gzip.decompress(f.read_bytes()))["Records"]]
    return ids


def wait_delivered(server, bucket: str, out: Path, want: list[str], timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        ids = delivered_ids(server, bucket, out)
        if set(want) <= set(ids) or time.monotonic() > deadline:
            return ids
        time.sleep(0.5)


def test_an_encrypted_trail_delivers_files_only_its_key_opens(server, tmp_path):
    kms = kms_client(server)
    ct = cloudtrail_client(server)
    kid = kms.create_key(Description="trail files")["KeyMetadata"]["KeyId"]
    bucket = f"enc-{uid()}"
    bucket_dir = Path(server.data_dir) / "buckets" / bucket
    bucket_dir.mkdir(parents=True)
    name = f"enc-{uid()}"
    ct.create_trail(Name=name, S3BucketName=bucket, KmsKeyId=kid)
    ct.start_logging(Name=name)
    trail_arn = f"arn:aws:cloudtrail:{REGION}:{ACCOUNT_ID}:trail/{name}"

    first = server.ingest_ok([make_record() for _ in range(40)])
    ids = wait_delivered(server, bucket, tmp_path / "a", first)
    assert set(first) <= set(ids)
    assert len(ids) == len(set(ids)), "each record once"

    # Stored, the files are not gzip JSON; their metadata carries the wrapped data key.
    stored = log_files(bucket_dir)
    assert stored
    for f in stored:
        raw = f.read_bytes()
        assert raw[:2] != b"\x1f\x8b"
        with pytest.raises(Exception):
            gzip.decompress(raw)
        key = str(f.relative_to(bucket_dir))
        meta = json.loads((bucket_dir / ".opentrail-metadata" / f"{key}.json").read_text())
        assert meta["x-amz-cek-alg"] == "AES/GCM/NoPadding"
        assert meta["x-amz-wrap-alg"] == "kms+context"
        assert meta["x-amz-kms-key-arn"] == key_arn(kid)
        assert json.loads(meta["x-amz-matdesc"]) == {
            "aws:cloudtrail:arn": trail_arn, "aws:s3:arn": f"arn:aws:s3:::{bucket}/{key}"}
        assert int(meta["x-amz-unencrypted-content-length"]) > 0
        # The wrapped data key opens through KMS under that context, and only under it.
        dk = kms.decrypt(CiphertextBlob=base64.b64decode(meta["x-amz-key-v2"]),
                         EncryptionContext=json.loads(meta["x-amz-matdesc"]))
        assert len(dk["Plaintext"]) == 32
        expect_error("InvalidCiphertextException", kms.decrypt,
                     CiphertextBlob=base64.b64decode(meta["x-amz-key-v2"]))

    # A reader without kms:Decrypt on the key cannot read them.
    uname = f"reader-{uid()}"
    run_iam(server, "create-user", "--user-name", uname)
    ak = run_iam(server, "create-access-key", "--user-name", uname)["AccessKey"]
    run_iam(server, "attach-user-policy", "--user-name", uname, "--policy-name",
            "OpenTrailReadOnlyAccess")
    p = logs_get(server, bucket, tmp_path / "denied", ak["AccessKeyId"], ak["SecretAccessKey"])
    assert p.returncode != 0
    assert "AccessDeniedException" in p.stderr and f"kms:Decrypt on resource: {key_arn(kid)}" in p.stderr
    assert log_files(tmp_path / "denied") == []
    # With kms:Decrypt on the key, the same user can.
    run_iam(server, "put-user-policy", "--user-name", uname, "--policy-name", "decrypt",
            "--policy-document", json.dumps({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": key_arn(kid)}]}))
    p = logs_get(server, bucket, tmp_path / "allowed", ak["AccessKeyId"], ak["SecretAccessKey"])
    assert p.returncode == 0, p.stderr
    assert len(log_files(tmp_path / "allowed")) == len(stored)

    # Rotation mid-stream: later files use the new material, earlier ones still open.
    kms.rotate_key_on_demand(KeyId=kid)
    second = server.ingest_ok([make_record() for _ in range(10)])
    ids = wait_delivered(server, bucket, tmp_path / "b", first + second)
    assert set(first + second) <= set(ids) and len(ids) == len(set(ids))

    # A disabled key stops delivery with a clear status error and loses nothing.
    kms.disable_key(KeyId=kid)
    third = server.ingest_ok([make_record() for _ in range(10)])
    deadline = time.monotonic() + 30
    while True:
        st = ct.get_trail_status(Name=name)
        if "KMS.DisabledException" in (st.get("LatestDeliveryError") or "") or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert st["LatestDeliveryError"].startswith("KMS.DisabledException"), st
    assert key_arn(kid) in st["LatestDeliveryError"]
    kms.enable_key(KeyId=kid)
    ids = wait_delivered(server, bucket, tmp_path / "c", first + second + third)
    assert set(first + second + third) <= set(ids)
    assert len(ids) == len(set(ids)), "nothing delivered twice"
    deadline = time.monotonic() + 10
    while "LatestDeliveryError" in ct.get_trail_status(Name=name) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert "LatestDeliveryError" not in ct.get_trail_status(Name=name)


def validate(server, arn: str, start: dt.datetime, bucket_dir: Path, key: str = FAKE_ACCESS_KEY,
             secret: str = FAKE_SECRET_KEY) -> subprocess.CompletedProcess:
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    end = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)
    env = {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [server.binary, "validate-logs", "--trail-arn", arn, "--start-time", start.strftime(fmt),
         "--end-time", end.strftime(fmt), "--endpoint-url", server.url, "--region", REGION,
         "--local-dir", str(bucket_dir), "--verbose", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=180)


def test_encrypted_digests_validate_for_readers_of_the_key(server, tmp_path):
    kms = kms_client(server)
    ct = cloudtrail_client(server)
    kid = kms.create_key()["KeyMetadata"]["KeyId"]
    bucket = f"encd-{uid()}"
    bucket_dir = Path(server.data_dir) / "buckets" / bucket
    bucket_dir.mkdir(parents=True)
    name = f"encd-{uid()}"
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    arn = ct.create_trail(Name=name, S3BucketName=bucket, KmsKeyId=kid,
                          EnableLogFileValidation=True)["TrailARN"]
    ct.start_logging(Name=name)
    ids = server.ingest_ok([make_record() for _ in range(20)])
    assert set(ids) <= set(wait_delivered(server, bucket, tmp_path / "a", ids))
    ct.stop_logging(Name=name)

    def digests() -> list[Path]:
        return sorted(p for p in bucket_dir.rglob("*.json.gz") if "/CloudTrail-Digest/" in str(p)
                      and ".opentrail-metadata" not in str(p))

    # Wait for the chain's last digest (stopping ends it), then validate.
    deadline = time.monotonic() + 60
    while True:
        p = validate(server, arn, start, bucket_dir)
        if (p.returncode == 0 and "log files valid" in p.stdout) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert p.returncode == 0, p.stdout + p.stderr
    assert digests()
    for d in digests():
        raw = d.read_bytes()
        assert raw[:2] != b"\x1f\x8b", "digests are stored encrypted"
        meta = json.loads((bucket_dir / ".opentrail-metadata" / f"{d.relative_to(bucket_dir)}.json").read_text())
        assert meta["x-amz-kms-key-arn"] == key_arn(kid)
        assert "signature" in meta and meta["signature-algorithm"] == "SHA256withRSA"
    lines = p.stdout.splitlines()
    summary = [line for line in lines if "files valid" in line]
    assert summary and all("INVALID" not in line for line in summary), p.stdout

    # A principal that may not decrypt with the key cannot validate.
    uname = f"val-{uid()}"
    run_iam(server, "create-user", "--user-name", uname)
    ak = run_iam(server, "create-access-key", "--user-name", uname)["AccessKey"]
    run_iam(server, "attach-user-policy", "--user-name", uname, "--policy-name",
            "OpenTrailReadOnlyAccess")
    p = validate(server, arn, start, bucket_dir, ak["AccessKeyId"], ak["SecretAccessKey"])
    assert p.returncode == 1, p.stdout + p.stderr
    assert "is encrypted with " + key_arn(kid) in p.stderr, p.stderr
    assert "AccessDeniedException" in p.stderr and "kms:Decrypt" in p.stderr, p.stderr
