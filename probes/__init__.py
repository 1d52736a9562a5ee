"""probes: see ARCHITECTURE.md."""

from probes.linear import (
    ProbeResult,
    ProbeSweep,
    confidence_interval,
    fit_probes,
    fit_probes_over_seeds,
    split_examples,
)

__all__ = [
    "ProbeResult",
    "ProbeSweep",
    "confidence_interval",
    "fit_probes",
    "fit_probes_over_seeds",
    "split_examples",
]
