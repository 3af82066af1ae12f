"""Errors the API reports to clients, each with its gRPC status code."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

R = TypeVar("R")


class ApiError(Exception):
    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ApiError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ApiError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ApiError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(ApiError):
    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(ApiError):
    code = grpc.StatusCode.UNIMPLEMENTED


def reports_api_errors(
    method: Callable[..., Awaitable[R]],
) -> Callable[..., Awaitable[R]]:
    """Turn an ApiError raised by a unary servicer method into its gRPC status."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            return await method(self, request, context)
        except ApiError as exc:
            await context.abort(exc.code, exc.message)
            raise  # unreachable: abort raises

    return wrapper
