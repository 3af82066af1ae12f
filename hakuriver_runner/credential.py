"""The Runner's identity towards the Host: the credential it received on its first join,
kept 0600 in its state directory, else the cluster's join token from the config.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hakuriver_common.config import Config
from hakuriver_common.credentials import CredentialsError, read_secret, write_secret

log = logging.getLogger(__name__)
CREDENTIAL_FILE = "credential"


class RunnerIdentity:
    def __init__(self, config: Config) -> None:
        self.path: Path = config.runner.state_dir.expanduser() / CREDENTIAL_FILE
        self.join_token = config.auth.join_token

    def secret(self) -> str:
        """What to present: the credential if this Runner has one, else the join token."""
        if self.path.exists():
            return read_secret(self.path)
        if not self.join_token:
            raise CredentialsError(
                f"no runner credential at {self.path} and no auth.join_token in the config: "
                "copy the Host's join token into the config to join"
            )
        return self.join_token

    def keep(self, credential: str) -> None:
        """Store the credential the Host issued on joining."""
        write_secret(self.path, credential)
        log.info("joined the cluster: credential kept in %s", self.path)
