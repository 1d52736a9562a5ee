"""The dashboard: `streamlit run dashboards/app.py -- --runs-dir DIR` (or `interp dashboard`).

The runs folder comes from `--runs-dir`, else the environment variable INTERP_RUNS_DIR,
else ./runs; the sidebar lets the user change it. Each page is one function taking that
folder: add a page as `dashboards/views/<name>.py` plus a `PageSpec` in `page_specs()`.
(Not `pages/`: Streamlit would run files there as old-style pages, bypassing st.navigation.)
The app only reads the run store through `interp.runs`: it never imports training code and
never runs a model.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import streamlit as st

RUNS_DIR_ENV = "INTERP_RUNS_DIR"
DEFAULT_RUNS_DIR = "runs"


@dataclass(frozen=True)
class PageSpec:
    """One page of the app.

    Attributes:
        title: Name in the navigation menu.
        url_path: The page's URL path (no slashes).
        render: Draws the page for a runs folder.
        icon: Material icon or emoji shown next to the title.
    """

    title: str
    url_path: str
    render: Callable[[Path], None]
    icon: str | None = None


def page_specs() -> list[PageSpec]:
    """The app's pages, the first one being the landing page."""
    from dashboards.views.circuits import render_circuits_page
    from dashboards.views.grokking import render_grokking_page
    from dashboards.views.heads import render_heads_page
    from dashboards.views.lens import render_lens_page
    from dashboards.views.patching import render_patching_page
    from dashboards.views.probes import render_probes_page
    from dashboards.views.runs import render_runs_page

    return [
        PageSpec("Runs", "runs", render_runs_page, icon=":material/table_chart:"),
        PageSpec("Grokking", "grokking", render_grokking_page, icon=":material/show_chart:"),
        PageSpec("Patching", "patching", render_patching_page, icon=":material/grid_on:"),
        PageSpec("Circuits", "circuits", render_circuits_page, icon=":material/hub:"),
        PageSpec("Probes", "probes", render_probes_page, icon=":material/search:"),
        PageSpec("Heads", "heads", render_heads_page, icon=":material/visibility:"),
        PageSpec("Lens", "lens", render_lens_page, icon=":material/layers:"),
    ]


def runs_dir_from(argv: Sequence[str], environ: Mapping[str, str]) -> str:
    """The runs folder named by `--runs-dir DIR` / `--runs-dir=DIR` in `argv`, else by
    INTERP_RUNS_DIR in `environ`, else "runs". Other arguments are ignored."""
    args = list(argv)
    for index, arg in enumerate(args):
        if arg == "--runs-dir" and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith("--runs-dir="):
            return arg.split("=", 1)[1]
    return environ.get(RUNS_DIR_ENV) or DEFAULT_RUNS_DIR


def sidebar_runs_dir(default: str) -> Path:
    """The sidebar's runs-folder box (starting at `default`) and a Refresh button."""
    from dashboards import loaders

    text = st.sidebar.text_input(
        "Runs folder", value=default, key="runs_dir", help="the run store to browse"
    )
    if st.sidebar.button("Refresh", help="read the run store again"):
        loaders.clear_caches()
    return Path(text.strip() or default).expanduser()


def main() -> None:
    """Build the sidebar and the navigation, then draw the chosen page."""
    st.set_page_config(page_title="interp dashboard", layout="wide")
    runs_dir = sidebar_runs_dir(runs_dir_from(sys.argv[1:], os.environ))
    pages = [
        st.Page(
            partial(spec.render, runs_dir),
            title=spec.title,
            url_path=spec.url_path,
            icon=spec.icon,
            default=index == 0,
        )
        for index, spec in enumerate(page_specs())
    ]
    st.navigation(pages).run()


def _make_importable() -> None:
    """Let `streamlit run dashboards/app.py` work from a checkout that is not pip-installed."""
    if importlib.util.find_spec("dashboards") is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


if __name__ == "__main__":
    _make_importable()
    main()
