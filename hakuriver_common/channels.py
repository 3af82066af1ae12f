"""Channels to the Host: TLS against the cluster's CA (unless the config says plaintext) and
the caller's secret on every call as ``authorization: Bearer <secret>``.

The secret travels as plain call metadata added by an interceptor, not as gRPC call
credentials: those run a plugin per call that costs about a third of a small RPC's
throughput, and the channel is TLS (or loopback plaintext) either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from hakuriver_common.client_config import ClientConfig, ca_file

Options = Sequence[tuple[str, Any]]


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    """The call metadata carrying ``secret``."""
    return (("authorization", f"Bearer {secret}"),)


def channel_credentials(config: ClientConfig) -> grpc.ChannelCredentials | None:
    """TLS credentials trusting the cluster's CA; None when the config says plaintext."""
    if config.tls.plaintext:
        return None
    return grpc.ssl_channel_credentials(ca_file(config).read_bytes())


# For a reader that asked the Host to keep it near the end of a task's output
# (ReadLogRequest.max_lag_bytes): no growth of the receive window by bandwidth probing, so
# output waits on the Host, which skips it ahead, not megabytes deep in this client's buffer.
NEAR_THE_END: Options = (("grpc.http2.bdp_probe", 0),)


def _options(config: ClientConfig, options: Options) -> list[tuple[str, Any]]:
    found = list(options)
    if config.tls.server_name and not config.tls.plaintext:
        found.append(("grpc.ssl_target_name_override", config.tls.server_name))
    return found


def _with_metadata(details: Any, metadata: tuple[tuple[str, str], ...]) -> Any:
    return details._replace(metadata=(*(details.metadata or ()), *metadata))


class _SyncBearer(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, secret: str) -> None:
        self.metadata = bearer(secret)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_with_metadata(details, self.metadata), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_with_metadata(details, self.metadata), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(_with_metadata(details, self.metadata), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(_with_metadata(details, self.metadata), requests)


def open_channel(config: ClientConfig, secret: str, options: Options = ()) -> grpc.Channel:
    """A blocking channel to the Host sending ``secret`` with every call."""
    credentials = channel_credentials(config)
    found = _options(config, options)
    if credentials is None:
        channel = grpc.insecure_channel(config.host_target, options=found)
    else:
        channel = grpc.secure_channel(config.host_target, credentials, options=found)
    return grpc.intercept_channel(channel, _SyncBearer(secret))


class _AioUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_metadata(details, self.metadata), request)


class _AioUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_metadata(details, self.metadata), request)


class _AioStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_with_metadata(details, self.metadata), requests)


class _AioStreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_with_metadata(details, self.metadata), requests)


def open_aio_channel(
    config: ClientConfig, secret: str | None = None, options: Options = ()
) -> grpc.aio.Channel:
    """An asyncio channel to the Host; with ``secret``, sent with every call (else the
    caller passes metadata itself, as the Runner's one stream does)."""
    credentials = channel_credentials(config)
    found = _options(config, options)
    interceptors: list[Any] | None = None
    if secret is not None:
        metadata = bearer(secret)
        interceptors = [
            _AioUnaryUnary(metadata),
            _AioUnaryStream(metadata),
            _AioStreamUnary(metadata),
            _AioStreamStream(metadata),
        ]
    if credentials is None:
        return grpc.aio.insecure_channel(
            config.host_target, options=found, interceptors=interceptors
        )
    return grpc.aio.secure_channel(
        config.host_target, credentials, options=found, interceptors=interceptors
    )
