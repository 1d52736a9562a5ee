"""What one batch of ACDC's speculative tests is (`circuits.pruning_state.PruningState.trials`):
the edges it tests and their destinations, the changes it plants in those inputs, and the
trials it returns, trial j removing edge j and the edges before it not assumed kept."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from circuits.graph import Node

Heads = slice | Tensor
"""Some heads of a block, along a head dimension: a slice (a view, no copy) when they are
consecutive, else an index tensor."""


@dataclass(frozen=True)
class Seed:
    """The tested edges' destinations and their changes of those inputs, `ablated_s - out_s`
    per edge `[batch, rows, d_model]`, in the rows each destination's input is held in
    (trial j removes edge j and those before it not assumed kept, so a destination's input
    changes in trial j by the sum of those edges' changes into it). The destinations are
    one node, or q / k / v inputs of heads of one block: the components of one stage."""

    nodes: tuple[Node, ...]
    deltas: tuple[Tensor, ...]
    kept: tuple[bool, ...]
    """Per tested edge, whether the trials after it assume it kept (its change then enters
    its own trial only)."""


def one_stage(nodes: Sequence[Node]) -> bool:
    """Whether destinations `nodes` (one per tested edge) can be tested as one batch: one
    node, or q / k / v inputs of heads of one block (they are recomputed in one stage, and
    no edge into one of them comes from a component another one feeds)."""
    first = nodes[0]
    if all(node == first for node in nodes):
        return True
    return all(node.kind == "head" and node.layer == first.layer for node in nodes)


def seed_rows(seed: Seed, part: str, heads: np.ndarray) -> list[int | None]:
    """Per tested edge, the row among `heads` (sorted) of its destination when that is a
    `part` input (q, k or v), else None."""
    return [
        int(np.searchsorted(heads, node.head)) if node.input == part else None
        for node in seed.nodes
    ]


@dataclass(frozen=True)
class Trial:
    """One tested removal: its damage and the state tensors it would write.

    Attributes:
        edge: The edge's index in `graph.edges`.
        damage: The damage of the circuit without it (and without `earlier`).
        writes: `(container, key, heads or None, value)`, applied by `commit`; each
            value has a leading dimension of trials (shared by the trials of one batch),
            of which this trial's is `slot`.
        earlier: Edges of the same batch removed before `edge` in this trial (speculated
            removals, `PruningState.trials`); committing the trial removes them too.
        slot: This trial's index along the leading dimension of the writes' values.
    """

    edge: int
    damage: float
    writes: list[tuple[dict, object, Heads | None, Tensor]]
    earlier: tuple[int, ...] = ()
    slot: int = 0


def chain_of_trials(
    edges: Sequence[int],
    assume_kept: Sequence[bool],
    damages: Sequence[float],
    writes: list[tuple[dict, object, Heads | None, Tensor]],
) -> list[Trial]:
    """The trials of one speculative batch: trial j removes `edges[j]` and the edges
    before it not assumed kept (`earlier`)."""
    trials: list[Trial] = []
    earlier: list[int] = []
    for j, edge in enumerate(edges):
        trials.append(Trial(edge, damages[j], writes, tuple(earlier), slot=j))
        if not assume_kept[j]:
            earlier.append(edge)
    return trials
