"""Tests for circuits.graph: node and edge sets of the residual-stream graph."""

from __future__ import annotations

from types import SimpleNamespace

import networkx as nx
import pytest
import torch

from circuits.graph import ComputationalGraph, Node, parallel_blocks, reads_output
from interp import models


def expected_edge_count(n_layers: int, n_heads: int, has_mlp: bool) -> int:
    """Counted by hand: per block, 3 inputs per head read the embedding and every source of
    earlier blocks; the MLP reads those and this block's heads; the logits read all."""
    mlp = int(has_mlp)
    count = 0
    for layer in range(n_layers):
        upstream = 1 + layer * (n_heads + mlp)
        count += 3 * n_heads * upstream
        count += mlp * (upstream + n_heads)
    return count + 1 + n_layers * (n_heads + mlp)


def test_gpt2_small_has_32491_edges() -> None:
    graph = ComputationalGraph(n_layers=12, n_heads=12)
    assert len(graph) == 32_491
    assert len(graph.sources) == 1 + 12 * 13 and len(graph.destinations) == 12 * 37 + 1


@pytest.mark.parametrize("shape", [(1, 1, True), (2, 4, False), (3, 2, True), (5, 3, False)])
def test_edge_counts_match_the_hand_count(shape) -> None:
    n_layers, n_heads, has_mlp = shape
    graph = ComputationalGraph(n_layers, n_heads, has_mlp=has_mlp)
    assert len(graph) == expected_edge_count(*shape)
    assert len(set(graph.edge_index)) == len(graph)  # names are unique


def test_which_sources_each_destination_reads() -> None:
    graph = ComputationalGraph(n_layers=2, n_heads=2)
    reads = {edge.name for edge in graph.edges}
    assert "embed->L0H1.q" in reads and "embed->logits" in reads
    assert "L0H0->L0H1.k" not in reads  # same-layer heads do not read each other
    assert "L0H0->mlp0" in reads  # the MLP reads its own block's attention
    assert "mlp0->L1H0.v" in reads and "mlp0->mlp0" not in reads
    assert "L1H1->L0H0.q" not in reads  # never backwards
    parallel = ComputationalGraph(n_layers=2, n_heads=2, parallel_attn_mlp=True)
    assert "L0H0->mlp0" not in parallel.edge_index and "L0H0->mlp1" in parallel.edge_index
    assert len(parallel) == len(graph) - 2 * 2
    head, mlp = Node("head", 0, 1), Node("mlp", 0)
    assert reads_output(head, mlp, parallel_attn_mlp=False)
    assert not reads_output(head, mlp, parallel_attn_mlp=True)


def test_parallel_blocks_reads_the_config(model) -> None:
    assert parallel_blocks(model) is False
    fake = SimpleNamespace(cfg=SimpleNamespace(parallel_attn_mlp=1))
    assert parallel_blocks(fake) is True  # type: ignore[arg-type]
    assert parallel_blocks(SimpleNamespace(cfg=SimpleNamespace())) is False  # type: ignore[arg-type]


def test_check_masks_wants_one_row_per_circuit() -> None:
    graph = ComputationalGraph(n_layers=1, n_heads=1)
    masks = graph.check_masks([[1.0] * len(graph)] * 2)
    assert isinstance(masks, torch.Tensor) and masks.shape == (2, len(graph))
    ones = torch.ones(3, len(graph))
    assert graph.check_masks(ones) is ones  # no copy
    with pytest.raises(ValueError, match=rf"masks must be \[n_circuits, {len(graph)}\]"):
        graph.check_masks(torch.ones(len(graph)))
    with pytest.raises(ValueError, match=r"circuits must be .* got \(1, 2\)"):
        graph.check_masks(torch.ones(1, 2), "circuits")


def test_node_level_view_folds_qkv_into_heads() -> None:
    graph = ComputationalGraph(n_layers=2, n_heads=2, has_mlp=False)
    edges = ["L0H0->L1H1.q", "L0H0->L1H1.k", "L1H1->logits", "embed->L0H0.v"]
    scores = {"L0H0->L1H1.q": 0.5, "L0H0->L1H1.k": 0.25, "L1H1->logits": 1.0}
    by_edge = graph.to_networkx(edges, scores, level="edge")
    assert set(by_edge.nodes) == {"L0H0", "L1H1.q", "L1H1.k", "L1H1", "logits", "embed", "L0H0.v"}
    by_node = graph.to_networkx(edges, scores, level="node")
    assert set(by_node.nodes) == {"L0H0", "L1H1", "logits", "embed"}
    merged = by_node.edges["L0H0", "L1H1"]
    assert merged["score"] == pytest.approx(0.75)
    assert sorted(merged["edges"]) == ["L0H0->L1H1.k", "L0H0->L1H1.q"]
    assert nx.is_directed_acyclic_graph(graph.to_networkx(level="node"))


def test_json_round_trip_and_dot_export() -> None:
    graph = ComputationalGraph(n_layers=3, n_heads=2)
    chosen = ["embed->L0H0.q", "L0H0->mlp0", "mlp2->logits"]
    again, edges = ComputationalGraph.from_json(graph.to_json(chosen))
    assert again == graph and edges == chosen
    dot = graph.to_dot(chosen, scores={"L0H0->mlp0": -2.0})
    assert dot.startswith("digraph circuit {") and '"L0H0" -> "mlp0" [label="-2"' in dot
    assert '"embed" -> "L0H0"' in dot


def test_scores_as_a_tensor_and_nan_scores_in_the_views() -> None:
    """A tensor of one score per edge (EdgeScores.scores, ACDCResult.scores) works as a
    mapping does; NaN (ACDC's untested edges) is no score: no label, no NaN pen width, and
    a merged node-level edge sums its finite scores."""
    graph = ComputationalGraph(n_layers=2, n_heads=2, has_mlp=False)
    scores = torch.full((len(graph),), float("nan"))
    scores[graph.edge_index["L0H0->L1H1.q"]] = 0.5
    scores[graph.edge_index["L1H1->logits"]] = -2.0
    by_node = graph.to_networkx(scores=scores, level="node")
    assert by_node.edges["L0H0", "L1H1"]["score"] == pytest.approx(0.5)  # q's; k, v NaN
    assert by_node.edges["L1H1", "logits"]["score"] == pytest.approx(-2.0)
    assert by_node.edges["embed", "L0H0"]["score"] is None
    by_name = {name: float(scores[i]) for name, i in graph.edge_index.items()}
    assert nx.to_dict_of_dicts(graph.to_networkx(scores=by_name)) == nx.to_dict_of_dicts(
        graph.to_networkx(scores=scores)
    )
    dot = graph.to_dot(scores=scores)
    assert "nan" not in dot and '"L1H1" -> "logits" [label="-2", penwidth=3.50]' in dot
    assert '"embed" -> "L0H0";' in dot
    with pytest.raises(ValueError, match=rf"a tensor of {len(graph)} scores .* got \(3,\)"):
        graph.to_dot(scores=torch.zeros(3))


def test_bad_names_and_shapes_raise_one_line() -> None:
    graph = ComputationalGraph(n_layers=1, n_heads=1)
    with pytest.raises(ValueError, match="no edge 'L0H0->L0H0.q'"):
        graph.edge("L0H0->L0H0.q")
    with pytest.raises(ValueError, match="n_heads must be a positive int"):
        ComputationalGraph(n_layers=1, n_heads=0)
    with pytest.raises(ValueError, match="not a computational graph JSON"):
        ComputationalGraph.from_json("{}")
    with pytest.raises(ValueError, match="has_mlp must be a bool, got 'false'"):
        ComputationalGraph(n_layers=1, n_heads=1, has_mlp="false")  # type: ignore[arg-type]


def test_from_model_reads_the_bridge_config(minilm) -> None:
    native = models.build(
        dict(n_layers=2, d_model=16, n_heads=2, d_vocab=10, n_ctx=4, attn_only=True), device="cpu"
    )
    assert ComputationalGraph.from_model(native) == ComputationalGraph(2, 2, has_mlp=False)
    assert len(ComputationalGraph.from_model(minilm)) == expected_edge_count(6, 12, True)
    assert Node("head", 1, 3, "k").component == "L1H3"
