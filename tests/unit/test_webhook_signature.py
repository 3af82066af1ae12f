"""Webhook signatures, end to end: a real Host delivers a task's failure to a receiver on
loopback, and the verification snippet of docs/monitoring.md, run as written there,
accepts the signed delivery and rejects a changed body, a wrong secret and a replay."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hakuriver_common.config import WebhookConfig
from hakuriver_common.statuses import TaskStatus
from tests.fake_runner import eventually, exit_with
from tests.unit.local_cluster import LocalCluster, local_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "monitoring.md"
SECRET = "whsec-test-0123456789abcdef"
Verify = Callable[[bytes, Any, bytes], bool]


def documented_verifier() -> tuple[Verify, dict[str, Any]]:
    """The ``verify`` function of the doc's "Verifying webhook signatures" section, and
    the namespace it runs in (so a test can move its clock)."""
    section = DOC.read_text().split("### Verifying webhook signatures", 1)[1]
    found = re.search(r"```python\n(.*?)\n```", section, re.DOTALL)
    assert found, "docs/monitoring.md lost its verification snippet"
    namespace: dict[str, Any] = {}
    exec(compile(found.group(1), str(DOC), "exec"), namespace)
    return namespace["verify"], namespace


@dataclass
class Delivery:
    path: str
    headers: Message
    body: bytes


class Receiver:
    """An HTTP server on loopback that records every POST; ``/moved`` answers its first
    request with a redirect to ``/elsewhere``."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.task_id = 0  # the task whose failure was delivered
        redirects_left = [1]
        received = self.deliveries

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(Delivery(self.path, self.headers, body))
                if self.path == "/moved" and redirects_left[0]:
                    redirects_left[0] -= 1
                    self.send_response(302)
                    self.send_header("Location", "/elsewhere")
                else:
                    self.send_response(204)
                self.end_headers()

            do_GET = do_POST

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def at(self, path: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.path == path]


@pytest.fixture
async def delivered(tmp_path: Path) -> AsyncIterator[Receiver]:
    """One failed task, reported to three webhooks of one Host: signed, unsigned, and one
    whose first answer is a redirect."""
    receiver = Receiver()
    config = local_config(tmp_path / "cluster")
    hooks = {"/signed": SECRET, "/plain": "", "/moved": SECRET}
    config.webhooks = [
        WebhookConfig(
            url=receiver.url(path), secret=secret, events=["task.failed"], retry_base_seconds=0.05
        )
        for path, secret in hooks.items()
    ]
    cluster = LocalCluster(config)
    try:
        await cluster.start_host()
        await cluster.add_runner(answer=exit_with(1))
        task = await cluster.submit()
        await cluster.wait_status(task.task_id, TaskStatus.FAILED)
        expected = {"/signed": 1, "/plain": 1, "/moved": 2}  # /moved: redirected, then retried
        await eventually(
            lambda: all(len(receiver.at(path)) >= wanted for path, wanted in expected.items()),
            what="the task.failed deliveries",
        )
        receiver.task_id = task.task_id
        yield receiver
    finally:
        await cluster.close()
        await asyncio.to_thread(receiver.server.shutdown)
        receiver.server.server_close()


async def test_a_signed_delivery_verifies_with_the_documented_snippet(
    delivered: Receiver,
) -> None:
    verify, _ = documented_verifier()
    [signed] = delivered.at("/signed")
    payload = json.loads(signed.body)
    assert payload["event"] == "task.failed"
    assert payload["task"]["task_id"] == str(delivered.task_id)
    assert signed.headers["X-HakuRiver-Event-Id"] == payload["id"]
    assert signed.headers["X-HakuRiver-Signature"].startswith("sha256=")
    assert verify(SECRET.encode(), signed.headers, signed.body)


async def test_a_changed_body_a_wrong_secret_or_a_replay_fail_verification(
    delivered: Receiver,
) -> None:
    verify, namespace = documented_verifier()
    [signed] = delivered.at("/signed")
    changed = signed.body.replace(b'"exit_code": 1', b'"exit_code": 0')
    assert changed != signed.body
    assert not verify(SECRET.encode(), signed.headers, changed)
    assert not verify(b"not-the-secret", signed.headers, signed.body)

    sent_at = int(signed.headers["X-HakuRiver-Timestamp"])
    fresh = copy.deepcopy(signed.headers)  # a replay that claims to be new
    fresh.replace_header("X-HakuRiver-Timestamp", str(sent_at + 600))
    assert not verify(SECRET.encode(), fresh, signed.body)

    namespace["time"] = SimpleNamespace(time=lambda: sent_at + 301)  # replayed 5 min later
    assert not verify(SECRET.encode(), signed.headers, signed.body)
    namespace["time"] = SimpleNamespace(time=lambda: sent_at + 299)
    assert verify(SECRET.encode(), signed.headers, signed.body)


async def test_no_secret_sends_no_signature(delivered: Receiver) -> None:
    [plain] = delivered.at("/plain")
    [signed] = delivered.at("/signed")
    assert plain.headers["X-HakuRiver-Signature"] is None
    assert plain.headers["X-HakuRiver-Timestamp"] is None
    assert plain.headers["X-HakuRiver-Event-Id"] == json.loads(plain.body)["id"]
    assert json.loads(plain.body)["id"] == json.loads(signed.body)["id"], "one id per event"


async def test_a_redirect_is_a_failed_attempt_not_followed(delivered: Receiver) -> None:
    """A signed POST must not be re-sent elsewhere (or as a GET); it is retried instead."""
    first, retry = delivered.at("/moved")[:2]
    assert delivered.at("/elsewhere") == []
    assert first.body == retry.body
    verify, _ = documented_verifier()
    assert verify(SECRET.encode(), retry.headers, retry.body)
