"""A webhook receiver on loopback for the Host's notifier, in the test's process."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from hakuriver_host.webhooks import EVENT_ID_HEADER


class Flaky:
    """Answers 500 to the first ``failures`` POSTs of each path, then 204; records them."""

    def __init__(self, failures: dict[str, int]) -> None:
        self.seen: list[tuple[str, str, str]] = []  # (path, event id, event)
        self.bodies: list[dict[str, Any]] = []  # each POST's JSON, in order
        self.authorizations: list[str | None] = []  # each POST's Authorization, in order
        seen, bodies, left = self.seen, self.bodies, dict(failures)
        authorizations = self.authorizations

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seen.append((self.path, self.headers[EVENT_ID_HEADER], body["event"]))
                bodies.append(body)
                authorizations.append(self.headers["Authorization"])
                failing = left.get(self.path, 0) > 0
                left[self.path] = left.get(self.path, 0) - 1
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def at(self, path: str) -> list[tuple[str, str, str]]:
        return [s for s in self.seen if s[0] == path]
