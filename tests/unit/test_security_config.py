"""The Host refuses plaintext and unauthenticated set-ups, and a short join token, unless
every port they concern binds a loopback address: the gRPC port and the dashboard's are
checked each."""

from __future__ import annotations

from pathlib import Path

import pytest

from hakuriver_host.server import SecurityConfigError, check_security
from tests.unit.local_cluster import local_config


@pytest.mark.parametrize(
    ("sections", "refusal"),
    [
        ({"dashboard": {"bind_ip": "0.0.0.0", "plaintext": True}}, "plain-HTTP dashboard"),
        ({"dashboard": {"bind_ip": "0.0.0.0"}, "auth": {"authentication": False}}, "0.0.0.0"),
        ({"network": {"host_bind_ip": "0.0.0.0"}, "tls": {"plaintext": True}}, "tls.plaintext"),
        ({"network": {"host_bind_ip": "0.0.0.0"}, "auth": {"authentication": False}}, "auth"),
        # Anyone reaching the port could guess it, join as a node and be given users' tasks.
        (
            {"network": {"host_bind_ip": "0.0.0.0"}, "auth": {"join_token": "changeme"}},
            "auth.join_token has 8 characters: one that can be guessed lets anyone who reaches "
            "0.0.0.0 join as a Runner",
        ),
    ],
)
def test_an_open_port_refuses_what_loopback_allows(
    tmp_path: Path, sections: dict[str, dict[str, object]], refusal: str
) -> None:
    with pytest.raises(SecurityConfigError, match=refusal):
        check_security(local_config(tmp_path, **sections))  # type: ignore[arg-type]


def test_loopback_allows_plaintext_and_open_set_ups(tmp_path: Path) -> None:
    config = local_config(tmp_path, dashboard={"plaintext": True}, auth={"authentication": False})
    check_security(config)
    disabled = local_config(
        tmp_path,
        dashboard={"enabled": False, "bind_ip": "0.0.0.0", "plaintext": True},
    )
    check_security(disabled)
    check_security(local_config(tmp_path, auth={"join_token": "changeme"}))
    made = "hkrj_" + "x" * 43  # as long as hakuriver.init config's
    lan = {"host_bind_ip": "0.0.0.0"}
    check_security(local_config(tmp_path, network=lan, auth={"join_token": made}))
