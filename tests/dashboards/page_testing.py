"""Helpers of the dashboard page tests: open a page of the app in `AppTest`, read the plotly
charts it drew (decoding plotly's packed arrays), copy a run folder."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[2] / "dashboards" / "app.py"
TIMEOUT_S = 60


def open_page(runs_dir: Path, url_path: str) -> AppTest:
    """The app on page `url_path` reading the store at `runs_dir` (set in the sidebar box).
    `AppTest.switch_page` only opens pages backed by a file and the app's pages are
    callables, so the hash st.navigation registered for `url_path` is asked for directly,
    the way the browser does."""
    app = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    app.session_state["runs_dir"] = str(runs_dir)
    app.run()
    hashes = [h for h, p in app._registered_pages.items() if p.get("url_pathname") == url_path]
    assert len(hashes) == 1, app._registered_pages
    app._page_hash = hashes[0]
    return app.run()


def array(value: Any) -> np.ndarray:
    """A figure's array as sent to the browser: a list, or plotly's typed-array encoding
    {"dtype": ..., "bdata": base64, "shape": "rows, columns"}."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = value.get("shape")
        return flat.reshape([int(n) for n in str(shape).split(",")]) if shape else flat
    return np.asarray(value)


def plain(value: Any) -> Any:
    """A chart spec with every typed array decoded to (nested) lists."""
    if isinstance(value, dict) and {"dtype", "bdata"} <= set(value):
        return array(value).tolist()
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def chart_specs(app: AppTest) -> list[dict[str, Any]]:
    """The JSON specs of the page's plotly charts, in page order (arrays still packed)."""
    return [json.loads(chart.proto.spec) for chart in app.get("plotly_chart")]


def figures(app: AppTest) -> list[go.Figure]:
    """The page's plotly charts as figures, in page order."""
    return [go.Figure(plain(spec)) for spec in chart_specs(app)]


def figures_by_title(app: AppTest) -> dict[str, go.Figure]:
    """The page's plotly charts by title."""
    return {figure.layout.title.text: figure for figure in figures(app)}


def copy_run(run_dir: Path, run_id: str) -> Path:
    """A copy of a run folder next to it, started long ago (so the original stays the
    newest run)."""
    copy = run_dir.parent / run_id
    shutil.copytree(run_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["started"] = "2001-01-01T00:00:00Z"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def assert_renders_without_torch(page: str, runs_dir: Path) -> None:
    """Draw `dashboards.views.<page>`'s page over `runs_dir` in a fresh interpreter and
    fail if that imported torch (pages read the run store without it)."""
    code = (
        "import sys; from pathlib import Path; "
        f"from dashboards.views.{page} import render_{page}_page; "
        f"render_{page}_page(Path({str(runs_dir)!r})); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True)
