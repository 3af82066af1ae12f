"""``make chaos``: every fault at full scale (more tasks, the real 5 s and 60 s cuts against
a 30 s grace period), then a table of outcomes. Exits 1 if any guarantee broke.

``python -m tests.chaos [ID ...]`` runs only the scenarios named (ids as in the table's
test names, e.g. cut-60s-drop); ``--short`` at the normal suite's scale.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

from tests.chaos.checks import Outcome, table
from tests.chaos.scenarios import FULL, SHORT, scenarios
from tests.chaos.system import docker_healthy, dockerd_restart_problem, tmpfs_problem

# No scenario may run longer than this (each of its waits is bounded well below it).
SCENARIO_LIMIT = 600


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos")
    parser.add_argument("ids", nargs="*", help="scenarios to run (default: all)")
    parser.add_argument("--short", action="store_true", help="the normal suite's scale")
    args = parser.parse_args()
    scale = SHORT if args.short else FULL
    chosen = [s for s in scenarios(scale) if not args.ids or s.id in args.ids]
    if not docker_healthy():
        print("no Docker daemon answers: run scripts/ensure-docker.sh", file=sys.stderr)
        return 2
    outcomes: list[Outcome] = []
    began = time.monotonic()
    for scenario in chosen:
        problem = {"root-tmpfs": tmpfs_problem, "dockerd": dockerd_restart_problem}.get(
            scenario.needs, lambda: None
        )()
        if problem:
            outcome = Outcome(scenario.id, problems=[f"cannot run: {problem}"])
        else:
            print(f"==> {scenario.id}", flush=True)
            with tempfile.TemporaryDirectory(prefix=f"chaos-{scenario.id}-") as tmp:
                started = time.monotonic()
                try:
                    outcome = scenario.run(Path(tmp), scale)
                except Exception:
                    outcome = Outcome(scenario.id, problems=[traceback.format_exc()])
                    outcome.duration = time.monotonic() - started
                if outcome.duration > SCENARIO_LIMIT:
                    outcome.problems.append(f"took {outcome.duration:.0f}s > {SCENARIO_LIMIT}s")
        print(outcome.report(), flush=True)
        outcomes.append(outcome)
    print()
    print(f"chaos ({scale.name}): {len(outcomes)} faults in {time.monotonic() - began:.0f}s")
    print(table(outcomes))
    broken = [o.fault for o in outcomes if not o.ok]
    if broken:
        print(f"\nBROKEN: {', '.join(broken)}")
        return 1
    print("\nevery guarantee held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
