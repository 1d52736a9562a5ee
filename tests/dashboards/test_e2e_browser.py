"""End-to-end test of the dashboard in a real headless browser (issue 8).

`interp dashboard` serves the app on 127.0.0.1 over a run store made by `make demo`'s
quickstart suite (`interp run experiments/quickstart.yaml`, ~4 min on 2 cores; point the
environment variable INTERP_E2E_RUNS at an existing store to reuse one instead). Debian's
Chromium (/usr/bin/chromium, or INTERP_E2E_CHROMIUM), driven by Playwright, opens every page
of `dashboards.app.page_specs()` (the first one, the default page, at the root URL), waits
until Streamlit has finished running the page, checks that the page drew its heading and no
exception, error box or "Page not found" dialog, and saves a full-page screenshot to
tests_artifacts/e2e/<url_path>.png (or to $INTERP_E2E_ARTIFACTS).

The test skips, with one line naming what is missing, only where Chromium or the Python
package playwright is absent; `make test` installs Chromium where it can (Debian, as root).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashboards.app import PageSpec, page_specs

QUICKSTART_TIMEOUT_S = 2400
pytestmark = [pytest.mark.slow, pytest.mark.timeout(QUICKSTART_TIMEOUT_S + 600)]

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
CHROMIUM_ENV = "INTERP_E2E_CHROMIUM"
RUNS_ENV = "INTERP_E2E_RUNS"
ARTIFACTS_ENV = "INTERP_E2E_ARTIFACTS"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
"""Flags for Chromium on a machine with no screen and no network beyond loopback."""
VIEWPORT = {"width": 1400, "height": 1000}
MAX_SCREENSHOT_HEIGHT = 8000
SERVER_START_TIMEOUT_S = 90
PAGE_TIMEOUT_MS = 120_000
ERROR_SELECTORS = (
    '[data-testid="stException"]',
    '[data-testid="stAlertContentError"]',
    '[data-testid="stErrorElementStack"]',
)
"""An uncaught exception's box, an `st.error` box, an element that failed to draw."""
SCRIPT_DONE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
"""Streamlit sets this attribute on its root once a script run has finished."""
PAGES = page_specs()


def chromium_path() -> str:
    """The Chromium to drive: $INTERP_E2E_CHROMIUM, else Debian's /usr/bin/chromium."""
    return os.environ.get(CHROMIUM_ENV) or DEFAULT_CHROMIUM


def missing_browser_parts() -> list[str]:
    """What the test needs but this machine lacks (empty when it can run)."""
    missing = []
    if not os.access(chromium_path(), os.X_OK):
        missing.append(
            f"no Chromium at {chromium_path()} (apt-get install chromium, or set {CHROMIUM_ENV})"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("no Python package playwright (pip install -e '.[dev]')")
    return missing


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def artifacts_dir() -> Path:
    """Where the screenshots go: $INTERP_E2E_ARTIFACTS, else tests_artifacts/e2e/."""
    folder = Path(os.environ.get(ARTIFACTS_ENV) or REPO / "tests_artifacts" / "e2e")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser_parts() -> None:
    """Skip the module, naming what is missing, where Chromium or playwright is absent."""
    missing = missing_browser_parts()
    if missing:
        pytest.skip("dashboard browser test skipped: " + "; ".join(missing))


@pytest.fixture(scope="module")
def demo_runs(browser_parts: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run store made by the quickstart suite, or the existing one at $INTERP_E2E_RUNS."""
    given = os.environ.get(RUNS_ENV)
    if given:
        if not Path(given).is_dir():
            raise ValueError(f"{RUNS_ENV}={given!r} is not an existing run store folder")
        return Path(given).resolve()
    runs = tmp_path_factory.mktemp("e2e") / "runs"
    done = subprocess.run(
        [sys.executable, "-m", "interp.cli", "run", "experiments/quickstart.yaml",
         "--runs-dir", str(runs), "--no-progress"],
        cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
        timeout=QUICKSTART_TIMEOUT_S,
    )
    if done.returncode != 0:
        pytest.fail(f"the quickstart suite failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return runs


def wait_until_healthy(server: subprocess.Popen[str], url: str, log: Path) -> None:
    """Poll Streamlit's health endpoint until it answers "ok"; fail if the server dies."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the dashboard exited with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                if answer.read().decode().strip() == "ok":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the dashboard did not answer within {SERVER_START_TIMEOUT_S} s: "
                f"{log.read_text()[-2000:]}")


def stop(server: subprocess.Popen[str]) -> None:
    """End the server and the streamlit process it started (one process group)."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=15)


@pytest.fixture(scope="module")
def dashboard(demo_runs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`interp dashboard` on 127.0.0.1 and a free port over the demo store; its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("dashboard") / "server.log"
    env = {**os.environ, "STREAMLIT_SERVER_FILE_WATCHER_TYPE": "none", "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "interp.cli", "dashboard", "--runs-dir", str(demo_runs),
             "--host", HOST, "--port", str(port)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
    try:
        url = f"http://{HOST}:{port}"
        wait_until_healthy(server, url, log)
        yield url
    finally:
        stop(server)


@pytest.fixture(scope="module")
def browser_context(dashboard: str) -> Iterator[Any]:
    """A Playwright context of Debian's Chromium with a new, empty user-data-dir."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="interp-e2e-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=chromium_path(), args=list(CHROMIUM_FLAGS),
                headless=True, viewport=VIEWPORT,
            )
            context.set_default_timeout(PAGE_TIMEOUT_MS)
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on `port`, from /proc/net/tcp{,6}
    (hex as the kernel writes them, e.g. "0100007F" for 127.0.0.1)."""
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                addresses.add(address)
    return addresses


def test_dashboard_listens_on_loopback_only(dashboard: str) -> None:
    port = int(dashboard.rsplit(":", 1)[1])
    if Path("/proc/net/tcp").exists():
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing else
    # 127.0.0.2 is loopback too: a server bound to every address would answer there.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        assert sock.connect_ex(("127.0.0.2", port)) != 0


def page_path(spec: PageSpec) -> str:
    """The URL path of a page: the app's first page is its default, served at the root
    (Streamlit ignores a default page's `url_path`, and answers it with "Page not found")."""
    return "/" if spec is PAGES[0] else f"/{spec.url_path}"


def wait_for_page(page: Any, spec: PageSpec) -> None:
    """Wait until the script run is over, the page's heading shows and charts are drawn."""
    page.wait_for_selector(SCRIPT_DONE)
    page.get_by_role("heading", name=spec.title).first.wait_for(state="visible")
    page.wait_for_function(
        """() => document.querySelectorAll('[data-testid="stSkeleton"]').length === 0
              && [...document.querySelectorAll('[data-testid="stPlotlyChart"]')]
                   .every(chart => chart.querySelector('.main-svg'))"""
    )
    page.wait_for_selector(SCRIPT_DONE)


def save_screenshot(page: Any, path: Path) -> None:
    """A screenshot of the whole page: Streamlit scrolls inside its main block, so the
    viewport is first made as tall as that block's content."""
    height = page.evaluate(
        """() => Math.max(...[...document.querySelectorAll(
               '[data-testid="stMain"], [data-testid="stSidebarContent"]')]
             .map(element => element.scrollHeight))"""
    )
    tall = min(max(int(height), VIEWPORT["height"]), MAX_SCREENSHOT_HEIGHT)
    page.set_viewport_size({"width": VIEWPORT["width"], "height": tall})
    page.wait_for_timeout(500)  # let charts resize to the new viewport
    page.screenshot(path=str(path), full_page=True)


def test_runs_page_counts_every_run_of_the_store(
    browser_context: Any, dashboard: str, demo_runs: Path
) -> None:
    from interp.runs import RunStore

    n_runs = len(RunStore(demo_runs).runs())
    assert n_runs > 0
    page = browser_context.new_page()
    try:
        page.goto(dashboard + page_path(next(s for s in PAGES if s.url_path == "runs")))
        page.wait_for_selector(SCRIPT_DONE)
        page.get_by_text(re.compile(rf"\b{n_runs} of {n_runs} runs\b")).wait_for(state="visible")
    finally:
        page.close()


@pytest.mark.parametrize("spec", PAGES, ids=[spec.url_path for spec in PAGES])
def test_page_opens_without_errors(browser_context: Any, dashboard: str, spec: PageSpec) -> None:
    page = browser_context.new_page()
    uncaught: list[str] = []
    page.on("pageerror", lambda error: uncaught.append(str(error)))
    try:
        page.goto(dashboard + page_path(spec))
        wait_for_page(page, spec)
        save_screenshot(page, artifacts_dir() / f"{spec.url_path}.png")
        errors = {
            selector: page.locator(selector).all_inner_texts() for selector in ERROR_SELECTORS
        }
        assert not any(errors.values()), f"{spec.title} page shows errors: {errors}"
        assert page.locator('[data-testid="stDialog"]').count() == 0  # e.g. "Page not found"
        assert page.url == dashboard + page_path(spec), page.url  # it was not redirected
        assert not uncaught, f"{spec.title} page raised in the browser: {uncaught}"
    finally:
        page.close()
