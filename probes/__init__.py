"""probes: what the activations encode. `probes.data` builds (activation, label) datasets
from a model; `probes.linear` fits a probe per layer."""

from probes.data import IGNORE, ProbeDataset, residual_hooks, sequence_dataset, token_dataset
from probes.linear import (
    ProbeResult,
    ProbeSweep,
    confidence_interval,
    fit_probes,
    fit_probes_over_seeds,
    split_examples,
)

__all__ = [
    "IGNORE",
    "ProbeDataset",
    "residual_hooks",
    "sequence_dataset",
    "token_dataset",
    "ProbeResult",
    "ProbeSweep",
    "confidence_interval",
    "fit_probes",
    "fit_probes_over_seeds",
    "split_examples",
]
