"""Tests for circuits.path_nodes: parsing sender and receiver names against a model."""

from __future__ import annotations

import pytest
from transformer_lens.model_bridge import TransformerBridge

import circuits.path_patching
from circuits.graph import ComputationalGraph
from circuits.path_nodes import Node, parse_node, reaches
from interp import models


@pytest.fixture(scope="module")
def attn_only_model() -> TransformerBridge:
    """The shape of test_path_patching's hand-built model: 2 layers x 2 heads, no MLPs."""
    spec = dict(
        n_layers=2, d_model=32, n_heads=2, d_head=6, d_vocab=6, n_ctx=8,
        attn_only=True, normalization=None, seed=0,
    )
    return models.build(spec, device="cpu")


@pytest.mark.parametrize(
    ("name", "role", "message"),
    [
        ("L2H0", "sender", "layer 2 is out of range"),
        ("L0H4", "sender", "head 4 is out of range"),
        ("L0H0.q", "sender", "unknown sender"),
        ("logits", "sender", "unknown sender"),
        ("mlp7", "sender", "layer 7 is out of range"),
        ("L1H0", "receiver", "unknown receiver"),
        ("L1H0.z", "receiver", "unknown receiver"),
        ("embed", "receiver", "unknown receiver"),
        ("L5H0.v", "receiver", "layer 5 is out of range"),
        ("head", "receiver", "unknown receiver"),
    ],
)
def test_bad_node_names(model, name, role, message):
    with pytest.raises(ValueError, match=message) as error:
        parse_node(name, model, role)
    assert "\n" not in str(error.value)


def test_parse_node(model):
    node = parse_node("L1H3.k", model, "receiver")
    assert (node.kind, node.layer, node.head, node.input) == ("head", 1, 3, "k")
    assert parse_node("mlp0", model, "sender").kind == "mlp"
    assert parse_node("embed", model, "sender").layer == -1


def test_mlp_nodes_on_an_attention_only_model(attn_only_model):
    with pytest.raises(ValueError, match="no MLPs"):
        parse_node("mlp0", attn_only_model, "receiver")


def test_path_patching_re_exports_the_node_names():
    assert circuits.path_patching.parse_node is parse_node


@pytest.mark.parametrize(
    ("sender", "receiver", "sequential", "parallel"),
    [
        (Node("embed", "embed", -1), Node("L0H0.q", "head", 0, 0, "q"), True, True),
        (Node("L0H1", "head", 0, 1), Node("L0H0.k", "head", 0, 0, "k"), False, False),
        (Node("L0H1", "head", 0, 1), Node("mlp0", "mlp", 0), True, False),  # the only change
        (Node("L0H1", "head", 0, 1), Node("mlp1", "mlp", 1), True, True),
        (Node("mlp0", "mlp", 0), Node("L1H0.v", "head", 1, 0, "v"), True, True),
        (Node("mlp0", "mlp", 0), Node("L0H0.q", "head", 0, 0, "q"), False, False),
        (Node("L1H0", "head", 1, 0), Node("L0H0.q", "head", 0, 0, "q"), False, False),
        (Node("mlp1", "mlp", 1), Node("logits", "logits", 2), True, True),
    ],
)
def test_reaches_follows_the_residual_stream(sender, receiver, sequential, parallel) -> None:
    """Attention l, then MLP l, then layer l + 1; in parallel blocks (GPT-J style) a head
    of layer l feeds the MLPs of later layers only."""
    assert reaches(sender, receiver) is sequential
    assert reaches(sender, receiver, parallel_attn_mlp=True) is parallel


def forward_order(node: Node) -> int:
    """Position in the forward pass: the embedding, then attention l, MLP l, ..., logits."""
    if node.kind == "embed":
        return -1
    return 2 * node.layer + (1 if node.kind == "mlp" else 0)


@pytest.mark.parametrize("parallel", [False, True])
def test_reaches_is_the_computational_graphs_edge_rule(parallel: bool) -> None:
    """Every sender/receiver pair of a 3-layer graph: `reaches` holds exactly where the
    graph has an edge, and where the forward order said so before the rule was shared."""
    graph = ComputationalGraph(n_layers=3, n_heads=2, parallel_attn_mlp=parallel)

    def as_path_node(node) -> Node:
        return Node(node.name, node.kind, node.layer, node.head, node.input)

    for source in graph.sources:
        for destination in graph.destinations:
            sender, receiver = as_path_node(source), as_path_node(destination)
            edge = f"{source.name}->{destination.name}" in graph.edge_index
            in_order = forward_order(sender) < forward_order(receiver) and not (
                parallel and (sender.kind, receiver.kind) == ("head", "mlp")
                and sender.layer == receiver.layer
            )
            where = (sender.name, receiver.name)
            assert reaches(sender, receiver, parallel_attn_mlp=parallel) is edge, where
            assert edge is in_order, where
