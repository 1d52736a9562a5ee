"""Plotly figures built from saved results: one function per figure, one module per kind
of result (`curves`, `grokking`, `patching`, `direct_effects`, `circuits`, `probes`,
`heads`, `lens`).

Every function takes what a run saved (DataFrames, arrays) and returns a `go.Figure`; the
dashboard pages and scripts both call them. Nothing here imports torch, so drawing a
figure never loads a model.
"""

from dashboards.figures.curves import metric_curves

__all__ = ["metric_curves"]
