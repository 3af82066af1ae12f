"""TLS material for test clusters: one CA and Host certificate per test process.

Made with the same code as ``hakuriver.init tls``, in a temporary folder removed at exit.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hakuriver_common.certificates import TlsFiles, issue_host_certificate, make_ca


@functools.cache
def tls_files() -> TlsFiles:
    folder = Path(tempfile.mkdtemp(prefix="hakuriver-test-tls-"))
    atexit.register(shutil.rmtree, folder, True)
    files = TlsFiles.in_folder(folder)
    make_ca(files)
    issue_host_certificate(files, ["127.0.0.1"])
    return files


def tls_section() -> dict[str, Any]:
    """The [tls] config section of a Host (and its clients) using the test CA."""
    files = tls_files()
    return {
        "plaintext": False,
        "ca_file": files.ca_cert,
        "cert_file": files.host_cert,
        "key_file": files.host_key,
    }
