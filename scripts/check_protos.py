"""Fail when the committed generated code differs from what the protos generate."""

from __future__ import annotations

import filecmp
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Python (messages, gRPC, Connect, mypy stubs), the dashboard's and the Node.js example
# client's TypeScript.
GENERATED = (
    Path("hakuriver_common/proto"),
    Path("hakuriver_host/dashboard/src/gen"),
    Path("examples/node-client/src/gen"),
)


def buf() -> str:
    candidate = Path(sys.executable).parent / "buf"
    return str(candidate) if candidate.exists() else "buf"


def differences(left: Path, right: Path) -> list[str]:
    cmp = filecmp.dircmp(left, right, ignore=["__pycache__"])
    found = [f"only in committed: {n}" for n in cmp.left_only]
    found += [f"only in generated: {n}" for n in cmp.right_only]
    found += [f"differs: {n}" for n in cmp.diff_files]
    for sub in cmp.common_dirs:
        found += differences(left / sub, right / sub)
    return found


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([buf(), "generate", "-o", tmp], cwd=ROOT, check=True)
        problems = [
            f"{folder}: {problem}"
            for folder in GENERATED
            for problem in differences(ROOT / folder, Path(tmp) / folder)
        ]
    if problems:
        print("generated code is out of date with protos/ (run `make protos`):", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
