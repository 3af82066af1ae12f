"""Container environment names and the local images they resolve to."""

from __future__ import annotations

# The environment name that runs a command directly on the runner host, without Docker.
NULL_CONTAINER = "NULL"
IMAGE_PREFIX = "hakuriver/"
IMAGE_TAG = "base"


def image_for(name: str) -> str:
    """The local image an environment resolves to, e.g. hakuriver/base:base."""
    return f"{IMAGE_PREFIX}{name}:{IMAGE_TAG}"


def environment_of(image_tag: str) -> str | None:
    """The environment an image tag belongs to, or None for other images."""
    if image_tag.startswith(IMAGE_PREFIX) and image_tag.endswith(f":{IMAGE_TAG}"):
        return image_tag[len(IMAGE_PREFIX) : -len(IMAGE_TAG) - 1]
    return None
