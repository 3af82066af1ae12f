"""The CLI's words for a failed call: a Host it never reached, TLS that failed, and the
Host's own UNAVAILABLE answers, which are shown as they are."""

from __future__ import annotations

import pytest

from hakuriver_cli.call_error import CallError, Status
from hakuriver_cli.connection import describe_call_error

TARGET = "127.0.0.1:8000"
REFUSED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:8000: "
    "Failed to connect to remote host: Connection refused"
)


@pytest.mark.parametrize(
    ("details", "said"),
    [
        (REFUSED, f"cannot reach the host at {TARGET} (is hakuriver.host running?)"),
        ("", f"cannot reach the host at {TARGET} (is hakuriver.host running?)"),
        (
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:8000: "
            "Hostname Verification Check failed.",
            f"TLS with the host at {TARGET} failed: its certificate is not signed by "
            "tls.ca_file or does not name this address (tls.server_name)",
        ),
        (
            "Docker is not available on the Host: Error while fetching server API version: "
            "('Connection aborted.', FileNotFoundError(2, 'No such file or directory'))",
            "Docker is not available on the Host: Error while fetching server API version: "
            "('Connection aborted.', FileNotFoundError(2, 'No such file or directory')) "
            "(UNAVAILABLE)",
        ),
        (
            "runner gpu7 is not connected; try again later",
            "runner gpu7 is not connected; try again later (UNAVAILABLE)",
        ),
    ],
    ids=["refused", "no-details", "tls-name", "host-docker-down", "runner-away"],
)
def test_unavailable_is_told_apart(details: str, said: str) -> None:
    assert describe_call_error(CallError(Status.UNAVAILABLE, details), TARGET) == said
