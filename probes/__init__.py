"""probes: what the activations encode. `probes.data` builds (activation, label) datasets
from a model; `probes.linear` fits a probe per layer, `probes.results` holds what it returns."""

from probes.causal import (
    Intervention,
    InterventionResult,
    LeaceEraser,
    add_along,
    intervention_effect,
    project_out,
    run_with_intervention,
    set_along,
)
from probes.controls import (
    MDLResult,
    SelectivityResult,
    control_labels,
    online_codelength,
    randomly_initialised,
    selectivity,
)
from probes.data import IGNORE, ProbeDataset, residual_hooks, sequence_dataset, token_dataset
from probes.linear import (
    fit_probes,
    fit_probes_on_split,
    fit_probes_over_seeds,
    split_examples,
)
from probes.results import ProbeResult, ProbeSweep, confidence_interval

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
    "Intervention",
    "InterventionResult",
    "LeaceEraser",
    "add_along",
    "intervention_effect",
    "project_out",
    "run_with_intervention",
    "set_along",
    "fit_probes_on_split",
    "MDLResult",
    "SelectivityResult",
    "control_labels",
    "online_codelength",
    "randomly_initialised",
    "selectivity",
]
