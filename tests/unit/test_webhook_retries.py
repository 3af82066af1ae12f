"""Webhook deliveries are retried: a receiver that fails twice gets the event on the third
attempt (the same event id each time); one that always fails gets exactly ``max_attempts``
and the Host logs that it gave up; the worker goes on with the next event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import threading
from collections.abc import AsyncIterator, Iterator

import pytest

from hakuriver_common.config import WebhookConfig
from hakuriver_host import webhooks
from hakuriver_host.webhooks import Notifier
from tests.fake_runner import eventually
from tests.webhook_receiver import Flaky


@pytest.fixture
def flaky() -> Iterator[Flaky]:
    server = Flaky({"/twice": 2, "/always": 99, "/always/too": 99})
    yield server
    server.close()


@contextlib.asynccontextmanager
async def _node_offline_then_online(
    configs: list[WebhookConfig], caplog: pytest.LogCaptureFixture
) -> AsyncIterator[None]:
    """A Notifier of ``configs``, told that a node went offline and then online, its warnings
    captured; stopped after the block."""
    notifier = Notifier(configs)
    notifier.start()
    try:
        with caplog.at_level(logging.WARNING, logger="hakuriver_host.webhooks"):
            notifier.notify("node.offline", node="gpu1")
            notifier.notify("node.online", node="gpu1")
            yield
    finally:
        await notifier.stop()


async def test_failed_deliveries_are_retried_then_given_up(
    flaky: Flaky, caplog: pytest.LogCaptureFixture
) -> None:
    configs = [
        WebhookConfig(url=flaky.url(path), events=["*"], max_attempts=3, retry_base_seconds=0.01)
        for path in ("/twice", "/always")
    ]
    async with _node_offline_then_online(configs, caplog):
        await eventually(
            lambda: len(flaky.at("/twice")) == 4 and len(flaky.at("/always")) == 6,
            what="every attempt of both events",
        )
        await asyncio.sleep(0.1)  # nothing more comes
    twice = flaky.at("/twice")
    assert [event for _, _, event in twice] == ["node.offline"] * 3 + ["node.online"]
    assert len({event_id for _, event_id, _ in twice[:3]}) == 1  # one event, three attempts
    assert [event for _, _, event in flaky.at("/always")] == ["node.offline"] * 3 + [
        "node.online"
    ] * 3
    gave_up = [r.getMessage() for r in caplog.records if "giving up" in r.getMessage()]
    # Named by place, host and port: a webhook's path may be its secret.
    where = f"webhook webhooks.1 (http://127.0.0.1:{flaky.server.server_port}/...): "
    assert len(gave_up) == 2 and all(m.startswith(where) for m in gave_up), gave_up
    assert all("3 attempts" in m and "/always" not in m for m in gave_up), gave_up


async def test_a_receiver_that_never_answers_holds_no_thread_the_host_waits_for() -> None:
    # A firewall that drops packets, a receiver that hangs: each attempt blocks for
    # timeout_seconds. On threads of the loop's executor, those waited for the Host's exit
    # (asyncio.run joins them; SIGKILL under systemd's stop timeout) and, with a few such
    # receivers, took every thread the Host's other work runs on.
    silent = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
    before = set(threading.enumerate())
    notifier = Notifier([WebhookConfig(url=url, events=["*"], timeout_seconds=5)])
    notifier.start()
    try:
        notifier.notify("node.offline", node="gpu1")
        await eventually(lambda: set(threading.enumerate()) - before, what="a delivery")
        await notifier.stop()
        waited_for = [t for t in set(threading.enumerate()) - before if not t.daemon]
        assert waited_for == []
    finally:
        silent.close()


def _body(request: bytes) -> bytes | None:
    """The body of an HTTP request read so far, once it is all there (by Content-Length)."""
    head, blank, body = request.partition(b"\r\n\r\n")
    if not blank:
        return None
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    assert length, head
    return body if len(body) >= int(length[1]) else None


class Trickling:
    """Answers each POST with a long body sent a byte at a time, each byte well within
    the read timeout, so no single read ever times out; records the events."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self.listener.accept()
                threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            request = b""
            while (body := _body(request)) is None:
                if not (more := connection.recv(65536)):
                    return  # the attempt was cut before its request was all sent
                request += more
            self.events.append(json.loads(body)["event"])
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
            while not self.closed.wait(0.05):
                connection.sendall(b".")

    def close(self) -> None:
        self.closed.set()
        self.listener.close()


async def test_timeout_seconds_bounds_an_attempt_whose_answer_trickles(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Each byte came within the timeout, so urllib never timed out: the attempt, and with it
    # the webhook's every later event, waited until the receiver stopped sending.
    receiver = Trickling()
    config = WebhookConfig(url=receiver.url, events=["*"], timeout_seconds=0.5, max_attempts=1)
    try:
        async with _node_offline_then_online([config], caplog):
            await eventually(
                lambda: receiver.events == ["node.offline", "node.online"],
                what="the second event, after the first attempt timed out",
            )
    finally:
        receiver.close()
    gave_up = [r.getMessage() for r in caplog.records if "giving up" in r.getMessage()]
    assert gave_up and "after 1 attempts: no answer within 0.5s" in gave_up[0]
    assert "giving up on node.offline " in gave_up[0]


def _attempt_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "hakuriver-webhook"}


async def test_a_timed_out_attempt_leaves_no_thread_reading_a_trickling_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The worker moved on after timeout_seconds, but the attempt's thread read on for as long
    # as the receiver trickled: one thread per attempt, several per event with retries.
    receiver = Trickling()
    before = _attempt_threads()
    config = WebhookConfig(
        url=receiver.url, events=["*"], timeout_seconds=0.3, max_attempts=2, retry_base_seconds=0.01
    )
    notifier = Notifier([config])
    notifier.start()
    try:
        with caplog.at_level(logging.WARNING, logger="hakuriver_host.webhooks"):
            notifier.notify("node.offline", node="gpu1")
            await eventually(
                lambda: any("giving up" in r.getMessage() for r in caplog.records),
                what="the webhook giving up",
            )
        # Each attempt's request reaches the receiver, however late its thread reads it.
        await eventually(
            lambda: receiver.events == ["node.offline"] * 2, what="both attempts received"
        )
        await eventually(
            lambda: not _attempt_threads() - before, within=1.0, what="no attempt thread left"
        )
    finally:
        await notifier.stop()
        receiver.close()


async def test_a_receiver_is_named_by_its_host_and_port_as_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An IPv6 receiver was logged as `http://::1:8080/...`, which reads as host `::1:8080`."""
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]  # closed again: every attempt is refused
    url = f"http://ops:pw@[::1]:{port}/secret"
    configs = [WebhookConfig(url=url, events=["node.offline"], max_attempts=1)]
    async with _node_offline_then_online(configs, caplog):
        await eventually(
            lambda: any("giving up" in r.getMessage() for r in caplog.records),
            what="the webhook to give up",
        )
    [named] = [r.getMessage().split(": ")[0] for r in caplog.records]
    assert named == f"webhook webhooks.0 (http://[::1]:{port}/...)"


async def test_receivers_on_one_host_are_told_apart_by_their_place(
    flaky: Flaky, caplog: pytest.LogCaptureFixture
) -> None:
    """Two chat channels' webhooks (one host, secret paths) were logged alike: the Host said
    one gave up, not which, nor which event was lost."""
    configs = [
        WebhookConfig(url=flaky.url(path), events=["node.offline"], max_attempts=1)
        for path in ("/always", "/always/too")
    ]
    async with _node_offline_then_online(configs, caplog):
        await eventually(
            lambda: len([r for r in caplog.records if "giving up" in r.getMessage()]) == 2,
            what="both webhooks to give up",
        )
    [event_id] = {event_id for _, event_id, _ in flaky.seen}
    host = f"http://127.0.0.1:{flaky.server.server_port}/..."
    assert sorted(r.getMessage().split(" after ")[0] for r in caplog.records) == [
        f"webhook webhooks.{place} ({host}): giving up on node.offline {event_id}"
        for place in (0, 1)
    ]


async def test_events_dropped_while_a_receiver_is_down_are_logged_once_with_a_count(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full queue wrote a warning for every event it dropped: a job array failing while
    the receiver was down wrote thousands of lines."""
    monkeypatch.setattr(webhooks, "QUEUE_SIZE", 2)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: every attempt is refused
    # The first event waits a minute for its retry: the queue behind it fills.
    config = WebhookConfig(url=f"http://127.0.0.1:{port}/x", events=["*"], retry_base_seconds=60)
    notifier = Notifier([config])
    notifier.start()
    with caplog.at_level(logging.WARNING, logger="hakuriver_host.webhooks"):
        for _ in range(50):
            notifier.notify("node.offline", node="gpu1")
            await asyncio.sleep(0)
        await notifier.stop()
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 2, dropped  # the first at once, then one line with the count
    assert "more like it" in dropped[1]
