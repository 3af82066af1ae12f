"""Webhook notifications: task final statuses and node offline/online, POSTed as JSON.

``notify`` never blocks: events go to a bounded queue (the oldest is dropped, with a
warning, if a receiver is down for long). One worker per webhook delivers in order, in a
thread, retrying with exponential backoff up to ``max_attempts``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from datetime import UTC, datetime
from typing import Any

from hakuriver_common.config import WebhookConfig

log = logging.getLogger(__name__)
QUEUE_SIZE = 10_000


class Webhook:
    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self.events = set(config.events)
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)

    def wants(self, event: str) -> bool:
        return event in self.events or "*" in self.events

    def _post(self, payload: dict[str, Any]) -> None:
        request = urllib.request.Request(
            self.config.url,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", "User-Agent": "hakuriver"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.config.timeout_seconds) as response:
            response.read()

    async def run(self) -> None:
        while True:
            payload = await self.queue.get()
            for attempt in range(1, self.config.max_attempts + 1):
                try:
                    await asyncio.to_thread(self._post, payload)
                    break
                except Exception as exc:  # one bad delivery must not end the worker
                    if attempt == self.config.max_attempts:
                        log.warning(
                            "webhook %s: giving up on %s after %d attempts: %s",
                            self.config.url,
                            payload["event"],
                            attempt,
                            exc,
                        )
                        break
                    await asyncio.sleep(self.config.retry_base_seconds * 2 ** (attempt - 1))


class Notifier:
    def __init__(self, configs: list[WebhookConfig]) -> None:
        self.hooks = [Webhook(c) for c in configs]
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._workers = [asyncio.create_task(hook.run()) for hook in self.hooks]

    async def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    def notify(self, event: str, **details: Any) -> None:
        payload = {"event": event, "at": datetime.now(UTC).isoformat(), **details}
        for hook in self.hooks:
            if not hook.wants(event):
                continue
            if hook.queue.full():
                dropped = hook.queue.get_nowait()
                log.warning("webhook %s: queue full, dropped %s", hook.config.url, dropped["event"])
            hook.queue.put_nowait(payload)
