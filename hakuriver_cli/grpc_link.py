"""Calls to the Host over a gRPC channel, failures raised as CallError.

The transport for the calls the Connect link cannot carry (client and bidirectional
streams) and for a Host whose dashboard is off or not reachable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from hakuriver_cli.call_error import CallError, Status
from hakuriver_cli.link import proto_module


def translated(exc: grpc.RpcError) -> CallError:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
    return CallError(Status[code.name] if code is not None else Status.UNKNOWN, details)


class Stream:
    """A stream of responses; ``cancel`` ends it early."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except grpc.RpcError as exc:
            raise translated(exc) from None

    def cancel(self) -> None:
        self._call.cancel()


class _Stub:
    def __init__(self, stub: Any) -> None:
        self._stub = stub

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._stub, name)

        def call(request: Any, timeout: float | None = None) -> Any:
            try:
                result = method(request, timeout=timeout)
            except grpc.RpcError as exc:
                raise translated(exc) from None
            return Stream(result) if hasattr(result, "__next__") else result

        return call


class GrpcLink:
    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel

    def stub(self, service: str) -> Any:
        import importlib

        module = importlib.import_module(proto_module(service, "_pb2_grpc"))
        return _Stub(getattr(module, f"{service}Stub")(self.channel))

    def close(self) -> None:
        self.channel.close()
