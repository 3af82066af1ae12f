"""A call the Host refused or could not answer, the same whichever transport carried it.

The tools catch this one error: the gRPC link (grpc_link.py) and the Connect link
(connect_link.py) each turn their own failures into it. Status names are gRPC's; Connect's
``canceled`` is CANCELLED.
"""

from __future__ import annotations

from enum import Enum


class Status(Enum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class CallError(Exception):
    """``problem``: when the transport already knows what went wrong in words (a TLS
    mismatch, a Host that is not there), the sentence to show instead of the details."""

    def __init__(self, status: Status, details: str, problem: str = "") -> None:
        super().__init__(f"{details} ({status.name})")
        self.status = status
        self.details = details
        self.problem = problem


# How gRPC's C core ("CERTIFICATE_VERIFY_FAILED", "Peer name ... is not in peer
# certificate") and Python's ssl ("certificate verify failed: ...") word a certificate that
# failed verification; not the word alone, which the Host's own answers may carry (Docker's
# "x509: certificate ..." in an environment error).
_UNTRUSTED = ("certificate_verify_failed", "certificate verify failed", "not in peer certificate")


def untrusted_certificate(details: str) -> bool:
    """The Host's certificate failed verification (not signed by tls.ca_file, or not naming
    the address dialled), as gRPC's C core and Python's ssl word it: asking again cannot
    help until the config or the Host's certificate changes."""
    lowered = details.lower()
    return any(words in lowered for words in _UNTRUSTED)
