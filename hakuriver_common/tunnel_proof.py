"""The proof that a connection dialled to the Host's SSH proxy port is a Runner's, for one
tunnel: an HMAC of the Host's challenge under the tunnel's one-time secret, which reached
the Runner on its own (TLS) stream. The secret never crosses the dialled connection, and a
proof seen there is good for no other challenge."""

from __future__ import annotations

import hashlib
import hmac
import secrets


def challenge() -> str:
    return secrets.token_hex(32)


def proof(secret: str, tunnel_id: int, challenge: str) -> str:
    message = f"hakuriver-tunnel:{tunnel_id}:{challenge}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def proven(secret: str, tunnel_id: int, challenge: str, answer: str) -> bool:
    return bool(secret) and hmac.compare_digest(proof(secret, tunnel_id, challenge), answer)
