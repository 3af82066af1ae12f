"""One-time tickets for the SSH proxy port: issued through the authenticated API to a VPS's
owner, redeemed once on the raw port, within their lifetime (timing.ssh_ticket_seconds).

The proxy port itself authenticates nobody; a ticket stands for the API call that
checked who may reach which VPS. A ticket is 256 random bits, kept in memory only (a Host
restart drops them; clients ask again). A holder has at most MAX_PER_HOLDER unused at once
(asking for more drops their oldest): a client asking in a loop costs the Host a bounded
map, each ticket issued in constant time.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta

from hakuriver_host.errors import Unauthenticated
from hakuriver_host.identity import Principal
from hakuriver_host.models import utcnow

# Unused tickets one holder may have at once (``hakuriver.ssh`` takes one per connection).
MAX_PER_HOLDER = 64


@dataclass(frozen=True)
class Ticket:
    task_id: int
    who: Principal
    expires: float


class SshTickets:
    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        # In the order issued, so in the order they expire (one lifetime for all).
        self._tickets: dict[str, Ticket] = {}
        # Each holder's tickets, oldest first (some may be redeemed or expired since).
        self._held: dict[Principal, deque[str]] = {}

    def issue(self, task_id: int, who: Principal) -> tuple[str, datetime]:
        now = time.monotonic()
        self._expire(now)
        held = self._held.setdefault(who, deque())
        if len(held) >= MAX_PER_HOLDER:
            held = self._held[who] = deque(s for s in held if s in self._tickets)
        while len(held) >= MAX_PER_HOLDER:
            self._tickets.pop(held.popleft(), None)
        secret = secrets.token_urlsafe(32)
        self._tickets[secret] = Ticket(task_id, who, now + self.lifetime)
        held.append(secret)
        return secret, utcnow() + timedelta(seconds=self.lifetime)

    def _expire(self, now: float) -> None:
        """Drop the tickets past their life: the oldest first, stopping at a live one."""
        while self._tickets:
            secret, ticket = next(iter(self._tickets.items()))
            if ticket.expires > now:
                return
            del self._tickets[secret]
            held = self._held.get(ticket.who)
            while held and held[0] not in self._tickets:  # expired or redeemed
                held.popleft()
            if held is not None and not held:
                del self._held[ticket.who]

    def redeem(self, secret: str) -> Ticket:
        """The ticket's task and holder; it cannot be used again."""
        ticket = self._tickets.pop(secret, None)
        if ticket is None or ticket.expires <= time.monotonic():
            raise Unauthenticated("unknown, used or expired ticket (ask for a new one)")
        return ticket
