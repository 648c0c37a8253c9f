"""Shared fixtures and helpers for the OpenTrail end-to-end tests.

The tests drive a real ``opentrail`` binary (``$OPENTRAIL_BIN``) over HTTP,
using the AWS CLI v1, boto3 and plain ``requests``.  Set up the Python side
with ``scripts/setup-venv.sh`` and run pytest with the venv's interpreter::

    venv=$(scripts/setup-venv.sh)
    OPENTRAIL_BIN=target/debug/opentrail "$venv/bin/python" -m pytest tests/py

Each test module gets its own server (module-scoped ``server`` fixture) with
its own data directory.  Tests inside one module share that server, so every
test uses uuid-suffixed values (user names, event names, resource names) or a
time window of its own to stay independent of its neighbours.

The plain helpers below (``aws``, ``cloudtrail``, ``make_record``, ...) are
imported by the test modules with ``from conftest import ...``.
"""

from __future__ import annotations

import calendar
import copy
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable

import boto3
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from urllib.parse import urlsplit

ACCOUNT_ID = "111122223333"
DEFAULT_REGION = "us-east-1"
# The root user's key every test server is started with (OPENTRAIL_ROOT_*), and
# the key the AWS CLI, boto3 and requests sign with unless a test says otherwise.
FAKE_ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
FAKE_SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

TARGET_PREFIX = "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101"
AMZ_JSON = "application/x-amz-json-1.1"

HEALTH_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# The server promises that an acknowledged ingest is visible to LookupEvents
# within one second.
VISIBILITY_S = 1.0

# Sentinel for make_record(): ``make_record(eventTime=OMIT)`` drops the key.
OMIT = object()


# ---------------------------------------------------------------------------
# Small utilities
# ---------------------------------------------------------------------------


def uid() -> str:
    """A short random suffix for names that must be unique per test."""
    return uuid.uuid4().hex[:10]


def utcnow() -> dt.datetime:
    """Current UTC time truncated to whole seconds."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def iso(t: dt.datetime) -> str:
    """CloudTrail eventTime format: ``YYYY-MM-DDTHH:MM:SSZ``."""
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch(t: dt.datetime) -> int:
    return calendar.timegm(t.astimezone(dt.timezone.utc).utctimetuple())


def parse_event_time(value: str) -> dt.datetime:
    """Parse a record's eventTime (``...Z`` with optional fraction)."""
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def to_epoch(value: Any) -> float:
    """Normalise a LookupEvents ``EventTime`` to epoch seconds.

    boto3 hands back a datetime; the AWS CLI v1 (default
    ``cli_timestamp_format = none``) prints whatever the wire carried, which
    for the JSON protocol is a number of epoch seconds.  An ISO string is
    accepted too so that a diagnosable assertion, not a crash, results if the
    server sends one.
    """
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.timestamp()
    if isinstance(value, bool):
        raise TypeError(f"EventTime is a boolean: {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return parse_event_time(value).timestamp()
    raise TypeError(f"unexpected EventTime value {value!r}")


def error_code(type_value: str) -> str:
    """botocore-style error code: the part of ``__type`` after the last '#'."""
    return type_value.rsplit("#", 1)[-1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------


def iam_user_identity(user_name: str, access_key_id: str, account: str = ACCOUNT_ID) -> dict:
    return {
        "type": "IAMUser",
        "principalId": "AIDA" + uuid.uuid4().hex[:17].upper(),
        "arn": f"arn:aws:iam::{account}:user/{user_name}",
        "accountId": account,
        "accessKeyId": access_key_id,
        "userName": user_name,
    }


def root_identity(access_key_id: str, account: str = ACCOUNT_ID) -> dict:
    return {
        "type": "Root",
        "principalId": account,
        "arn": f"arn:aws:iam::{account}:root",
        "accountId": account,
        "accessKeyId": access_key_id,
    }


def assumed_role_identity(
    role_name: str, session_name: str, access_key_id: str, account: str = ACCOUNT_ID
) -> dict:
    role_id = "AROA" + uuid.uuid4().hex[:17].upper()
    return {
        "type": "AssumedRole",
        "principalId": f"{role_id}:{session_name}",
        "arn": f"arn:aws:sts::{account}:assumed-role/{role_name}/{session_name}",
        "accountId": account,
        "accessKeyId": access_key_id,
        "sessionContext": {
            "sessionIssuer": {
                "type": "Role",
                "principalId": role_id,
                "arn": f"arn:aws:iam::{account}:role/{role_name}",
                "accountId": account,
                "userName": role_name,
            },
            "attributes": {
                "creationDate": "2026-01-01T00:00:00Z",
                "mfaAuthenticated": "false",
            },
        },
    }


def access_key(prefix: str = "AKIA") -> str:
    return prefix + uuid.uuid4().hex[:16].upper()


def make_record(
    *,
    user_name: str | None = None,
    access_key_id: str | None = None,
    event_time: dt.datetime | str | None = None,
    **overrides: Any,
) -> dict:
    """Build a realistic CloudTrail management-event record.

    Keyword-only convenience arguments (snake_case, so they cannot collide
    with record fields):

    * ``user_name`` / ``access_key_id`` -- build an IAMUser ``userIdentity``;
    * ``event_time`` -- a datetime (formatted as ``YYYY-MM-DDTHH:MM:SSZ``) or
      a ready-made string.

    Every other keyword replaces the top-level record field of that name;
    passing ``OMIT`` removes the field.
    """
    user_name = user_name or f"user-{uid()}"
    access_key_id = access_key_id or access_key()
    if event_time is None:
        event_time = utcnow()
    if isinstance(event_time, dt.datetime):
        event_time = iso(event_time)
    bucket = f"bucket-{uid()}"
    record = {
        "eventVersion": "1.11",
        "userIdentity": iam_user_identity(user_name, access_key_id),
        "eventTime": event_time,
        "eventSource": "s3.amazonaws.com",
        "eventName": "CreateBucket",
        "awsRegion": DEFAULT_REGION,
        "sourceIPAddress": "198.51.100.23",
        "userAgent": "aws-cli/2.15.0 Python/3.11.6 Linux/6.1 exe/x86_64.amzn.2",
        "requestParameters": {"bucketName": bucket, "Host": f"{bucket}.s3.amazonaws.com"},
        "responseElements": None,
        "requestID": uuid.uuid4().hex[:16].upper(),
        "eventID": str(uuid.uuid4()),
        "readOnly": False,
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": ACCOUNT_ID,
        "eventCategory": "Management",
        "resources": [
            {"ARN": f"arn:aws:s3:::{bucket}", "accountId": ACCOUNT_ID, "type": "AWS::S3::Bucket"}
        ],
    }
    for key, value in overrides.items():
        if value is OMIT:
            record.pop(key, None)
        else:
            record[key] = value
    return record


def make_insight_record(*, event_time: dt.datetime | None = None, **overrides: Any) -> dict:
    """An Insights record: no userIdentity, ``insightDetails`` instead."""
    event_time = event_time or utcnow()
    record = {
        "eventVersion": "1.08",
        "eventTime": iso(event_time),
        "awsRegion": DEFAULT_REGION,
        "eventID": str(uuid.uuid4()),
        "eventType": "AwsCloudTrailInsight",
        "recipientAccountId": ACCOUNT_ID,
        "sharedEventID": str(uuid.uuid4()),
        "insightDetails": {
            "state": "Start",
            "eventSource": "ec2.amazonaws.com",
            "eventName": "RunInstances",
            "insightType": "ApiCallRateInsight",
            "insightContext": {
                "statistics": {
                    "baseline": {"average": 0.0417},
                    "insight": {"average": 3.0},
                    "insightDuration": 1,
                }
            },
        },
        "eventCategory": "Insight",
    }
    for key, value in overrides.items():
        if value is OMIT:
            record.pop(key, None)
        else:
            record[key] = value
    return record


def expected_username(record: dict) -> str | None:
    """The LookupEvents ``Username`` the contract derives from a record."""
    ident = record.get("userIdentity") or {}
    if ident.get("userName"):
        return ident["userName"]
    if ident.get("type") == "Root":
        return "root"
    if ident.get("type") == "AssumedRole" and ident.get("arn"):
        return ident["arn"].rsplit("/", 1)[-1]
    return None


# ---------------------------------------------------------------------------
# Server process management
# ---------------------------------------------------------------------------


class SigV4(requests.auth.AuthBase):
    """Signs each ``requests`` request with SigV4 (botocore's signer), for the
    service its path and target belong to: ``opentrail`` for ``/v1/events``
    and ``/metrics``, ``iam`` for the admin API, ``events`` and ``sns`` for the
    alerts APIs, ``cloudtrail`` otherwise.
    ``/health`` is left unsigned."""

    def __init__(self, access_key: str = FAKE_ACCESS_KEY, secret_key: str = FAKE_SECRET_KEY,
                 region: str = DEFAULT_REGION):
        self.credentials = Credentials(access_key, secret_key)
        self.region = region

    def __call__(self, r):
        path = urlsplit(r.url).path
        if path == "/health":
            return r
        target = r.headers.get("X-Amz-Target", "")
        if path.startswith("/v1/") or path == "/metrics":
            service = "opentrail"
        elif target.startswith("OpenTrailIAM."):
            service = "iam"
        elif target.startswith("AWSEvents."):
            service = "events"
        elif target.startswith("OpenTrailSNS."):
            service = "sns"
        else:
            service = "cloudtrail"
        body = r.body or b""
        if isinstance(body, str):
            body = body.encode()
        keep = {k: v for k, v in r.headers.items()
                if k.lower() in ("content-type", "x-amz-target")}
        req = AWSRequest(method=r.method, url=r.url, data=body, headers=keep)
        SigV4Auth(self.credentials, service, self.region).add_auth(req)
        r.headers["Authorization"] = req.headers["Authorization"]
        r.headers["X-Amz-Date"] = req.headers["X-Amz-Date"]
        return r


def signed_session(access_key: str = FAKE_ACCESS_KEY, secret_key: str = FAKE_SECRET_KEY,
                   region: str = DEFAULT_REGION) -> requests.Session:
    """A ``requests`` session whose requests are signed with the given key
    (the root key by default)."""
    sess = requests.Session()
    sess.auth = SigV4(access_key, secret_key, region)
    return sess


class OpenTrailServer:
    """A running ``opentrail serve`` process plus convenience helpers."""

    def __init__(self, binary: str, data_dir: Path, log_path: Path, port: int,
                 extra_env: dict | None = None):
        self.binary = binary
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = port
        self.host = "127.0.0.1"
        self.url = f"http://{self.host}:{port}"
        self.account = ACCOUNT_ID
        self.region = DEFAULT_REGION
        # Extra environment for the server process (a test module's
        # ``SERVER_ENV``); applied on top of the defaults, on every (re)start.
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen | None = None
        self._session = signed_session()

    # -- lifecycle ---------------------------------------------------------

    def _env(self) -> dict:
        env = dict(os.environ)
        env.update(
            {
                "OPENTRAIL_ACCOUNT_ID": self.account,
                "OPENTRAIL_REGION": self.region,
                "OPENTRAIL_ROOT_ACCESS_KEY_ID": FAKE_ACCESS_KEY,
                "OPENTRAIL_ROOT_SECRET_ACCESS_KEY": FAKE_SECRET_KEY,
                "RUST_LOG": "info",
            }
        )
        env.update({k: str(v) for k, v in self.extra_env.items()})
        return env

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "server already running"
        # The log is appended to, so restarts keep the earlier output.
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== opentrail start at {utcnow().isoformat()} ===\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "serve",
                    "--data-dir",
                    str(self.data_dir),
                    "--listen",
                    f"{self.host}:{self.port}",
                ],
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        last_error = "no attempt made"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._fail(f"opentrail exited with status {self.proc.returncode} before becoming healthy")
            try:
                r = requests.get(f"{self.url}/health", timeout=1)
                if r.status_code == 200:
                    return
                last_error = f"HTTP {r.status_code}: {r.text[:200]}"
            except requests.RequestException as e:
                last_error = repr(e)
            time.sleep(0.05)
        self._fail(
            f"opentrail did not answer 200 on /health within {HEALTH_TIMEOUT_S:.0f} s "
            f"(last error: {last_error})"
        )

    def _fail(self, message: str) -> None:
        self._terminate()
        log = self.log_text()
        pytest.fail(f"{message}\nserver log ({self.log_path}):\n{log[-8000:]}", pytrace=False)

    def _terminate(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if the process lingers more than 10 s."""
        self._terminate()
        return None if self.proc is None else self.proc.returncode

    def restart(self) -> None:
        """Graceful restart (SIGTERM) on the same port and data directory."""
        self.stop()
        self.start()

    def kill9(self, restart: bool = True) -> None:
        """SIGKILL the server (no chance to flush), then start it again on
        the same port and data directory unless ``restart=False``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        if restart:
            self.start()

    # -- helpers -------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def ingest(self, records: list, **kwargs: Any) -> requests.Response:
        """POST /v1/events with ``{"Records": records}``."""
        return self._session.post(
            f"{self.url}/v1/events", json={"Records": records}, timeout=60, **kwargs
        )

    def ingest_raw(self, body: bytes | str, content_type: str = "application/json") -> requests.Response:
        if isinstance(body, str):
            body = body.encode()
        return self._session.post(
            f"{self.url}/v1/events",
            data=body,
            headers={"Content-Type": content_type},
            timeout=60,
        )

    def ingest_ok(self, records: list) -> list[str]:
        """Ingest and assert success; returns the EventIds."""
        r = self.ingest(records)
        assert r.status_code == 200, f"ingest failed: HTTP {r.status_code} {r.text[:2000]}"
        ids = r.json()["EventIds"]
        assert len(ids) == len(records)
        return ids

    def call(self, operation: str, body: Any = None, raw: bytes | None = None,
             headers: dict | None = None) -> requests.Response:
        """Unsigned AWS JSON 1.1 request to ``POST /``."""
        hdrs = {"X-Amz-Target": f"{TARGET_PREFIX}.{operation}", "Content-Type": AMZ_JSON}
        hdrs.update(headers or {})
        data = raw if raw is not None else json.dumps({} if body is None else body).encode()
        return self._session.post(f"{self.url}/", data=data, headers=hdrs, timeout=30)


@pytest.fixture(scope="session")
def opentrail_bin() -> str:
    binary = os.environ.get("OPENTRAIL_BIN")
    if not binary:
        pytest.fail(
            "OPENTRAIL_BIN is not set: point it at the opentrail binary, e.g. "
            "OPENTRAIL_BIN=target/debug/opentrail",
            pytrace=False,
        )
    path = Path(binary)
    if not path.is_file() or not os.access(path, os.X_OK):
        resolved = shutil.which(binary)
        if resolved is None:
            pytest.fail(f"OPENTRAIL_BIN={binary!r} is not an executable file", pytrace=False)
        path = Path(resolved)
    return str(path.resolve())


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, opentrail_bin: str,
           tmp_path_factory: pytest.TempPathFactory):
    """One server per test module.  A module may define ``SERVER_ENV = {...}``
    to give its server extra environment variables."""
    base = tmp_path_factory.mktemp("opentrail")
    data_dir = base / "data"
    data_dir.mkdir()
    extra_env = getattr(request.module, "SERVER_ENV", {})
    srv = OpenTrailServer(opentrail_bin, data_dir, base / "server.log", free_port(),
                          extra_env=extra_env)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the tail of the server log to failing tests' reports."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        srv = getattr(item, "funcargs", {}).get("server")
        if isinstance(srv, OpenTrailServer):
            report.sections.append(("opentrail server log (tail)", srv.log_text()[-6000:]))


# ---------------------------------------------------------------------------
# AWS CLI v1
# ---------------------------------------------------------------------------

AWS_CLI = Path(sys.executable).parent / "aws"


def _aws_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        {
            "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY,
            "AWS_PAGER": "",
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    return env


def aws(server: OpenTrailServer, *args: str, region: str = DEFAULT_REGION):
    """Run the venv's AWS CLI v1 against the server.

    Returns ``(returncode, parsed JSON stdout or None, stderr)``.
    """
    if not AWS_CLI.exists():
        pytest.fail(
            f"AWS CLI not found at {AWS_CLI}; run the tests with the python of the "
            "venv made by scripts/setup-venv.sh",
            pytrace=False,
        )
    cmd = [
        str(AWS_CLI),
        "--endpoint-url",
        server.url,
        "--region",
        region,
        "--output",
        "json",
        *[str(a) for a in args],
    ]
    proc = subprocess.run(cmd, env=_aws_env(), capture_output=True, text=True, timeout=120)
    parsed = None
    if proc.stdout.strip():
        try:
            parsed = json.loads(proc.stdout)
        except ValueError:
            parsed = None
    return proc.returncode, parsed, proc.stderr


# ---------------------------------------------------------------------------
# boto3
# ---------------------------------------------------------------------------


def cloudtrail_client(server: OpenTrailServer, region: str = DEFAULT_REGION):
    return boto3.session.Session().client(
        "cloudtrail",
        region_name=region,
        endpoint_url=server.url,
        aws_access_key_id=FAKE_ACCESS_KEY,
        aws_secret_access_key=FAKE_SECRET_KEY,
        config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=60),
    )


# ``cloudtrail`` is usable both as a plain function (imported from conftest)
# and, under the same calling convention, through the fixture of that name.
cloudtrail = cloudtrail_client


@pytest.fixture(name="cloudtrail", scope="session")
def cloudtrail_fixture() -> Callable[..., Any]:
    """Factory fixture: ``cloudtrail(server, region="us-east-1")``."""
    return cloudtrail_client


@pytest.fixture(name="aws", scope="session")
def aws_fixture() -> Callable[..., Any]:
    """Factory fixture: ``aws(server, *args, region="us-east-1")``."""
    return aws


@pytest.fixture(name="make_record", scope="session")
def make_record_fixture() -> Callable[..., dict]:
    return make_record


# ---------------------------------------------------------------------------
# Lookup helpers
# ---------------------------------------------------------------------------


def attrs(*pairs: tuple[str, str]) -> list[dict]:
    return [{"AttributeKey": k, "AttributeValue": v} for k, v in pairs]


def lookup_all(client, **params) -> list[dict]:
    """All events for a lookup, following NextToken (boto3)."""
    events: list[dict] = []
    for page in client.get_paginator("lookup_events").paginate(**params):
        events.extend(page.get("Events", []))
    return events


def lookup_ids(client, **params) -> list[str]:
    return [e["EventId"] for e in lookup_all(client, **params)]


def find_event(client, event_id: str) -> dict | None:
    events = client.lookup_events(LookupAttributes=attrs(("EventId", event_id)))["Events"]
    assert len(events) <= 1, f"EventId lookup returned {len(events)} events"
    return events[0] if events else None


def wait_for_event(client, event_id: str, timeout: float = VISIBILITY_S * 2,
                   interval: float = 0.05) -> dict:
    """Poll a lookup by EventId until it finds the event or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        ev = find_event(client, event_id)
        if ev is not None:
            return ev
        if time.monotonic() >= deadline:
            pytest.fail(f"event {event_id} not visible through LookupEvents after {timeout:.1f} s")
        time.sleep(interval)


def wait_for_events(client, event_ids: Iterable[str], timeout: float = VISIBILITY_S * 2) -> None:
    for event_id in event_ids:
        wait_for_event(client, event_id, timeout=timeout)


def newest_first(records: Iterable[dict]) -> list[str]:
    """EventIds of records sorted the way LookupEvents must return them."""
    recs = list(records)
    times = [parse_event_time(r["eventTime"]) for r in recs]
    assert len(set(times)) == len(times), "test data must use distinct eventTimes"
    return [r["eventID"] for _, r in sorted(zip(times, recs), key=lambda p: p[0], reverse=True)]


def json_equal(a: Any, b: Any) -> bool:
    """Deep equality of parsed JSON that, unlike ``==``, keeps booleans,
    integers and floats apart (in Python ``True == 1 == 1.0``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    return a == b


def assert_record_roundtrip(cloudtrail_event: str, sent: dict) -> dict:
    """CloudTrailEvent must be a JSON string that parses to an object in
    which every field that was sent is present and unchanged (deeply, with
    JSON types preserved).  Fields the server adds are allowed."""
    assert isinstance(cloudtrail_event, str), f"CloudTrailEvent is not a string: {cloudtrail_event!r}"
    stored = json.loads(cloudtrail_event)
    assert isinstance(stored, dict), f"CloudTrailEvent is not a JSON object: {stored!r}"
    for key, value in sent.items():
        assert key in stored, f"field {key!r} missing from CloudTrailEvent {stored!r}"
        assert json_equal(stored[key], value), (
            f"field {key!r} changed: sent {value!r}, got {stored[key]!r}"
        )
    return stored


def gunzip_single_member(data: bytes, where: str) -> bytes:
    """The content of a gzip file that must be exactly one member (what CloudTrail writes and its
    validator requires): fails on a missing magic, a truncated stream or trailing bytes."""
    assert data[:2] == b"\x1f\x8b", f"{where}: not gzip (starts with {data[:8]!r})"
    d = zlib.decompressobj(wbits=31)
    out = d.decompress(data) + d.flush()
    assert d.eof, f"{where}: gzip stream is truncated ({len(data)} bytes)"
    assert d.unused_data == b"", (
        f"{where}: more than one gzip member / trailing bytes ({len(d.unused_data)} bytes after the first member)"
    )
    return out


def deep_copy(obj: Any) -> Any:
    return copy.deepcopy(obj)


def trail_status_with_body(server: OpenTrailServer, name: str, region: str = DEFAULT_REGION) -> tuple[dict, dict]:
    """GetTrailStatus through boto3: the parsed response and the raw JSON body (boto3 drops
    null members, so absence is checked on the raw body)."""
    client = cloudtrail_client(server, region)
    box: dict = {}

    def grab(http_response, **_kw):
        box["body"] = http_response.content

    client.meta.events.register("after-call.cloudtrail.GetTrailStatus", grab)
    parsed = client.get_trail_status(Name=name)
    parsed = {k: v for k, v in parsed.items() if k != "ResponseMetadata"}
    return parsed, json.loads(box["body"])


def poll_until(what: str, fn: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    """Call ``fn`` until it returns something truthy; fail with the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last value: {last!r}", pytrace=False)
        time.sleep(interval)
