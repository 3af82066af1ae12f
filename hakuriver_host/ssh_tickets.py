"""One-time tickets for the SSH proxy port: issued through the authenticated API to a VPS's
owner, redeemed once on the raw port, within TICKET_SECONDS.

The proxy port itself authenticates nobody; a ticket stands for the API call that
checked who may reach which VPS. A ticket is 256 random bits, kept in memory only (a Host
restart drops them; clients ask again).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from hakuriver_host.errors import Unauthenticated
from hakuriver_host.identity import Principal
from hakuriver_host.models import utcnow

TICKET_SECONDS = 30.0


@dataclass(frozen=True)
class Ticket:
    task_id: int
    who: Principal
    expires: float


class SshTickets:
    def __init__(self, lifetime: float = TICKET_SECONDS) -> None:
        self.lifetime = lifetime
        self._tickets: dict[str, Ticket] = {}

    def issue(self, task_id: int, who: Principal) -> tuple[str, datetime]:
        now = time.monotonic()
        self._tickets = {k: t for k, t in self._tickets.items() if t.expires > now}
        secret = secrets.token_urlsafe(32)
        self._tickets[secret] = Ticket(task_id, who, now + self.lifetime)
        return secret, utcnow() + timedelta(seconds=self.lifetime)

    def redeem(self, secret: str) -> Ticket:
        """The ticket's task and holder; it cannot be used again."""
        ticket = self._tickets.pop(secret, None)
        if ticket is None or ticket.expires <= time.monotonic():
            raise Unauthenticated("unknown, used or expired ticket (ask for a new one)")
        return ticket
