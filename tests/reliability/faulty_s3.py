"""A fault-injecting HTTP proxy in front of the moto S3 server, on 127.0.0.1.

`FaultyProxy(upstream)` forwards every request to `upstream` unchanged, unless told to
misbehave: `fail_next(n)` answers the next n requests with HTTP 500 (S3's InternalError
body, which botocore retries), `fail_always()` answers every request so, `fail_after(n)`
lets n requests through and then fails every later one (an endpoint that dies mid-upload),
`delay(seconds)` sleeps before forwarding (a slow endpoint), and `stop()` closes the port
(an endpoint that is down). `requests` and `failed` count what it saw. Bounded: it only
ever talks to `upstream`, itself on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_ERROR = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
          b"<Message>injected fault</Message></Error>")
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
        "proxy-authorization", "proxy-authenticate"}


class FaultyProxy:
    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.requests = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._fail_budget = 0
        self._pass_budget: int | None = None
        self._always = False
        self._delay = 0.0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                body = self._body()
                if proxy._should_fail():
                    self.send_response(500)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_ERROR)))
                    self.end_headers()
                    if self.command != "HEAD":  # a HEAD answer has no body
                        self.wfile.write(_ERROR)
                    return
                if proxy._delay:
                    time.sleep(proxy._delay)
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                if body or self.command in ("PUT", "POST"):
                    headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
                    headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                head = self.command == "HEAD"  # its Content-Length is the object's size
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP and (head or k.lower() != "content-length"):
                        self.send_header(k, v)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            def _body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    parts = []  # HTTP/1.1 chunked upload (aiobotocore streams so)
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _should_fail(self) -> bool:
        with self._lock:
            self.requests += 1
            fail = self._always or self._fail_budget > 0
            if not fail and self._pass_budget is not None:
                if self._pass_budget > 0:
                    self._pass_budget -= 1
                else:
                    fail = True
            if self._fail_budget > 0:
                self._fail_budget -= 1
            self.failed += fail
            return fail

    # -- modes
    def heal(self) -> None:
        with self._lock:
            self._fail_budget, self._pass_budget, self._always, self._delay = 0, None, False, 0.0

    def fail_next(self, n: int) -> None:
        with self._lock:
            self._fail_budget = n

    def fail_always(self) -> None:
        with self._lock:
            self._always = True

    def fail_after(self, n: int) -> None:
        with self._lock:
            self._pass_budget = n

    def delay(self, seconds: float) -> None:
        self._delay = seconds

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
