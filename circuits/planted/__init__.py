"""Planted circuits: small transformers built by hand whose circuit is known by construction.

Circuit discovery (ACDC, Conmy et al. 2023; EAP, Syed et al. 2023; EAP-IG, Hanna et al.
2024) is judged against a ground truth, and on trained models there is none. Here every
weight is set by hand, in the spirit of the compiled models of Tracr (Lindner et al. 2023)
but smaller and with distractors: each component reads and writes its own named subspace
of the residual stream (no LayerNorm, so the stream is an exact sum), so which edge of
`ComputationalGraph.from_model(model)` carries the behaviour on a batch follows from the
weights. Distractor heads and MLPs do real work on other prompts but nothing on the
batch's metric (they are silent on it, or write only logits other than the answer and the
wrong token), so a discovery method that finds them has made a mistake.

The ground truth is for resample ablation and the batch's metric (mean logit difference):
`edges` are exactly the edges whose ablation moves the metric. Edges that the mechanism
reads but that carry the same signal on clean and corrupted prompts (positional
embeddings, constant features, the slots of a fixed template) are invisible to resample
ablation; they are listed in `invariant_edges`, and `edges | invariant_edges` is the
circuit under zero ablation (there, though, removing a distractor's own positional edge
from the full model can move the metric: a zeroed query makes a head attend everywhere).
Under mean ablation the same `edges` hold on the default batches, as measured, but not by
construction: a distractor's batch-mean output may touch another example's answer.
`tests/circuits/test_planted.py` verifies all this by exact edge patching
(`circuits.edge_patching`).

Distractors are built to be exactly orthogonal to the metric on the batch, so every
non-circuit edge has an attribution score of (nearly) zero: ranking by |EAP| separates
circuit from non-circuit edges perfectly here, even though EAP underestimates the edges
through saturated attention by orders of magnitude (their first-order effect is tiny).

Modules: `base` holds `PlantedCircuit` and the building blocks; one module per model:

- `induction`: a previous-token head K-composing with an induction head (Olsson et al.
  2022, "In-context Learning and Induction Heads"; Elhage et al. 2021, "A Mathematical
  Framework for Transformer Circuits").
- `copy_suppress`: a three-layer indirect-object circuit in miniature (Wang et al. 2022,
  "Interpretability in the Wild"): a duplicate-token head, a suppression head that writes
  minus the duplicated name to the logits (the negative copying of copy suppression,
  McDougall et al. 2023, "Copy Suppression") and tells, by Q-composition, a name mover
  which name not to copy.
- `mlp_and`: two heads move two tokens to the last position, where ReLU neurons compute
  their AND (a lookup table of pairs) and write the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch

from circuits.planted.base import PlantedCircuit
from circuits.planted.copy_suppress import copy_suppress
from circuits.planted.induction import induction
from circuits.planted.mlp_and import mlp_and

__all__ = ["PLANTED", "PlantedCircuit", "copy_suppress", "induction", "mlp_and", "planted"]

PLANTED: Mapping[str, Callable[..., PlantedCircuit]] = MappingProxyType(
    {"induction": induction, "copy_suppress": copy_suppress, "mlp_and": mlp_and}
)
"""Every planted circuit by name; each builds a fresh model and batch when called
(keywords `n_examples`, `seed`, `device`)."""


def planted(name: str, device: str | torch.device = "cpu") -> PlantedCircuit:
    """The planted circuit called `name` (see `PLANTED`), its model and batch on `device`."""
    if name not in PLANTED:
        raise ValueError(f"no planted circuit {name!r}; choose from {sorted(PLANTED)}")
    return PLANTED[name](device=device)
