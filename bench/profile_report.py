"""Sum up a py-spy raw profile (``py-spy record -f raw``: one collapsed stack and its sample
count per line), as the benchmarks' HAKURIVER_BENCH_PROFILE hooks write:

    python -m bench.profile_report out.txt                 # top functions, self and inclusive
    python -m bench.profile_report out.txt --top 40 --match hakuriver_host
    python -m bench.profile_report out.txt --under _placement_loop   # only stacks through it
    python -m bench.profile_report out.txt --areas submit=Cluster.submit,store=Store._apply

Self: the innermost frame (file:line). Inclusive: each function once per sample it appears
in (``--lines``: each function and the line it was at). ``--match`` keeps inclusive rows
whose names contain the text (e.g. a package). ``--areas`` splits the samples into named
areas, each sample to the first area (in the order given) one of whose texts a frame names,
the rest to "other"; texts of one area are separated by ``|``.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        at = path.find(marker)
        if at >= 0:
            return path[at + len(marker) :] if marker != "lib/python3" else path[at:]
    return path


def parse(path: Path) -> list[tuple[list[str], int]]:
    """(frames outermost first, samples) per stack line."""
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def _function(frame: str) -> str:
    match = FRAME.match(frame)
    if match is None:
        return frame
    return f"{match['function']} ({_short(match['file'])})"


def _at(frame: str) -> str:
    match = FRAME.match(frame)
    if match is None:
        return frame
    where = _short(match["file"]) + (f":{match['line']}" if match["line"] else "")
    return f"{match['function']} ({where})"


def areas(stacks: list[tuple[list[str], int]], spec: str) -> str:
    """Each sample in the first area of ``spec`` ("name=text|text,name=text") it matches."""
    named = []
    for part in spec.split(","):
        name, _, texts = part.partition("=")
        named.append((name.strip(), [t for t in texts.split("|") if t]))
    total = sum(n for _, n in stacks) or 1
    counts: Counter[str] = Counter()
    for frames, n in stacks:
        joined = ";".join(frames)
        area = next((name for name, texts in named if any(t in joined for t in texts)), "other")
        counts[area] += n
    lines = [f"{total} samples by area:"]
    for name in [*(name for name, _ in named), "other"]:
        lines.append(f"  {counts[name] / total:6.1%}  {name}")
    return "\n".join(lines)


def summarize(
    stacks: list[tuple[list[str], int]],
    top: int,
    match: str = "",
    under: str = "",
    with_lines: bool = False,
) -> str:
    if under:
        stacks = [(frames, n) for frames, n in stacks if any(under in f for f in frames)]
    total = sum(n for _, n in stacks) or 1
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, n in stacks:
        own[_at(frames[-1])] += n
        for name in {(_at if with_lines else _function)(f) for f in frames}:
            if not match or match in name:
                inclusive[name] += n
    lines = [f"{total} samples" + (f" through {under!r}" if under else "")]
    lines.append(f"self (innermost frame), top {top}:")
    lines += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    lines.append(f"inclusive{f' (matching {match!r})' if match else ''}, top {top}:")
    lines += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", default="", help="inclusive rows naming this text only")
    parser.add_argument("--under", default="", help="only stacks with a frame naming this")
    parser.add_argument("--lines", action="store_true", help="inclusive by function and line")
    parser.add_argument("--areas", default="", help="name=text|text,name=text,...")
    args = parser.parse_args()
    stacks = parse(args.profile)
    if args.areas:
        print(areas(stacks, args.areas))
        return
    print(summarize(stacks, args.top, args.match, args.under, args.lines))


if __name__ == "__main__":
    main()
