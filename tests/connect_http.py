"""The dashboard's API as curl would call it: Connect protocol JSON over HTTP(S).

Blocking (urllib): an in-process test calls it from a thread (``asyncio.to_thread``), since
the Host serving it runs on the test's event loop.
"""

from __future__ import annotations

import json
import ssl
import struct
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

END_STREAM_FLAG = 0x02


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Endpoint:
    """The dashboard at ``base`` (e.g. https://127.0.0.1:8003), trusting ``ca_file``."""

    base: str
    ca_file: Path | None = None

    def _context(self) -> ssl.SSLContext | None:
        if not self.base.startswith("https:"):
            return None
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)

    def request(
        self,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        method: str | None = None,
    ) -> Reply:
        request = urllib.request.Request(
            self.base + path, data=body, headers=headers or {}, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=10, context=self._context()) as answer:
                return Reply(answer.status, dict(answer.headers), answer.read())
        except urllib.error.HTTPError as refused:
            return Reply(refused.code, dict(refused.headers), refused.read())

    def call(self, method: str, message: dict[str, Any], token: str | None) -> Reply:
        """A unary call, e.g. ``call("hakuriver.v1.TaskService/GetTask", {"taskId": "1"}, t)``."""
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.request(f"/{method}", json.dumps(message).encode(), headers)

    def stream(
        self,
        method: str,
        message: dict[str, Any],
        token: str | None,
        limit: int,
        timeout_ms: int | None = None,
    ) -> tuple[list[Any], Any]:
        """A server-streaming call: up to ``limit`` messages, and the end-of-stream JSON
        (``{}`` on success, ``{"error": ...}`` otherwise; None if ``limit`` came first);
        ``timeout_ms`` is sent as its Connect-Timeout-Ms."""
        headers = {"Content-Type": "application/connect+json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if timeout_ms is not None:
            headers["Connect-Timeout-Ms"] = str(timeout_ms)
        payload = json.dumps(message).encode()
        request = urllib.request.Request(
            f"{self.base}/{method}",
            data=struct.pack(">BI", 0, len(payload)) + payload,
            headers=headers,
        )
        messages: list[Any] = []
        with urllib.request.urlopen(request, timeout=10, context=self._context()) as answer:
            for flags, data in _envelopes(answer):
                if flags & END_STREAM_FLAG:
                    return messages, json.loads(data)
                messages.append(json.loads(data))
                if len(messages) >= limit:
                    return messages, None
        raise AssertionError("the stream ended without its end-of-stream message")


def _envelopes(answer: Any) -> Iterator[tuple[int, bytes]]:
    while header := answer.read(5):
        flags, size = struct.unpack(">BI", header)
        yield flags, answer.read(size)
