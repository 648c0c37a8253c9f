"""Local receivers the end-to-end tests point OpenTrail at: an HTTP endpoint that records every
POST (and fails on request), a syslog receiver over TCP or TLS (RFC 6587 octet counting), and a
throwaway certificate authority for the TLS ones."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from conftest import free_port


class Webhook:
    """Records every POST.

    Failing paths: ``/down`` always answers 503; ``/flaky-N`` fails its first N posts; a path
    given to ``fail(path)`` answers 500 until ``release(path)``.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.posts: list[dict] = []
        self.seen: dict[str, int] = {}
        self.failing: set[str] = set()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with hook.lock:
                    n = hook.seen.get(self.path, 0)
                    hook.seen[self.path] = n + 1
                    status = 200
                    if self.path == "/down":
                        status = 503
                    elif self.path in hook.failing:
                        status = 500
                    elif self.path.startswith("/flaky-"):
                        status = 500 if n < int(self.path.split("-")[1]) else 200
                    hook.posts.append({
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                        "status": status,
                        "time": time.time(),
                    })
                payload = b"ok" if status == 200 else b"failing on purpose"
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, name="webhook", daemon=True).start()

    def fail(self, path: str) -> None:
        with self.lock:
            self.failing.add(path)

    def release(self, path: str) -> None:
        with self.lock:
            self.failing.discard(path)

    def posts_to(self, path: str) -> list[dict]:
        with self.lock:
            return [p for p in self.posts if p["path"] == path]

    def accepted(self, path: str) -> list[dict]:
        return [p for p in self.posts_to(path) if p["status"] == 200]

    def attempts(self, path: str) -> list[dict]:
        return self.posts_to(path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def make_cert(dirpath: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for 127.0.0.1 it signed: (CA, cert, key)."""
    ca, ca_key = dirpath / "ca.crt", dirpath / "ca.key"
    cert, key, csr = dirpath / "server.crt", dirpath / "server.key", dirpath / "server.csr"
    ext = dirpath / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                   "extendedKeyUsage=serverAuth\n")
    for cmd in (
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(ca_key), "-out", str(ca), "-subj", "/CN=OpenTrail test CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(csr), "-subj", "/CN=127.0.0.1"],
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-days", "2", "-out", str(cert), "-extfile", str(ext)],
    ):
        subprocess.run(cmd, check=True, capture_output=True)
    return ca, cert, key


class SyslogReceiver:
    """A syslog receiver (RFC 6587 octet-counted frames) over TCP, or TLS when given a
    certificate. Keeps every message; ``drop_connections()`` closes the open ones, as a
    collector restart would."""

    def __init__(self, cert: Path | None = None, key: Path | None = None) -> None:
        self.lock = threading.Lock()
        self.messages: list[bytes] = []
        self.connections: list[socket.socket] = []
        self.accepted = 0
        self.tls = None
        if cert is not None and key is not None:
            self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls.load_cert_chain(str(cert), str(key))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, name="syslog-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            conn.close()
            return
        with self.lock:
            self.connections.append(conn)
            self.accepted += 1
        buf = b""
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                buf += data
                while True:
                    space = buf.find(b" ")
                    if space <= 0:
                        break
                    length = int(buf[:space])
                    if len(buf) < space + 1 + length:
                        break
                    msg = buf[space + 1:space + 1 + length]
                    buf = buf[space + 1 + length:]
                    with self.lock:
                        self.messages.append(msg)
        except (OSError, ValueError):
            pass
        finally:
            conn.close()

    def drop_connections(self) -> None:
        with self.lock:
            conns, self.connections = self.connections, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def all(self) -> list[bytes]:
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.sock.close()
        self.drop_connections()
