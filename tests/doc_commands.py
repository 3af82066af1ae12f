"""The shell commands of README.md and docs/, and what each must do (tests/e2e/doc_commands.toml).

See docs/development.md, "Commands in the docs". Shared by the unit tier (every command has
its entry, every entry its command) and the e2e tier (each is run against a real cluster).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPECTATIONS = ROOT / "tests" / "e2e" / "doc_commands.toml"
SHELL = {"bash"}  # a ```sh block is a script file's text, not commands to type
# Why a block may not run in the test's one-machine cluster (docs/development.md).
NORUN_REASONS = {
    "multi-node": "needs another machine",
    "systemd": "needs systemd as PID 1",
    "gpu": "needs a GPU",
    "install": "changes the machine",
    "development": "works on a checkout, not a cluster",
    "placeholder": "a sketch with values the reader supplies",
}
KINDS = {
    "completed",
    "failed",
    "running",
    "vps",
    "array",
    "node",
    "dashboard",
    "grpc",
}
DEFAULT_FILL = {
    "TASK_ID": "completed",
    "ARRAY_ID": "array",
    "NODE": "node",
    "DASHBOARD_URL": "dashboard",
    "HOST_ADDRESS": "grpc",
}
# A fenced block without a language whose lines start so is a shell command in disguise.
COMMAND_START = re.compile(
    r"^\s*(\$ )?(hakuriver\.[a-z-]+|hakurun|curl|ssh|scp|rsync|docker|make|sudo|systemctl"
    r"|journalctl|\./scripts/|scripts/|pip|python|export)\b"
)
FENCE = re.compile(r"^(\s*)```(.*)$")


@dataclass(frozen=True)
class Command:
    file: str
    line: int
    run: str
    norun: str = ""

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Expectation:
    file: str
    run: str
    exit: int = 0
    output: str = ""
    stop_after: float | None = None
    stdin: str = ""
    before: str = ""
    after: str = ""
    fill: dict[str, str] = field(default_factory=dict)

    def kinds(self) -> dict[str, str]:
        """Each placeholder the command uses, with what it stands for."""
        wanted = {**DEFAULT_FILL, **self.fill}
        return {name: kind for name, kind in wanted.items() if _placeholder(name).search(self.run)}


def _placeholder(name: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![A-Za-z0-9_$]){re.escape(name)}(?![A-Za-z0-9])")


def fill(command: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        command = _placeholder(name).sub(value, command)
    return command


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def strip_comment(line: str) -> str:
    """The command without a trailing ``# comment`` (a ``#`` starting a word, unquoted)."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
            elif char == "\\" and quote == '"':
                continue
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


@dataclass
class Block:
    file: str
    line: int
    language: str
    attributes: dict[str, str]
    lines: list[str]


def blocks(path: Path) -> list[Block]:
    found: list[Block] = []
    current: Block | None = None
    indent = ""
    name = str(path.relative_to(ROOT))
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        fence = FENCE.match(text)
        if current is None:
            if fence:
                words = fence.group(2).split()
                language = words[0] if words else ""
                attributes = dict(w.split("=", 1) if "=" in w else (w, "") for w in words[1:])
                indent = fence.group(1)
                current = Block(name, number, language, attributes, [])
            continue
        if fence and not fence.group(2).strip():
            found.append(current)
            current = None
            continue
        current.lines.append(text.removeprefix(indent))
    return found


def indented_commands(path: Path) -> list[str]:
    """Commands in indented code blocks (four spaces after a blank line), outside fences."""
    problems: list[str] = []
    fenced = False
    previous = ""
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if FENCE.match(text):
            fenced = not fenced
        elif (
            not fenced
            and not previous.strip()
            and text.startswith("    ")
            and COMMAND_START.match(text)
        ):
            problems.append(
                f"{path.relative_to(ROOT)}:{number}: a command in an indented block "
                f"({text.strip()!r}): fence it as ```bash"
            )
            continue  # the block's next line is checked as its first was
        previous = text
    return problems


def commands(path: Path) -> tuple[list[Command], list[str]]:
    """The commands of one Markdown file, and the problems of its blocks."""
    found: list[Command] = []
    problems = indented_commands(path)
    for block in blocks(path):
        where = f"{block.file}:{block.line}"
        if block.language not in SHELL:
            disguised = [line for line in block.lines if COMMAND_START.match(line)]
            if not block.language and disguised:
                problems.append(
                    f"{where}: a block without a language holds commands "
                    f"({disguised[0].strip()!r}): fence it as ```bash"
                )
            continue
        norun = block.attributes.get("norun", "")
        unknown = set(block.attributes) - {"norun"}
        if unknown or ("norun" in block.attributes and norun not in NORUN_REASONS):
            problems.append(
                f"{where}: unknown block attributes {block.attributes}; "
                f"norun= takes one of {sorted(NORUN_REASONS)}"
            )
        pending = ""
        start = 0
        for offset, text in enumerate(block.lines, start=1):
            if not pending:
                start = block.line + offset
            line = text.strip()
            if line.endswith("\\"):
                pending += line[:-1].rstrip() + " "
                continue
            line = strip_comment(line)
            if line.endswith(("|", "&&")):  # the pipeline goes on on the next line
                pending += line + " "
                continue
            run = (pending + line).strip()
            pending = ""
            if run:
                found.append(Command(block.file, start, run, norun))
    return found, problems


def all_commands() -> tuple[list[Command], list[str]]:
    found: list[Command] = []
    problems: list[str] = []
    for path in markdown_files():
        more, wrong = commands(path)
        found += more
        problems += wrong
    return found, problems


def expectations() -> list[Expectation]:
    data = tomllib.loads(EXPECTATIONS.read_text())
    return [Expectation(**entry) for entry in data.get("command", [])]


def pair() -> tuple[list[tuple[Command, Expectation | None]], list[str]]:
    """Every command with its expectation (None for a norun block, or when it has no
    entry), in the docs' order, and what is wrong: commands without an entry, entries
    without a command, bad blocks, unknown placeholder kinds."""
    found, problems = all_commands()
    waiting: dict[tuple[str, str], list[Expectation]] = defaultdict(list)
    for expectation in expectations():
        waiting[(expectation.file, expectation.run)].append(expectation)
        bad = set(expectation.fill.values()) - KINDS
        if bad:
            problems.append(f"{EXPECTATIONS.name}: {expectation.run!r}: unknown kinds {bad}")
    paired: list[tuple[Command, Expectation | None]] = []
    for command in found:
        queue = waiting.get((command.file, command.run))
        if command.norun:
            if queue:
                problems.append(f"{command.where}: norun, yet has an entry: {command.run!r}")
                queue.pop(0)
            paired.append((command, None))
        elif queue:
            paired.append((command, queue.pop(0)))
        else:
            problems.append(f"{command.where}: no entry in {EXPECTATIONS.name}: {command.run!r}")
            paired.append((command, None))
    for (file, run), left in waiting.items():
        problems += [f"{EXPECTATIONS.name}: no command {run!r} in {file}" for _ in left]
    return paired, problems


def _toml_string(text: str) -> str:
    return f"'{text}'" if "'" not in text else json.dumps(text)


if __name__ == "__main__":
    # Entries to start from for the commands that lack one: python -m tests.doc_commands
    for command, expected in pair()[0]:
        if expected is None and not command.norun:
            print(f"\n[[command]]\nfile = {_toml_string(command.file)}")
            print(f'run = {_toml_string(command.run)}\noutput = ""')
