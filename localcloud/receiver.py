"""A webhook receiver on 127.0.0.1 for `sdq demo` and the tests: scripted answers, every request recorded and
its Standard Webhooks signature verified with the tenant's secret."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    answered: int | str
    verified: bool

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ScriptedReceiver:
    """Answers requests with ``script`` in order (an int status, ``"hang"`` for 12 s of silence, or
    ``"redirect"`` for a 302 to a loopback URL), then with ``default``; a status other than 2xx carries
    ``retry_after`` as its ``Retry-After`` header when set."""

    secret: str | None = None
    script: list[int | str] = field(default_factory=list)
    default: int = 200
    retry_after: str | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks"

    def start(self) -> ScriptedReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    answer: int | str = receiver.script.pop(0) if receiver.script else receiver.default
                    receiver.deliveries.append(Delivery(headers, body, answer, receiver.verify(body, headers)))
                if answer == "hang":
                    time.sleep(12)
                    answer = 200
                if answer == "redirect":
                    self.send_response(302)
                    self.send_header("Location", "http://127.0.0.1:9/internal")
                    self.end_headers()
                    return
                assert isinstance(answer, int)
                self.send_response(answer)
                if receiver.retry_after is not None and not 200 <= answer < 300:
                    self.send_header("retry-after", receiver.retry_after)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}')

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def verify(self, body: bytes, headers: dict[str, str]) -> bool:
        if not self.secret:
            return False
        try:
            Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError:
            return False
        return True

    def by_job(self, job_id: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if job_id in d.webhook_id]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
