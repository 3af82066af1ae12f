"""Webhook notifications: task final statuses, node offline/online and drained/undrained,
POSTed as JSON.

``notify`` never blocks: events go to a bounded queue (the oldest is dropped, with a
warning, if a receiver is down for long). One worker per webhook delivers in order, each
attempt on a daemon thread of its own, retrying up to ``max_attempts`` (tenacity): the
n-th retry waits ``retry_base_seconds * 2**(n-1)`` plus up to ``retry_base_seconds`` at
random, so many Hosts (or webhooks) failing together do not retry in step; never more than
MAX_RETRY_SECONDS. An attempt whose ``timeout_seconds`` is up (or that the Host's stop
cancels) has its connection shut down, so its thread ends then too.

With a ``secret`` every request is signed, GitHub/Stripe style, so a receiver can tell a
delivery from this Host from a forged or replayed one: ``X-HakuRiver-Signature:
sha256=<hex HMAC-SHA256, key secret, of b"<X-HakuRiver-Timestamp>." + body>``. The
timestamp is taken per attempt (a receiver rejects old ones); the event id is the same on
every attempt and every receiver (a receiver drops repeats).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import http.client
import json
import logging
import socket
import threading
import time
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any

from hakuriver_common.config import WebhookConfig
from hakuriver_common.daemon_threads import on_daemon_thread
from hakuriver_host.log_limits import LimitedLog

log = logging.getLogger(__name__)
QUEUE_SIZE = 10_000
MAX_RETRY_SECONDS = 300.0
TIMESTAMP_HEADER = "X-HakuRiver-Timestamp"
SIGNATURE_HEADER = "X-HakuRiver-Signature"
EVENT_ID_HEADER = "X-HakuRiver-Event-Id"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The X-HakuRiver-Signature value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def shown(url: str, place: int) -> str:
    """A webhook as logged: its place in the config and its scheme, host and port, never its
    path, query or user (a Slack, Teams or Discord webhook's path is its secret). The place
    tells apart receivers on one host (two chat channels' webhooks), logged alike without it."""
    parts = urllib.parse.urlsplit(url)
    return f"webhooks.{place} ({parts.scheme}://{parts.netloc.rpartition('@')[2]}/...)"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is a failed attempt, as documented: a POST must not turn into a GET
    elsewhere, nor a signed delivery go to another address."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Cut:
    """An attempt's connection, shut down from the worker when the attempt's time is up:
    urllib's timeout bounds each read, not the request, so a receiver trickling its answer
    kept the attempt's thread reading for as long as it trickled (one thread per attempt)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._over = False

    def connected(self, sock: socket.socket) -> None:
        """Under the lock, so that a socket connected as the time runs out is shut down too."""
        with self._lock:
            self._sockets.append(sock)
            if self._over:
                _shut(sock)

    def over(self) -> None:
        with self._lock:
            self._over = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    """Wakes a read blocked on ``sock`` in another thread (closing it would not)."""
    with contextlib.suppress(OSError):  # closed already: the attempt was over
        sock.shutdown(socket.SHUT_RDWR)


class _HTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, cut: _Cut, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cut = cut

    def connect(self) -> None:
        super().connect()
        self.cut.connected(self.sock)  # TLS-wrapped by then, for https


class _HTTPSConnection(_HTTPConnection, http.client.HTTPSConnection):
    pass


class _CutHandler(urllib.request.AbstractHTTPHandler):
    """urllib's handler, but its connections (http, https, through a proxy) go to the cut."""

    def __init__(self, cut: _Cut) -> None:
        super().__init__()
        self.cut = cut

    def do_open(self, http_class: Any, req: urllib.request.Request, **kwargs: Any) -> Any:
        ours = (
            _HTTPSConnection
            if issubclass(http_class, http.client.HTTPSConnection)
            else _HTTPConnection
        )
        return super().do_open(functools.partial(ours, cut=self.cut), req, **kwargs)


class _CutHTTPHandler(_CutHandler, urllib.request.HTTPHandler):
    pass


class _CutHTTPSHandler(_CutHandler, urllib.request.HTTPSHandler):
    pass


def _without_user(url: str) -> tuple[str, str]:
    """The URL without its user and password, and the Authorization header they make ("" if
    none): urllib took ``user:password@host`` for a host name, so every delivery to such a
    URL failed with "Name or service not known"."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, ""
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
    bare = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    return urllib.parse.urlunsplit(bare), f"Basic {credentials}"


class Webhook:
    def __init__(self, config: WebhookConfig, place: int) -> None:
        self.config = config
        self.shown = shown(config.url, place)
        self.events = set(config.events)
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self._url, self._authorization = _without_user(config.url)

    def wants(self, event: str) -> bool:
        return event in self.events or "*" in self.events

    def _post(self, payload: dict[str, Any], cut: _Cut) -> None:
        body = json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "hakuriver",
            EVENT_ID_HEADER: payload["id"],
        }
        if self._authorization:
            headers["Authorization"] = self._authorization
        if self.config.secret:
            timestamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = signature(self.config.secret, timestamp, body)
        request = urllib.request.Request(self._url, data=body, headers=headers)
        opener = urllib.request.build_opener(
            _NoRedirect, _CutHTTPHandler(cut), _CutHTTPSHandler(cut)
        )
        with opener.open(request, timeout=self.config.timeout_seconds) as response:
            response.read()

    async def run(self) -> None:
        while True:
            await self._deliver(await self.queue.get())

    async def _attempt(self, payload: dict[str, Any]) -> None:
        """One POST, over after ``timeout_seconds`` whatever the receiver does: urllib's
        timeout bounds each read, not the request, so a receiver trickling its answer held
        this webhook's worker (and every later event) for as long as it trickled."""
        cut = _Cut()
        post = on_daemon_thread(self._post, payload, cut, name="hakuriver-webhook")
        try:
            await asyncio.wait_for(post, self.config.timeout_seconds)
        except TimeoutError:
            raise TimeoutError(f"no answer within {self.config.timeout_seconds:g}s") from None
        finally:
            cut.over()

    async def _deliver(self, payload: dict[str, Any]) -> None:
        # Here, not with the module: a Host without webhooks never loads tenacity.
        from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential_jitter

        base = self.config.retry_base_seconds
        attempts = AsyncRetrying(
            stop=stop_after_attempt(self.config.max_attempts),
            wait=wait_exponential_jitter(multiplier=base, jitter=base, max=MAX_RETRY_SECONDS),
            reraise=True,
        )
        try:
            async for attempt in attempts:
                with attempt:
                    await self._attempt(payload)
        except Exception as exc:  # one bad delivery must not end the worker
            log.warning(
                "webhook %s: giving up on %s %s after %d attempts: %s",
                self.shown,
                payload["event"],
                payload["id"],
                self.config.max_attempts,
                exc,
            )


class Notifier:
    def __init__(self, configs: list[WebhookConfig]) -> None:
        self.hooks = [Webhook(c, place) for place, c in enumerate(configs)]
        self._workers: list[asyncio.Task[None]] = []
        # A line per receiver a minute, with a count: while a receiver is down, a burst of
        # events (a job array failing) wrote a warning for every event dropped.
        self._dropped = LimitedLog(log)

    def start(self) -> None:
        self._workers = [asyncio.create_task(hook.run()) for hook in self.hooks]

    async def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._dropped.close()

    def notify(self, event: str, **details: Any) -> None:
        if not self.hooks:
            return
        payload = {
            "event": event,
            "id": str(uuid.uuid4()),
            # Milliseconds always, as documented: isoformat() gave microseconds, and none at
            # all on a whole second, which a parser of the documented layout refused.
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            **details,
        }
        for hook in self.hooks:
            if not hook.wants(event):
                continue
            if hook.queue.full():
                hook.queue.get_nowait()
                self._dropped.log(
                    hook.shown,
                    logging.WARNING,
                    "webhook %s: %d events waiting, the oldest dropped",
                    hook.shown,
                    hook.queue.maxsize,
                )
            hook.queue.put_nowait(payload)
