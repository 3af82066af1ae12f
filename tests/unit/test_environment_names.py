"""Environment names are what Docker takes as its image's repository (hakuriver/NAME): a name
Docker would refuse when the environment is committed or loaded is refused when it is made."""

from __future__ import annotations

import pytest

from hakuriver_common.environments import NULL_CONTAINER, check_environment_name


@pytest.mark.parametrize(
    "name", ["base", "py311", "cuda-12.4", "my_env", "a__b", "a--b", "a.b-c_d", "x" * 64]
)
def test_names_docker_takes_are_accepted(name: str) -> None:
    assert check_environment_name(name) is None


@pytest.mark.parametrize(
    "name",
    ["", "MyEnv", "env-", "-env", "env.", "a..b", "a___b", "a-.b", "bad name!", "x" * 65],
)
def test_names_docker_refuses_are_refused(name: str) -> None:
    problem = check_environment_name(name)
    assert problem is not None and "lowercase letters and digits" in problem


def test_the_null_container_is_reserved() -> None:
    assert "reserved" in (check_environment_name(NULL_CONTAINER) or "")
