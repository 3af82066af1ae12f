"""The dashboard's figures, in a real headless Chromium against a real cluster. Prints;
asserts nothing.

1. Size: the built JavaScript and CSS, gzipped (what the Host sends): all of it, and what
   the first page load fetches. Design target: under 250 KB in all.
2. First render on loopback: from navigation start to the Home page showing the cluster's
   node count (signed in), cold (a new browser context each time: no cache). Baseline in
   the same run: the same browser navigating to a one-line static HTML page from a plain
   Python HTTP server on loopback. Design target: under 1 s.
3. Log line to page: a task prints a line every 100 ms; per line, the time from Docker
   receiving it (its log timestamp) to the line being painted in the task page's stdout
   viewer (stamped in the page at the next animation frame after the DOM change).
   Baseline in the same run, on the same lines: `hakuriver.task stdout --follow` printing
   them. Design target: p50 under 100 ms.
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import Browser, sync_playwright

from bench.bench_dispatch import docker_time
from hakuriver_host.web_app import DEFAULT_ASSETS
from tests.e2e.browser import CHROMIUM_ARGS, VIEWPORT, chromium_path
from tests.e2e.harness import ProcessCluster, running_cluster

RENDERS = int(os.environ.get("HAKURIVER_BENCH_RENDERS", "10"))
LINES = int(os.environ.get("HAKURIVER_BENCH_LINES", "40"))
KB = 1024

# Stamps every stdout line at the first animation frame after it reached the DOM.
WATCH_LINES = """(el) => {
  window.__arrivals = {};
  const stamp = () => {
    const now = Date.now();
    for (const line of el.textContent.split("\\n")) {
      const text = line.trim();
      if (text && !(text in window.__arrivals)) window.__arrivals[text] = now;
    }
  };
  new MutationObserver(() => requestAnimationFrame(stamp))
    .observe(el, {childList: true, subtree: true, characterData: true});
  stamp();
}"""


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


@dataclass
class Sizes:
    total_gzipped: int
    first_load_gzipped: int
    files: int


def bundle_sizes(dist: Path = DEFAULT_ASSETS) -> Sizes:
    """JS and CSS gzipped as the Host sends them; the first load is what index.html and the
    entry chunk's static imports name (pages and the terminal load later, on demand)."""
    assets = [p for p in (dist / "assets").iterdir() if p.suffix in (".js", ".css")]
    gzipped = {p.name: len(gzip.compress(p.read_bytes(), 9)) for p in assets}
    index = (dist / "index.html").read_text()
    first = set(re.findall(r"/assets/([\w.-]+\.(?:js|css))", index))
    for name in list(first):
        if name.endswith(".js"):
            text = (dist / "assets" / name).read_text()
            first |= set(re.findall(r'from"\./([\w.-]+\.js)"', text))
    return Sizes(sum(gzipped.values()), sum(gzipped[n] for n in first if n in gzipped), len(assets))


@contextlib.contextmanager
def static_page() -> Iterator[str]:
    """A one-line HTML page from a plain HTTP server on loopback: the baseline navigation."""
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "index.html").write_text("<!doctype html><p id=ready>ready</p>")

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=folder, **kwargs)  # type: ignore[arg-type]

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
        finally:
            server.shutdown()
            server.server_close()


def _render_ms(browser: Browser, url: str, ready: str, token: str = "") -> float:
    """performance.now() (ms since navigation start) when ``ready`` first holds."""
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    try:
        if token:
            context.add_init_script(f"sessionStorage.setItem('hakuriver.token', '{token}')")
        page = context.new_page()
        page.goto(url, wait_until="commit")
        # A function, not an expression: Playwright evaluates expressions with eval, which
        # the page's CSP forbids.
        handle = page.wait_for_function(f"() => ({ready}) && performance.now()", timeout=30_000)
        return float(handle.json_value())
    finally:
        context.close()


def first_render(browser: Browser, cluster: ProcessCluster, runs: int) -> tuple[float, float]:
    """Medians (ms): the dashboard's Home with data, and the static baseline page."""
    home_ready = "document.querySelector('[data-testid=nodes-online]')?.textContent.match(/\\d/)"
    ours, bare = [], []
    with static_page() as baseline_url:
        _render_ms(browser, baseline_url, "document.getElementById('ready')")
        for _ in range(runs):
            bare.append(_render_ms(browser, baseline_url, "document.getElementById('ready')"))
            ours.append(
                _render_ms(browser, cluster.dashboard_url + "/", home_ready, cluster.admin_token)
            )
    return statistics.median(ours), statistics.median(bare)


@dataclass
class LogDelays:
    page: list[float]
    cli: list[float]


def log_to_page(browser: Browser, cluster: ProcessCluster, lines: int) -> LogDelays:
    script = (
        f"sleep 2; i=0; while [ $i -lt {lines} ]; do echo line-$i; i=$((i+1)); usleep 100000; "
        "done; sleep 2"
    )
    task = cluster.submit(["sh", "-c", script])
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    context.add_init_script(f"sessionStorage.setItem('hakuriver.token', '{cluster.admin_token}')")
    cli = subprocess.Popen(
        [sys.executable, "-m", "hakuriver_cli.task", "stdout", str(task.task_id), "--follow"],
        stdout=subprocess.PIPE,
        env={**os.environ, "HAKURIVER_CONFIG": str(cluster.config_path)},
    )
    assert cli.stdout is not None
    try:
        page = context.new_page()
        page.goto(f"{cluster.dashboard_url}/tasks/{task.task_id}")
        stdout = page.get_by_test_id("stdout")
        stdout.wait_for(timeout=30_000)
        stdout.evaluate(WATCH_LINES)
        printed: dict[str, float] = {}
        while len(printed) < lines and (line := cli.stdout.readline()):
            printed[line.decode().strip()] = time.time()
        page.wait_for_function(
            f"() => Object.keys(window.__arrivals).length >= {lines}", timeout=30_000
        )
        painted = {k: v / 1000 for k, v in page.evaluate("window.__arrivals").items()}
        # Read while the task sleeps after its last line: a finished task's container goes.
        [container] = cluster.docker.containers.list(
            filters={"label": f"hakuriver.task_id={task.task_id}"}
        )
        written = _written(container)
    finally:
        cli.kill()
        cli.wait()
        context.close()
    return LogDelays(
        page=sorted(painted[k] - written[k] for k in painted if k in written),
        cli=sorted(printed[k] - written[k] for k in printed if k in written),
    )


def _written(container: object) -> dict[str, float]:
    found: dict[str, float] = {}
    logs = container.logs(stdout=True, stderr=False, timestamps=True)  # type: ignore[attr-defined]
    for raw in logs.decode().splitlines():
        stamp, _, text = raw.partition(" ")
        found[text.strip()] = docker_time(stamp)
    return found


def _percentile(values: list[float], share: float) -> float:
    return values[min(len(values) - 1, int(len(values) * share))]


def report(sizes: Sizes, render: tuple[float, float], delays: LogDelays) -> None:
    print(f"dashboard size: {sizes.files} JS/CSS files")
    print(f"  all JS+CSS gzipped        {sizes.total_gzipped / KB:7.1f} KB  (target < 250 KB)")
    print(f"  first page load, gzipped  {sizes.first_load_gzipped / KB:7.1f} KB")
    ours, bare = render
    print(f"dashboard first render (cold, {RENDERS} runs, medians)")
    print(f"  static one-line page      {bare:7.1f} ms")
    print(f"  Home with cluster data    {ours:7.1f} ms  (ratio {ours / bare:.2f}x; target < 1 s)")
    page, cli = delays.page, delays.cli
    print(f"log line to page: {len(page)} lines, container write -> painted in the task page")
    print(f"  CLI --follow   p50 {ms(statistics.median(cli))}  p90 {ms(_percentile(cli, 0.9))}")
    print(
        f"  dashboard      p50 {ms(statistics.median(page))}  p90 {ms(_percentile(page, 0.9))}"
        f"  (ratio to CLI p50 {statistics.median(page) / statistics.median(cli):.2f}x;"
        " target p50 < 100 ms)"
    )


def run(
    renders: int, lines: int, browser: Browser | None = None
) -> tuple[Sizes, tuple[float, float], LogDelays]:
    """Measure with ``browser``, or a Chromium of its own when None."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_cluster(Path(tmp), runner_count=1) as cluster,
    ):
        if browser is not None:
            return bundle_sizes(), *_measure(browser, cluster, renders, lines)
        path = chromium_path()
        if path is None:
            raise SystemExit("bench_dashboard needs chromium (apt install chromium)")
        with sync_playwright() as playwright:
            own = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
            try:
                return bundle_sizes(), *_measure(own, cluster, renders, lines)
            finally:
                own.close()


def _measure(
    browser: Browser, cluster: ProcessCluster, renders: int, lines: int
) -> tuple[tuple[float, float], LogDelays]:
    return first_render(browser, cluster, renders), log_to_page(browser, cluster, lines)


def main() -> None:
    report(*run(RENDERS, LINES))


if __name__ == "__main__":
    main()
