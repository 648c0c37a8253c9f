"""Alerts end to end: EventBridge rules (the real AWS CLI and boto3 against ``AWSEvents.*``),
topics managed with ``opentrail topics``, and messages reaching real receivers:

- a local webhook (signature checked with the topic's secret),
- a local SMTP server (aiosmtpd) that insists on STARTTLS and AUTH, with a self-signed
  certificate the server is told to trust,
- a local NATS server with JetStream (Debian's ``nats-server``), read back with nats-py.

Also: retries after the receiver fails, the dead-letter path, starter rules enabled by name,
read-only events and rule states, and SIGKILL while rules are being processed losing nothing.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import hmac
import json
import os
import shutil
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from receivers import Webhook, make_cert
from conftest import (
    ACCOUNT_ID,
    DEFAULT_REGION,
    FAKE_ACCESS_KEY,
    FAKE_SECRET_KEY,
    aws,
    cloudtrail_client,
    find_event,
    free_port,
    make_record,
    poll_until,
    signed_session,
    uid,
    wait_for_event,
)

SMTP_USER = "alerts"
SMTP_PASSWORD = "smtp-pass-123"
MAX_ATTEMPTS = 3


# ---------------------------------------------------------------------------
# Receivers
# ---------------------------------------------------------------------------


class SmtpSink:
    """aiosmtpd requiring STARTTLS before MAIL and AUTH with one login."""

    def __init__(self, cert: Path, key: Path) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        self.messages: list[dict] = []
        self.lock = threading.Lock()
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802
                with sink.lock:
                    sink.messages.append({
                        "from": envelope.mail_from,
                        "to": list(envelope.rcpt_tos),
                        "data": envelope.content,
                        "authenticated": bool(session.authenticated),
                        "tls": session.ssl is not None,
                    })
                return "250 OK"

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (isinstance(auth_data, LoginPassword)
                  and auth_data.login == SMTP_USER.encode()
                  and auth_data.password == SMTP_PASSWORD.encode())
            return AuthResult(success=ok, handled=False)

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(cert), str(key))
        self.port = free_port()
        self.controller = Controller(
            Handler(), hostname="127.0.0.1", port=self.port, tls_context=ctx,
            require_starttls=True, authenticator=authenticator, auth_required=True,
            auth_require_tls=True,
        )
        self.controller.start()

    def to(self, address: str) -> list[dict]:
        with self.lock:
            return [m for m in self.messages if address in m["to"]]


class Nats:
    """``nats-server -js`` on a free port, with a stream over ``alerts.>``."""

    def __init__(self, store: Path) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(store)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.run(self._add_stream())

    def run(self, coro):
        return asyncio.run(coro)

    async def _connect(self):
        import nats
        deadline = time.monotonic() + 10
        while True:
            try:
                return await nats.connect(self.url, connect_timeout=1, allow_reconnect=False)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def _add_stream(self):
        nc = await self._connect()
        js = nc.jetstream()
        await js.add_stream(name="ALERTS", subjects=["alerts.>"], duplicate_window=120)
        await nc.close()

    async def _messages(self, subject: str):
        nc = await self._connect()
        js = nc.jetstream()
        info = await js.stream_info("ALERTS")
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                m = await js.get_msg("ALERTS", seq)
            except Exception:
                continue
            if m.subject == subject:
                out.append({"data": m.data, "headers": dict(m.headers or {})})
        await nc.close()
        return out

    def messages(self, subject: str) -> list[dict]:
        return self.run(self._messages(subject))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


WEBHOOK = Webhook()
_CERT_DIR = Path(os.environ.get("TMPDIR", "/tmp")) / f"opentrail-alerts-{uid()}"
_CERT_DIR.mkdir(parents=True, exist_ok=True)
CA, CERT, KEY = make_cert(_CERT_DIR)
SMTP = SmtpSink(CERT, KEY)
NATS = Nats(_CERT_DIR / "jetstream")
DECLARED_TOPIC = "declared-" + uid()

SERVER_ENV = {
    "OPENTRAIL_SMTP_HOST": "127.0.0.1",
    "OPENTRAIL_SMTP_PORT": str(SMTP.port),
    "OPENTRAIL_SMTP_TLS": "starttls",
    "OPENTRAIL_SMTP_USERNAME": SMTP_USER,
    "OPENTRAIL_SMTP_PASSWORD": SMTP_PASSWORD,
    "OPENTRAIL_SMTP_FROM": "OpenTrail Alerts <alerts@opentrail.test>",
    "OPENTRAIL_SMTP_CA_FILE": str(CA),
    "OPENTRAIL_ALERT_RETRY_BASE": "200ms",
    "OPENTRAIL_ALERT_MAX_BACKOFF": "1s",
    "OPENTRAIL_ALERT_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    "OPENTRAIL_SNS_TOPICS": DECLARED_TOPIC,
    "OPENTRAIL_SNS_SUBSCRIPTIONS": f"{DECLARED_TOPIC}={WEBHOOK.url}/declared",
    "OPENTRAIL_SNS_TOPIC_SECRETS": f"{DECLARED_TOPIC}=declared-secret-0123456789",
}


@pytest.fixture(scope="module", autouse=True)
def _receivers():
    yield
    SMTP.controller.stop()
    NATS.stop()
    shutil.rmtree(_CERT_DIR, ignore_errors=True)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def events_client(server):
    return boto3.session.Session().client(
        "events", region_name=DEFAULT_REGION, endpoint_url=server.url,
        aws_access_key_id=FAKE_ACCESS_KEY, aws_secret_access_key=FAKE_SECRET_KEY,
    )


def topics(server, *args: str, key: str = FAKE_ACCESS_KEY, secret: str = FAKE_SECRET_KEY,
           command: str = "topics") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret})
    return subprocess.run([server.binary, command, "--endpoint-url", server.url, *args],
                          env=env, capture_output=True, text=True, timeout=60)


def topics_ok(server, *args: str, command: str = "topics") -> Any:
    p = topics(server, *args, command=command)
    assert p.returncode == 0, f"opentrail {command} {args}: {p.returncode}\n{p.stdout}\n{p.stderr}"
    return json.loads(p.stdout) if p.stdout.strip().startswith("{") else p.stdout


def new_topic(server, name: str | None = None) -> tuple[str, str]:
    """Creates a topic; returns (ARN, signing secret)."""
    arn = topics_ok(server, "create-topic", "--name", name or f"t-{uid()}")["TopicArn"]
    attrs = topics_ok(server, "get-topic-attributes", "--topic-arn", arn)["Attributes"]
    assert "SigningSecret" not in attrs, "reading attributes does not reveal the secret"
    return arn, topics_ok(server, "get-signing-secret", "--topic-arn", arn)["SigningSecret"]


def subscribe(server, topic: str, protocol: str, endpoint: str) -> str:
    return topics_ok(server, "subscribe", "--topic-arn", topic, "--protocol", protocol,
                     "--notification-endpoint", endpoint)["SubscriptionArn"]


def rule_to(server, topic: str, pattern: dict, state: str = "ENABLED") -> str:
    ev = events_client(server)
    name = f"r-{uid()}"
    ev.put_rule(Name=name, EventPattern=json.dumps(pattern), State=state)
    out = ev.put_targets(Rule=name, Targets=[{"Id": "t1", "Arn": topic}])
    assert out["FailedEntryCount"] == 0, out
    return name


def stored_record(server, event_id: str) -> dict:
    ev = wait_for_event(cloudtrail_client(server), event_id)
    return json.loads(ev["CloudTrailEvent"])


def sub_attrs(server, sub: str) -> dict:
    return topics_ok(server, "get-subscription-attributes", "--subscription-arn", sub)["Attributes"]


def check_signature(post: dict, secret: str) -> None:
    want = "sha256=" + hmac.new(secret.encode(), post["body"], hashlib.sha256).hexdigest()
    assert post["headers"]["x-opentrail-signature"] == want


# ---------------------------------------------------------------------------
# The pattern language and the rules API through real clients
# ---------------------------------------------------------------------------


EVENT = {
    "version": "0", "id": "1", "detail-type": "AWS API Call via CloudTrail",
    "source": "aws.cloudtrail", "account": ACCOUNT_ID, "time": "2026-11-21T10:00:00Z",
    "region": "eu-west-1", "resources": [],
    "detail": {"eventName": "StopLogging", "sourceIPAddress": "10.1.2.3", "count": 7,
               "userIdentity": {"type": "Root", "arn": "arn:aws:iam::111122223333:root"},
               "tags": ["a", "b"], "resources": [{"type": "T1", "ARN": "x"}, {"type": "T2", "ARN": "y"}]},
}

CASES = [
    ({"source": ["aws.cloudtrail"]}, True),
    ({"source": ["aws.iam"]}, False),
    ({"detail": {"eventName": [{"prefix": "Stop"}]}}, True),
    ({"detail": {"eventName": [{"suffix": "Trail"}]}}, False),
    ({"detail": {"eventName": [{"anything-but": ["StopLogging"]}]}}, False),
    ({"detail": {"eventName": [{"anything-but": {"prefix": "Start"}}]}}, True),
    ({"detail": {"count": [{"numeric": [">", 5, "<=", 7]}]}}, True),
    ({"detail": {"count": [{"numeric": ["<", 7]}]}}, False),
    ({"detail": {"errorCode": [{"exists": False}]}}, True),
    ({"detail": {"errorCode": [{"exists": True}]}}, False),
    ({"detail": {"userIdentity": {"arn": [{"wildcard": "arn:aws:iam::*:root"}]}}}, True),
    ({"detail": {"sourceIPAddress": [{"cidr": "10.1.0.0/16"}]}}, True),
    ({"detail": {"eventName": [{"equals-ignore-case": "stoplogging"}]}}, True),
    ({"detail": {"tags": ["b"]}}, True),
    ({"detail": {"resources": {"type": ["T1"], "ARN": ["y"]}}}, False),
    ({"detail": {"resources": {"type": ["T2"], "ARN": ["y"]}}}, True),
    ({"$or": [{"source": ["aws.iam"]}, {"detail": {"userIdentity": {"type": ["Root"]}}}]}, True),
    ({"$or": [{"source": ["aws.iam"]}, {"region": ["us-east-1"]}]}, False),
]


def test_pattern_language_through_the_aws_cli(server):
    for pattern, expected in CASES:
        code, out, err = aws(server, "events", "test-event-pattern",
                             "--event-pattern", json.dumps(pattern), "--event", json.dumps(EVENT))
        assert code == 0, err
        assert out == {"Result": expected}, pattern
    code, _, err = aws(server, "events", "test-event-pattern",
                       "--event-pattern", '{"detail": {"n": [{"numeric": [">", 5, "<", 1]}]}}',
                       "--event", json.dumps(EVENT))
    assert code != 0 and "InvalidEventPatternException" in err and "range is empty" in err
    code, _, err = aws(server, "events", "test-event-pattern",
                       "--event-pattern", '{"source": ["x"]}', "--event", '{"source": "x"}')
    assert code != 0 and "ValidationException" in err and "Event is not valid" in err


def test_rules_api_with_boto3(server):
    ev = events_client(server)
    topic, _ = new_topic(server)
    name = f"crud-{uid()}"
    arn = ev.put_rule(Name=name, EventPattern='{"source":["aws.cloudtrail"]}',
                      Description="d")["RuleArn"]
    assert arn == f"arn:aws:events:{DEFAULT_REGION}:{ACCOUNT_ID}:rule/{name}"
    got = ev.describe_rule(Name=name)
    assert (got["Name"], got["State"], got["Description"], got["EventBusName"]) == (name, "ENABLED", "d", "default")
    assert json.loads(got["EventPattern"]) == {"source": ["aws.cloudtrail"]}
    out = ev.put_targets(Rule=name, Targets=[
        {"Id": "ok", "Arn": topic},
        {"Id": "sqs", "Arn": f"arn:aws:sqs:{DEFAULT_REGION}:{ACCOUNT_ID}:q"},
        {"Id": "xf", "Arn": topic, "Input": "{}"},
    ])
    assert out["FailedEntryCount"] == 2
    assert {e["TargetId"]: e["ErrorCode"] for e in out["FailedEntries"]} == {
        "sqs": "ResourceNotFoundException", "xf": "ValidationException"}
    assert ev.list_targets_by_rule(Rule=name)["Targets"] == [{"Id": "ok", "Arn": topic}]
    ev.disable_rule(Name=name)
    assert ev.describe_rule(Name=name)["State"] == "DISABLED"
    ev.enable_rule(Name=name)
    with pytest.raises(ev.exceptions.ClientError) as e:
        ev.delete_rule(Name=name)
    assert e.value.response["Error"]["Code"] == "ValidationException"
    ev.remove_targets(Rule=name, Ids=["ok"])
    ev.delete_rule(Name=name)
    with pytest.raises(ev.exceptions.ResourceNotFoundException):
        ev.describe_rule(Name=name)
    with pytest.raises(ev.exceptions.InvalidEventPatternException):
        ev.put_rule(Name=name, EventPattern='{"a": "not-a-list"}')
    with pytest.raises(ev.exceptions.ClientError) as e:
        ev.put_rule(Name=name, ScheduleExpression="rate(5 minutes)")
    assert e.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ev.exceptions.ResourceNotFoundException):
        ev.put_rule(Name=name, EventPattern='{"a":[1]}', EventBusName="other")
    # Paging through ListRules.
    prefix = f"page-{uid()}"
    for i in range(5):
        ev.put_rule(Name=f"{prefix}-{i}", EventPattern='{"a":[1]}', State="DISABLED")
    names = [r["Name"] for page in ev.get_paginator("list_rules").paginate(
        NamePrefix=prefix, PaginationConfig={"PageSize": 2}) for r in page["Rules"]]
    assert names == [f"{prefix}-{i}" for i in range(5)]
    # Every call is recorded with eventSource events.amazonaws.com.
    trail = cloudtrail_client(server)
    recorded = poll_until("PutRule records", lambda: [
        e for e in trail.lookup_events(LookupAttributes=[
            {"AttributeKey": "EventSource", "AttributeValue": "events.amazonaws.com"}])["Events"]
        if e["EventName"] == "PutRule"], timeout=5)
    assert recorded


# ---------------------------------------------------------------------------
# A rule firing to each kind of subscriber
# ---------------------------------------------------------------------------


def test_rule_fires_to_webhook_email_and_nats_with_the_exact_message(server):
    topic, secret = new_topic(server)
    path = f"/hook-{uid()}"
    address = f"secops-{uid()}@example.com"
    subject = f"alerts.{uid()}"
    s_hook = subscribe(server, topic, "http", WEBHOOK.url + path)
    s_mail = subscribe(server, topic, "email", address)
    s_nats = subscribe(server, topic, "nats", f"{NATS.url}/{subject}")
    name = f"Alert{uid()}"
    rule = rule_to(server, topic, {"source": ["aws.ec2"], "detail": {"eventName": [name]}})

    (eid,) = server.ingest_ok([make_record(eventName=name, eventSource="ec2.amazonaws.com",
                                           readOnly=False)])
    acked = time.time()
    post = poll_until("the webhook post", lambda: WEBHOOK.accepted(path), timeout=10)[0]
    print(f"\nack -> webhook: {(post['time'] - acked) * 1000:.1f} ms")
    record = stored_record(server, eid)

    # Webhook: SNS's notification envelope, signed with the topic's secret.
    check_signature(post, secret)
    body = json.loads(post["body"])
    assert body["Type"] == "Notification"
    assert body["TopicArn"] == topic
    assert body["Subject"] == f"[OpenTrail] {rule}: {name} by {record['userIdentity'].get('arn', record['userIdentity'].get('type'))}"[:100]
    assert post["headers"]["x-amz-sns-message-id"] == body["MessageId"]
    assert post["headers"]["x-amz-sns-subscription-arn"] == s_hook
    event = json.loads(body["Message"])
    assert event["detail-type"] == "AWS API Call via CloudTrail"
    assert event["source"] == "aws.ec2"
    assert event["account"] == record["recipientAccountId"]
    assert event["region"] == record["awsRegion"]
    assert event["time"] == record["eventTime"]
    assert event["resources"] == [] and event["version"] == "0"
    assert event["detail"] == record, "detail is the record exactly as stored"

    # Email over STARTTLS with AUTH.
    mail = poll_until("the email", lambda: SMTP.to(address), timeout=10)[0]
    assert mail["authenticated"] and mail["tls"]
    assert mail["from"] == "alerts@opentrail.test"
    msg = email.message_from_bytes(mail["data"], policy=email.policy.default)
    assert msg["Subject"] == body["Subject"]
    assert msg["To"] == address
    text = msg.get_content()
    assert f"Rule: {rule}" in text and f"Topic: {topic}" in text
    assert json.loads(text[text.index("{"):]) == event

    # NATS JetStream: the event as the payload, the message id for deduplication.
    got = poll_until("the NATS message", lambda: NATS.messages(subject), timeout=10)
    assert len(got) == 1
    assert json.loads(got[0]["data"]) == event
    assert got[0]["headers"]["OpenTrail-Rule"] == rule
    assert got[0]["headers"]["Nats-Msg-Id"]

    for sub in (s_hook, s_mail, s_nats):
        a = poll_until("delivered count", lambda: (lambda x: x if x["DeliveredCount"] == "1" else None)(sub_attrs(server, sub)), timeout=5)
        assert (a["PendingCount"], a["DeadLetterCount"], a["LastError"]) == ("0", "0", "")
    # An event the pattern does not match reaches nobody.
    server.ingest_ok([make_record(eventName=name + "X", eventSource="ec2.amazonaws.com", readOnly=False)])
    time.sleep(1.0)
    assert len(WEBHOOK.attempts(path)) == 1


def test_retries_after_the_receiver_fails_then_succeed(server):
    topic, secret = new_topic(server)
    path = f"/flaky-2-{uid()}"
    sub = subscribe(server, topic, "http", WEBHOOK.url + path)
    name = f"Retry{uid()}"
    rule_to(server, topic, {"detail": {"eventName": [name]}})
    server.ingest_ok([make_record(eventName=name, readOnly=False)])
    ok = poll_until("the third attempt", lambda: WEBHOOK.accepted(path), timeout=15)
    tries = WEBHOOK.attempts(path)
    assert [t["status"] for t in tries] == [500, 500, 200]
    ids = {t["headers"]["x-amz-sns-message-id"] for t in tries}
    assert len(ids) == 1, "the same message id on every attempt"
    assert tries[2]["time"] - tries[1]["time"] >= 0.35, "backoff doubles (200 ms, then 400 ms)"
    check_signature(ok[0], secret)
    a = poll_until("settled", lambda: (lambda x: x if x["DeliveredCount"] == "1" else None)(sub_attrs(server, sub)), timeout=5)
    assert a["FailedAttemptCount"] == "2" and a["DeadLetterCount"] == "0"
    assert "answered 500" in a["LastError"]


def test_dead_letter_after_the_last_attempt(server):
    topic, _ = new_topic(server)
    sub = subscribe(server, topic, "http", WEBHOOK.url + "/down")
    name = f"Dead{uid()}"
    rule = rule_to(server, topic, {"detail": {"eventName": [name]}})
    (eid,) = server.ingest_ok([make_record(eventName=name, readOnly=False)])
    dead = poll_until("a dead letter", lambda: topics_ok(
        server, "list-dead-letters", "--subscription-arn", sub)["DeadLetters"], timeout=15)
    assert len(dead) == 1
    d = dead[0]
    assert d["Attempts"] == MAX_ATTEMPTS and "answered 503" in d["Error"]
    assert d["Rule"] == rule
    assert json.loads(d["Message"])["detail"]["eventID"] == eid
    a = sub_attrs(server, sub)
    assert (a["DeadLetterCount"], a["PendingCount"], a["FailedAttemptCount"]) == ("1", "0", str(MAX_ATTEMPTS))
    table = topics_ok(server, "status")
    line = next(l for l in table.splitlines() if sub in l)
    assert "/down" in line and "answered 503" in line
    # An email subscription with no server to reach also dead-letters (here: a wrong port).


def test_declared_topic_and_publish(server):
    arns = [t["TopicArn"] for t in topics_ok(server, "list-topics")["Topics"]]
    declared = f"arn:aws:sns:{DEFAULT_REGION}:{ACCOUNT_ID}:{DECLARED_TOPIC}"
    assert declared in arns
    attrs = topics_ok(server, "get-topic-attributes", "--topic-arn", declared)["Attributes"]
    assert attrs["DeclaredInSettings"] == "true"
    secret = topics_ok(server, "get-signing-secret", "--topic-arn", declared)["SigningSecret"]
    assert secret == "declared-secret-0123456789"
    mid = topics_ok(server, "publish", "--topic-arn", declared, "--message", "hello", "--subject", "hi")["MessageId"]
    post = poll_until("the published message", lambda: WEBHOOK.accepted("/declared"), timeout=10)[0]
    body = json.loads(post["body"])
    assert (body["MessageId"], body["Message"], body["Subject"]) == (mid, "hello", "hi")
    check_signature(post, "declared-secret-0123456789")


def test_topic_api_refusals_and_audit(server):
    topic, _ = new_topic(server)
    p = topics(server, "subscribe", "--topic-arn", topic, "--protocol", "email",
               "--notification-endpoint", "not-an-address")
    assert p.returncode != 0 and "InvalidParameter" in p.stderr and "not an email address" in p.stderr
    p = topics(server, "subscribe", "--topic-arn", topic + "-nope", "--protocol", "http",
               "--notification-endpoint", "http://x/")
    assert p.returncode != 0 and "NotFound" in p.stderr
    p = topics(server, "create-topic", "--name", "bad name")
    assert p.returncode != 0 and "InvalidParameter" in p.stderr
    name = f"secret-{uid()}"
    topics_ok(server, "create-topic", "--name", name, "--signing-secret", "super-secret-value-123")
    trail = cloudtrail_client(server)

    def created():
        for e in trail.lookup_events(LookupAttributes=[
                {"AttributeKey": "EventName", "AttributeValue": "CreateTopic"}])["Events"]:
            r = json.loads(e["CloudTrailEvent"])
            if (r.get("requestParameters") or {}).get("name") == name:
                return r
        return None

    r = poll_until("the CreateTopic record", created, timeout=5)
    assert r["eventSource"] == "sns.amazonaws.com"
    assert "super-secret-value-123" not in json.dumps(r)


def test_read_only_events_need_the_all_management_state(server):
    topic, _ = new_topic(server)
    plain, everything = f"/ro-plain-{uid()}", f"/ro-all-{uid()}"
    t_plain, _ = new_topic(server)
    subscribe(server, t_plain, "http", WEBHOOK.url + plain)
    subscribe(server, topic, "http", WEBHOOK.url + everything)
    name = f"Describe{uid()}"
    pattern = {"detail": {"eventName": [name]}}
    rule_to(server, t_plain, pattern)
    rule_to(server, topic, pattern, state="ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS")
    server.ingest_ok([make_record(eventName=name, readOnly=True)])
    poll_until("the all-management rule", lambda: WEBHOOK.accepted(everything), timeout=10)
    time.sleep(0.5)
    assert WEBHOOK.attempts(plain) == [], "ENABLED rules do not see read-only calls"


def test_calls_are_authorized_on_the_member_they_act_on(server):
    """A policy scoped to one rule and one topic cannot reach another through a decoy member."""
    allowed_topic, _ = new_topic(server)
    other_topic, _ = new_topic(server)
    other_sub = subscribe(server, other_topic, "http", WEBHOOK.url + "/other")
    ev = events_client(server)
    allowed, victim = f"allowed-{uid()}", f"victim-{uid()}"
    for name in (allowed, victim):
        ev.put_rule(Name=name, EventPattern='{"source":["aws.iam"]}')
    user = f"scoped-{uid()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY})
    iam = [server.binary, "iam", "--endpoint-url", server.url]
    subprocess.run(iam + ["create-user", "--user-name", user], env=env, check=True, capture_output=True)
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["events:PutTargets", "events:DescribeRule"],
         "Resource": f"arn:aws:events:{DEFAULT_REGION}:{ACCOUNT_ID}:rule/{allowed}"},
        {"Effect": "Allow", "Action": ["sns:Unsubscribe", "sns:GetSubscriptionAttributes",
                                       "sns:ListDeadLetters", "sns:GetTopicAttributes"],
         "Resource": allowed_topic},
    ]}
    subprocess.run(iam + ["put-user-policy", "--user-name", user, "--policy-name", "scoped",
                          "--policy-document", json.dumps(policy)], env=env, check=True, capture_output=True)
    key = json.loads(subprocess.run(iam + ["create-access-key", "--user-name", user], env=env,
                                    check=True, capture_output=True, text=True).stdout)["AccessKey"]
    sess = signed_session(key["AccessKeyId"], key["SecretAccessKey"])

    def call(target: str, body: dict) -> requests.Response:
        return sess.post(f"{server.url}/", data=json.dumps(body), timeout=10, headers={
            "X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"})

    r = call("AWSEvents.PutTargets", {"Name": allowed, "Rule": victim,
                                      "Targets": [{"Id": "x", "Arn": allowed_topic}]})
    assert r.status_code == 403 and "AccessDenied" in r.text, r.text
    assert ev.list_targets_by_rule(Rule=victim)["Targets"] == []
    r = call("AWSEvents.PutTargets", {"Rule": allowed, "Targets": [{"Id": "x", "Arn": allowed_topic}]})
    assert r.status_code == 200, r.text
    for target, body in (
        ("OpenTrailSNS.Unsubscribe", {"TopicArn": allowed_topic, "SubscriptionArn": other_sub}),
        ("OpenTrailSNS.GetSubscriptionAttributes", {"TopicArn": allowed_topic, "SubscriptionArn": other_sub}),
        ("OpenTrailSNS.ListDeadLetters", {"TopicArn": allowed_topic, "SubscriptionArn": other_sub}),
        ("OpenTrailSNS.GetTopicSigningSecret", {"TopicArn": allowed_topic}),
    ):
        r = call(target, body)
        assert r.status_code == 403 and "AccessDenied" in r.text, (target, r.text)
    assert other_sub in [s["SubscriptionArn"] for s in topics_ok(server, "list-subscriptions")["Subscriptions"]]
    r = call("OpenTrailSNS.GetTopicAttributes", {"TopicArn": allowed_topic})
    assert r.status_code == 200 and "SigningSecret" not in r.json()["Attributes"]


def test_unsubscribed_endpoints_get_nothing_more(server):
    topic, _ = new_topic(server)
    path = f"/gone-{uid()}"
    sub = subscribe(server, topic, "http", WEBHOOK.url + path)
    name = f"Gone{uid()}"
    rule_to(server, topic, {"detail": {"eventName": [name]}})
    server.ingest_ok([make_record(eventName=name, readOnly=False)])
    poll_until("the first alert", lambda: WEBHOOK.accepted(path), timeout=10)
    topics_ok(server, "unsubscribe", "--subscription-arn", sub)
    server.ingest_ok([make_record(eventName=name, readOnly=False) for _ in range(20)])
    topics_ok(server, "publish", "--topic-arn", topic, "--message", "after")
    time.sleep(1.5)
    assert len(WEBHOOK.attempts(path)) == 1


# ---------------------------------------------------------------------------
# Starter rules
# ---------------------------------------------------------------------------


def test_starter_rules_enabled_by_name(server):
    listing = topics_ok(server, "starters", command="rules")
    for n in ("trail-tampering", "root-account-usage", "console-signin-failures",
              "iam-policy-changes", "access-denied-burst"):
        assert n in listing
    topic, _ = new_topic(server)
    path = f"/starters-{uid()}"
    subscribe(server, topic, "http", WEBHOOK.url + path)
    for n in ("trail-tampering", "console-signin-failures", "access-denied-burst"):
        out = topics_ok(server, "enable-starter", n, "--topic-arn", topic,
                        "--rule-name", f"{n}-{uid()}", command="rules")
        assert out["RuleArn"].startswith(f"arn:aws:events:{DEFAULT_REGION}:{ACCOUNT_ID}:rule/{n}-")
    p = topics(server, "enable-starter", "nope", "--topic-arn", topic, command="rules")
    assert p.returncode != 0 and "trail-tampering" in p.stderr
    assert "access-denied-burst" in topics_ok(server, "list", command="rules")

    def messages():
        return [json.loads(json.loads(p["body"])["Message"]) for p in WEBHOOK.accepted(path)]

    # Trail tampering: a StopLogging through the AWS CLI.
    trail = f"starter-{uid()}"
    bucket = f"bucket-{uid()}"
    subprocess.run([server.binary, "buckets", "create", bucket, "--data-dir", str(server.data_dir)],
                   check=True, capture_output=True)
    assert aws(server, "cloudtrail", "create-trail", "--name", trail, "--s3-bucket-name", bucket)[0] == 0
    assert aws(server, "cloudtrail", "stop-logging", "--name", trail)[0] == 0
    stop = poll_until("the StopLogging alert", lambda: [
        m for m in messages() if m["detail"]["eventName"] == "StopLogging"
        and m["detail"]["requestParameters"]["name"] == trail], timeout=10)[0]
    assert stop["source"] == "aws.cloudtrail"

    # A failed console sign-in.
    r = requests.post(f"{server.url}/console/api/signin",
                      json={"AccessKeyId": FAKE_ACCESS_KEY, "SecretAccessKey": "wrong"}, timeout=10)
    assert r.status_code in (401, 403)
    login = poll_until("the sign-in alert", lambda: [
        m for m in messages() if m["detail-type"] == "AWS Console Sign In via CloudTrail"], timeout=10)[0]
    assert login["source"] == "aws.signin"
    assert login["detail"]["responseElements"]["ConsoleLogin"] == "Failure"

    # Ten refused calls within five minutes: one alert for the burst, not ten.
    user = f"nobody-{uid()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY})
    subprocess.run([server.binary, "iam", "--endpoint-url", server.url, "create-user", "--user-name", user],
                   env=env, check=True, capture_output=True)
    key = json.loads(subprocess.run(
        [server.binary, "iam", "--endpoint-url", server.url, "create-access-key", "--user-name", user],
        env=env, check=True, capture_output=True, text=True).stdout)["AccessKey"]
    denied = boto3.session.Session().client(
        "cloudtrail", region_name=DEFAULT_REGION, endpoint_url=server.url,
        aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
    for _ in range(12):
        with pytest.raises(denied.exceptions.ClientError):
            denied.describe_trails()
    burst = poll_until("the burst alert", lambda: [
        p for p in WEBHOOK.accepted(path) if "10 matching events" in json.loads(p["body"])["Subject"]], timeout=10)
    time.sleep(1.0)
    burst = [p for p in WEBHOOK.accepted(path) if "10 matching events" in json.loads(p["body"])["Subject"]]
    assert len(burst) == 1
    assert json.loads(json.loads(burst[0]["body"])["Message"])["detail"]["errorCode"] == "AccessDenied"


# ---------------------------------------------------------------------------
# Crash safety
# ---------------------------------------------------------------------------


def test_sigkill_during_rule_processing_loses_nothing(server):
    topic, _ = new_topic(server)
    path = f"/crash-{uid()}"
    subscribe(server, topic, "http", WEBHOOK.url + path)
    name = f"Crash{uid()}"
    rule_to(server, topic, {"detail": {"eventName": [name]}})
    ids: list[str] = []
    for batch in range(6):
        ids += server.ingest_ok([make_record(eventName=name, readOnly=False) for _ in range(100)])
        if batch == 2:
            server.kill9()
    server.kill9()  # right after the last acknowledgement, before the view can catch up

    def delivered():
        got = {json.loads(json.loads(p["body"])["Message"])["detail"]["eventID"]
               for p in WEBHOOK.accepted(path)}
        return got if got >= set(ids) else None

    got = poll_until("every event's alert", delivered, timeout=60)
    assert got == set(ids)
    posts = WEBHOOK.accepted(path)
    dupes = len(posts) - len({p["headers"]["x-amz-sns-message-id"] for p in posts})
    print(f"\n600 alerts after two SIGKILLs: {len(posts)} posts, {dupes} repeated (at least once)")


# ---------------------------------------------------------------------------
# The console shows rules, delivery state and dead letters
# ---------------------------------------------------------------------------

SCENARIOS = Path(__file__).resolve().parents[1] / "console" / "scenarios.mjs"
ARTIFACTS = Path(__file__).resolve().parents[1] / "console" / "artifacts"


def test_console_shows_delivery_state_and_dead_letters(server):
    if shutil.which("node") is None:
        pytest.fail("node is not installed; the README's test command installs it", pytrace=False)
    topic, _ = new_topic(server)
    sub = subscribe(server, topic, "http", WEBHOOK.url + "/down")
    name = f"Console{uid()}"
    rule = rule_to(server, topic, {"detail": {"eventName": [name]}})
    server.ingest_ok([make_record(eventName=name, readOnly=False)])
    poll_until("a dead letter", lambda: topics_ok(
        server, "list-dead-letters", "--subscription-arn", sub)["DeadLetters"], timeout=15)
    cfg = {"url": server.url, "artifacts": str(ARTIFACTS),
           "root": {"id": FAKE_ACCESS_KEY, "secret": FAKE_SECRET_KEY},
           "deadSubscription": sub, "rule": rule}
    p = subprocess.run(["node", str(SCENARIOS), "alerts"], env=dict(os.environ, CONSOLE_CONFIG=json.dumps(cfg)),
                       capture_output=True, text=True, timeout=120, cwd=SCENARIOS.parent)
    assert p.returncode == 0, f"stdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-4000:]}"
    shown = json.loads(p.stdout.strip().splitlines()[-1])
    cells = shown["subscription"]
    assert cells[0] == topic.split(":")[-1] and cells[1] == "http" and cells[2].endswith("/down")
    assert cells[3:7] == ["0", "0", str(MAX_ATTEMPTS), "1"], cells
    assert "answered 503" in cells[8]
    assert shown["rule"][0] == rule and shown["rule"][1] == "Enabled"
    assert shown["rule"][2] == topic.split(":")[-1]
    assert any(rule in row and "answered 503" in row for row in shown["dead"])
