"""Tests for circuits.planted: each planted ground truth is verified by exact edge patching,
not asserted. For every model: the circuit alone keeps the full model's metric, each of its
edges is needed, no other edge moves the metric, the distractors do work on other prompts,
and EAP ranks the circuit's edges above the rest."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
import torch
from torch import Tensor

from circuits.eap import edge_attribution
from circuits.edge_patching import EdgePatcher
from circuits.planted import PLANTED, PlantedCircuit, planted
from interp.metrics import logit_diff, mean_metric

METRIC = mean_metric(logit_diff)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny forward passes run far faster on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=sorted(PLANTED))
def case(request: pytest.FixtureRequest) -> PlantedCircuit:
    return planted(request.param)


@pytest.fixture(scope="module")
def patcher(case: PlantedCircuit) -> EdgePatcher:
    return EdgePatcher(case.model)


def mask_of(patcher: EdgePatcher, edges: set[str] | frozenset[str]) -> Tensor:
    """1 on `edges`, 0 elsewhere, `[n_edges]`."""
    mask = torch.zeros(patcher.n_edges)
    for name in edges:
        mask[patcher.graph.edge_index[name]] = 1.0
    return mask


def toggled(mask: Tensor, patcher: EdgePatcher, edges: list[str]) -> Tensor:
    """One copy of `mask` per edge in `edges`, with that edge flipped: `[len(edges), n]`."""
    rows = mask.repeat(len(edges), 1)
    for row, name in enumerate(edges):
        column = patcher.graph.edge_index[name]
        rows[row, column] = 1.0 - rows[row, column]
    return rows


def full_and_empty(
    case: PlantedCircuit, patcher: EdgePatcher, ablation: str = "resample"
) -> tuple[float, float]:
    masks = torch.stack([torch.ones(patcher.n_edges), torch.zeros(patcher.n_edges)])
    full, empty = patcher.evaluate(case.batch, masks, METRIC, ablation=ablation).tolist()
    return full, empty


def faithfulness(values: Tensor, full: float, empty: float) -> Tensor:
    """(m(C) - m(empty)) / (m(full) - m(empty)) of each value."""
    return (values - empty) / (full - empty)


def complement(case: PlantedCircuit, patcher: EdgePatcher) -> list[str]:
    return [edge.name for edge in patcher.graph.edges if edge.name not in case.edges]


def roc_auc(positive: Tensor, negative: Tensor) -> float:
    """P(a positive scores above a negative), ties counting one half."""
    above = (positive[:, None] > negative[None, :]).float()
    tied = (positive[:, None] == negative[None, :]).float()
    return float((above + 0.5 * tied).mean())


# -- the registry and the behaviour ----------------------------------------------------


def test_registry_names_and_unknown_name() -> None:
    assert set(PLANTED) == {"induction", "copy_suppress", "mlp_and"}
    with pytest.raises(ValueError, match="no planted circuit 'nope'"):
        planted("nope")


def test_planted_circuit_rejects_edges_not_in_the_graph(case) -> None:
    with pytest.raises(ValueError, match="no such edges"):
        replace(case, edges=case.edges | {"L9H9->logits"})
    with pytest.raises(ValueError, match="overlap"):
        replace(case, invariant_edges=case.invariant_edges | case.edges)


def test_behaviour_shows_and_the_bridge_agrees(case, patcher) -> None:
    """Clean and corrupted metrics differ by more than 2, and the bridge's own forward
    pass gives the metric the patcher's full circuit gives."""
    full, empty = full_and_empty(case, patcher)
    assert full - empty > 2.0
    with torch.no_grad():
        bridge = float(METRIC(case.model(case.batch.clean), case.batch))
    assert bridge == pytest.approx(full, abs=1e-4)


def test_distractors_lie_outside_the_circuit(case) -> None:
    graph = case.graph
    touched = {
        node.component
        for name in case.edges | case.invariant_edges
        for node in (graph.edge(name).source, graph.edge(name).destination)
    }
    assert not touched & case.distractors
    assert case.description.strip()


# -- the ground truth under resample ablation -----------------------------------------


def test_circuit_alone_is_faithful(case, patcher) -> None:
    full, empty = full_and_empty(case, patcher)
    value = patcher.evaluate(case.batch, mask_of(patcher, case.edges)[None], METRIC)
    assert float(faithfulness(value, full, empty)[0]) > 0.95


def test_every_circuit_edge_is_necessary(case, patcher) -> None:
    full, empty = full_and_empty(case, patcher)
    edges = sorted(case.edges)
    values = patcher.evaluate(
        case.batch, toggled(mask_of(patcher, case.edges), patcher, edges), METRIC
    )
    scores = faithfulness(values, full, empty)
    worst = {e: round(float(s), 3) for e, s in zip(edges, scores, strict=True) if s >= 0.9}
    assert not worst, f"edges whose removal keeps the metric: {worst}"


def test_no_other_edge_moves_the_metric(case, patcher) -> None:
    """Removing any one non-circuit edge from the full model, or adding it to the circuit,
    changes the metric by less than 1% of the clean-corrupted gap."""
    full, empty = full_and_empty(case, patcher)
    others = complement(case, patcher)
    removed = patcher.evaluate(
        case.batch, toggled(torch.ones(patcher.n_edges), patcher, others), METRIC
    )
    circuit = mask_of(patcher, case.edges)
    alone = float(patcher.evaluate(case.batch, circuit[None], METRIC)[0])
    added = patcher.evaluate(case.batch, toggled(circuit, patcher, others), METRIC)
    gap = abs(full - empty)
    assert float((removed - full).abs().max()) < 0.01 * gap
    assert float((added - alone).abs().max()) < 0.01 * gap


# -- the invariant edges: the circuit under zero ablation ------------------------------


def test_invariant_edges_complete_the_circuit_under_zero_ablation(case, patcher) -> None:
    """Under zero ablation `edges | invariant_edges` is faithful, each invariant edge is
    needed, and adding any other edge to it moves the metric by less than 1% of the gap.
    (Removing one from the full model may not: zeroing a distractor's positional query
    makes it attend everywhere, off the distribution it was built for.)"""
    full, empty = full_and_empty(case, patcher, "zero")
    union = case.edges | case.invariant_edges
    mask = mask_of(patcher, union)
    invariant = sorted(case.invariant_edges)
    others = [edge.name for edge in patcher.graph.edges if edge.name not in union]
    masks = torch.cat(
        [mask[None], toggled(mask, patcher, invariant), toggled(mask, patcher, others)]
    )
    values = patcher.evaluate(case.batch, masks, METRIC, ablation="zero")
    scores = faithfulness(values, full, empty)
    assert float(scores[0]) > 0.95
    assert bool((scores[1 : 1 + len(invariant)] < 0.9).all())
    added = values[1 + len(invariant) :]
    assert float((added - values[0]).abs().max()) < 0.01 * abs(full - empty)


# -- distractors and attribution -------------------------------------------------------


def test_distractors_do_work_on_other_prompts(case, patcher) -> None:
    """Zero-ablating every edge out of a distractor changes the logits of
    `distractor_tokens` at the last position by more than 1 (largest |change|, averaged
    over prompts)."""
    tokens = case.distractor_tokens
    ablated = patcher.ablated_outputs(tokens, None, "zero")
    with torch.no_grad():
        full = patcher.run(tokens, patcher.dense(torch.ones(1, patcher.n_edges)), None)[0]
        for node in sorted(case.distractors):
            kept = torch.tensor([[float(edge.source.name != node) for edge in patcher.graph.edges]])
            logits = patcher.run(tokens, patcher.dense(kept), ablated)[0]
            change = (logits - full)[:, -1].abs().amax(dim=-1).mean()
            assert float(change) > 1.0, node


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_attribution_scores_circuit_edges_higher(case, method) -> None:
    scores = edge_attribution(case.model, case.batch, METRIC, method=method).scores.abs()
    inside = torch.tensor([edge.name in case.edges for edge in case.graph.edges])
    auc = roc_auc(scores[inside], scores[~inside])
    print(f"{case.name} {method}: ROC AUC {auc:.3f}")
    assert float(scores[inside].mean()) > float(scores[~inside].mean())
