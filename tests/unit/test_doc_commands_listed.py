"""The docs' shell commands and tests/e2e/doc_commands.toml agree: every command says what it
must do, every entry names a command still in the docs, and every block is fenced and marked
as docs/development.md says. (The e2e tier runs them: tests/e2e/test_doc_commands.py.)"""

from __future__ import annotations

import re
from pathlib import Path

from tests import doc_commands
from tests.doc_commands import Expectation, commands, fill, pair, strip_comment


def test_every_documented_command_has_its_entry_and_every_entry_its_command() -> None:
    paired, problems = pair()
    assert problems == []
    assert sum(expected is not None for _, expected in paired) >= 50  # the parser finds them


def _page(tmp_path: Path, text: str) -> Path:
    (tmp_path / "docs").mkdir(exist_ok=True)
    page = tmp_path / "docs" / "page.md"
    page.write_text(text)
    return page


def test_blocks_are_read_as_a_reader_types_them(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(doc_commands, "ROOT", tmp_path)
    page = _page(
        tmp_path,
        "Intro `hakuriver.task list` in prose.\n\n"
        "```bash\n"
        "# a comment line\n"
        "hakuriver.task submit -- sh -c 'echo # not a comment'   # a comment\n"
        "hakuriver.client status \\\n"
        "    TASK_ID\n"
        "```\n\n"
        "- in a list:\n\n"
        "  ```bash norun=multi-node\n"
        "  hakuriver.runner --config runner.toml\n"
        "  ```\n\n"
        "```text\nhakuriver.task list   # output, not run\n```\n",
    )
    found, problems = commands(page)
    assert problems == []
    assert [(c.line, c.run, c.norun) for c in found] == [
        (5, "hakuriver.task submit -- sh -c 'echo # not a comment'", ""),
        (6, "hakuriver.client status TASK_ID", ""),
        (13, "hakuriver.runner --config runner.toml", "multi-node"),
    ]


def test_unfenced_commands_and_unknown_marks_are_problems(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(doc_commands, "ROOT", tmp_path)
    page = _page(
        tmp_path,
        "```\nhakuriver.client nodes\n```\n\n```bash norun=someday\nhakuriver.client nodes\n```\n\n"
        "Indented:\n\n    hakuriver.task list\n",
    )
    _, problems = commands(page)
    assert [problem.split(": ", 1)[0] for problem in problems] == [
        "docs/page.md:11",
        "docs/page.md:1",
        "docs/page.md:5",
    ]
    assert "indented block" in problems[0]
    assert "without a language" in problems[1]
    assert "norun= takes one of" in problems[2]


def test_comments_and_placeholders() -> None:
    assert strip_comment("echo 'a # b' \"c # d\" # e") == "echo 'a # b' \"c # d\""
    assert strip_comment("echo a#b") == "echo a#b"
    assert strip_comment("echo $#") == "echo $#"
    line = "hakuriver.task stdout ARRAY_ID_7 && echo $TASK_ID TASK_ID MY_TASK_ID"
    assert fill(line, {"ARRAY_ID": "9", "TASK_ID": "42"}) == (
        "hakuriver.task stdout 9_7 && echo $TASK_ID 42 MY_TASK_ID"
    )
    expected = Expectation(file="f", run="hakuriver.ssh TASK_ID on NODE", fill={"TASK_ID": "vps"})
    assert expected.kinds() == {"TASK_ID": "vps", "NODE": "node"}


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a page's headings."""
    found = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
            found.add(slug)
    return found


def test_links_between_pages_lead_somewhere() -> None:
    broken = []
    for page in doc_commands.markdown_files():
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (page.parent / file).resolve() if file else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []
