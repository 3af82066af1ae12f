"""The Runner's identity towards the Host: the credential it received on its first join,
kept 0600 in its state directory, else the cluster's join token from the config; and the
identity of the cluster it joined, which marks every container and process it starts.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from hakuriver_common.config import Config
from hakuriver_common.credentials import CredentialsError, read_secret, write_secret

log = logging.getLogger(__name__)
CREDENTIAL_FILE = "credential"
CLUSTER_FILE = "cluster_id"


class RunnerIdentity:
    def __init__(self, config: Config) -> None:
        state_dir = config.runner.state_dir.expanduser()
        self.path: Path = state_dir / CREDENTIAL_FILE
        self.cluster_path: Path = state_dir / CLUSTER_FILE
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
        self._check_can_keep()
        return self.join_token

    def _check_can_keep(self) -> None:
        """Before joining: a credential the Host issues but the Runner cannot store leaves
        its name taken, and every later join with the token is refused."""
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not os.access(folder, os.W_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        except OSError as exc:
            raise CredentialsError(
                f"cannot keep a credential in runner.state_dir {folder}: {exc.strerror or exc}"
            ) from None

    def keep(self, credential: str) -> None:
        """Store the credential the Host issued on joining."""
        write_secret(self.path, credential)
        log.info("joined the cluster: credential kept in %s", self.path)

    def cluster_id(self) -> str:
        """The cluster this Runner last joined ("" before its first join)."""
        try:
            return self.cluster_path.read_text().strip()
        except FileNotFoundError:
            return ""
        except OSError as exc:  # a file in the folder's place, a folder it may not read
            raise CredentialsError(
                f"cannot read runner.state_dir {self.cluster_path.parent}: {exc.strerror or exc}"
            ) from None

    def keep_cluster_id(self, cluster_id: str) -> None:
        self.cluster_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self.cluster_path.with_suffix(".tmp")
        temporary.write_text(cluster_id + "\n")
        temporary.replace(self.cluster_path)
        log.info("member of cluster %s", cluster_id)
