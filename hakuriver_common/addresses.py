"""Whether a text names a machine to dial: a DNS name or an IP address, without a scheme,
port or spaces (what a certificate can hold and a client dials)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ipaddress

# A DNS name: labels of letters, digits, '-' and '_' (some labs' host names have one),
# after "*." for a wildcard.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DNS_NAME = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*")


def _ip_address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    import ipaddress  # only when a name is checked: the tools' start-up stays light

    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _dns_name(name: str) -> bool:
    return len(name) <= 253 and _DNS_NAME.fullmatch(name) is not None


def dialable(name: str) -> bool:
    """A DNS name or an IP address: what a certificate can hold and a client dials (not
    0.0.0.0 or ::, which a server binds to listen on every address)."""
    address = _ip_address(name)
    return _dns_name(name) if address is None else not address.is_unspecified


def reachable_address_problem(address: str) -> str | None:
    """What is wrong with ``network.host_reachable_address`` (None: nothing). Accepted, a
    URL or a name with a port made every tool fail with gRPC's "Misformatted domain name",
    one with a space with a traceback, and a Runner retry for ever. An IPv6 address may be
    in brackets or not (see ``bare`` and ``with_port``); 0.0.0.0 is let through (Linux dials it as
    this machine), as it always was."""
    name = bare(address)
    if _ip_address(name) is not None or (
        name == address and not name.startswith("*.") and _dns_name(name)
    ):
        return None
    return (
        f"{address!r} is not a host name or IP address to dial (give names like "
        "river.lab.example and addresses like 10.1.0.10, without a scheme, port or spaces)"
    )


def bare(address: str) -> str:
    """``address`` without the brackets an IPv6 address may be written in: what a socket,
    TLS's name check and a certificate take (``[::1]`` is ``::1``)."""
    bracketed = address.startswith("[") and address.endswith("]") and ":" in address
    return address[1:-1] if bracketed else address


def with_port(address: str, port: int) -> str:
    """``address:port`` as a gRPC target or a URL writes it: an IPv6 address in brackets
    (``::1`` and ``[::1]`` both give ``[::1]:8000``)."""
    name = bare(address)
    return f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
