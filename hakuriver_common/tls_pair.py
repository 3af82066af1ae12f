"""Whether a private key and a certificate can serve TLS together, checked with the standard
library's ``ssl`` (OpenSSL), which the Host loads anyway: ``cryptography`` (~8 MB of RSS)
stays with the tools that make certificates.

gRPC, given a bad pair, failed to listen and the Host said "address in use or not
available"; this says which file is wrong instead.
"""

from __future__ import annotations

import ssl
from pathlib import Path

# OpenSSL's reasons for a key that is not the certificate's: another key of the same type, or
# a key of another type (it is set beside the certificate, which then has no key).
_NOT_THE_KEY = {"KEY_VALUES_MISMATCH", "KEY_TYPE_MISMATCH", "NO_CERTIFICATE_ASSIGNED"}


class _Encrypted(Exception):
    """OpenSSL asked for the key's passphrase: raised from its callback, so no terminal is
    ever prompted."""


def _no_passphrase() -> str:
    raise _Encrypted


def pair_problem(key_file: Path, cert_file: Path, key_name: str, cert_name: str) -> str | None:
    """What keeps ``key_file`` and ``cert_file`` (named ``key_name`` and ``cert_name`` in the
    answer) from serving TLS together; None when they are a pair."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_verify_locations(cafile=cert_file)
    except ssl.SSLError:
        return f"{cert_name} is not a PEM certificate (hakuriver.init tls makes one)"
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_passphrase)
    except _Encrypted:
        return f"{key_name} is encrypted with a passphrase, which the Host cannot give"
    except ssl.SSLError as exc:
        if exc.reason in _NOT_THE_KEY:
            return (
                f"{key_name} is not the key of {cert_name}: give the pair hakuriver.init tls wrote"
            )
        return f"{key_name} is not a PEM private key (hakuriver.init tls makes one)"
    return None
