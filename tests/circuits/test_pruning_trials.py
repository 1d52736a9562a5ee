"""Tests for circuits.pruning_trials: the bookkeeping of one batch of speculative tests."""

from __future__ import annotations

import numpy as np
import torch

from circuits.graph import Node
from circuits.pruning_trials import Seed, chain_of_trials, one_stage, seed_rows


def test_a_trial_removes_its_edge_and_the_earlier_ones_not_assumed_kept() -> None:
    trials = chain_of_trials([7, 3, 9, 4], [False, True, False, True], [0.1, 0.2, 0.3, 0.4], [])
    assert [trial.edge for trial in trials] == [7, 3, 9, 4]
    assert [trial.earlier for trial in trials] == [(), (7,), (7,), (7, 9)]
    assert [trial.slot for trial in trials] == [0, 1, 2, 3]
    assert [trial.damage for trial in trials] == [0.1, 0.2, 0.3, 0.4]


def test_one_stage_is_one_destination_or_heads_of_one_block() -> None:
    q0, k1 = Node("head", 1, 0, "q"), Node("head", 1, 1, "k")
    assert one_stage([q0, q0]) and one_stage([q0, k1, q0])
    assert one_stage([Node("logits", 2)] * 3)
    assert not one_stage([q0, Node("head", 0, 0, "q")])  # two blocks
    assert not one_stage([q0, Node("mlp", 1)])  # heads and the MLP: two stages
    assert not one_stage([Node("mlp", 1), Node("logits", 2)])


def test_seed_rows_place_each_edge_among_the_recomputed_heads() -> None:
    nodes = (Node("head", 1, 3, "v"), Node("head", 1, 0, "q"), Node("head", 1, 3, "q"))
    seed = Seed(nodes, tuple(torch.zeros(1) for _ in nodes), (False, False, True))
    heads = np.array([0, 2, 3])
    assert seed_rows(seed, "q", heads) == [None, 0, 2]
    assert seed_rows(seed, "v", heads) == [2, None, None]
    assert seed_rows(seed, "k", heads) == [None, None, None]
