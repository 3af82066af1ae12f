"""ReplacedImages: a replaced environment image goes once nothing holds it; Docker going away
during that clean-up keeps it for the next time rather than fail the load or commit that
came before (it let requests' ConnectionError out)."""

from __future__ import annotations

from typing import Any

import docker.errors
import requests

from hakuriver_common.environments import ReplacedImages


class _Images:
    """Docker's images as the clean-up sees them: away (the daemon gone) or in use."""

    def __init__(self) -> None:
        self.present = {"old"}
        self.away = False
        self.in_use = False

    def get(self, image_id: str) -> Any:
        if self.away:
            raise requests.exceptions.ConnectionError("Connection aborted.")
        if image_id not in self.present:
            raise docker.errors.ImageNotFound(image_id)
        return type("Image", (), {"tags": []})()

    def remove(self, image_id: str) -> None:
        if self.in_use:
            raise docker.errors.APIError("409", explanation="image is being used")
        self.present.discard(image_id)


class _Client:
    def __init__(self) -> None:
        self.images = _Images()


def test_an_image_is_kept_while_docker_is_away_and_removed_once_it_is_back() -> None:
    client, replaced = _Client(), ReplacedImages()
    client.images.away = True
    replaced.drop(client, "old")  # no exception: the load before it succeeded
    assert client.images.present == {"old"}
    client.images.away = False
    replaced.drop(client, None)
    assert client.images.present == set()


def test_an_image_in_use_is_removed_at_a_later_replacement() -> None:
    client, replaced = _Client(), ReplacedImages()
    client.images.in_use = True
    replaced.drop(client, "old")
    assert client.images.present == {"old"}
    client.images.in_use = False
    replaced.drop(client, None)
    assert client.images.present == set()
