"""The computational graph of a transformer, as circuit discovery sees it.

Sources write into the residual stream: the input embedding (token and position
embeddings together), every head's output and every MLP's output. Destinations read from
it: every head's query, key and value inputs, every MLP's input, and the logits (the final
residual stream). Because the residual stream is a sum, a destination reads the sum of the
outputs of every source before it, so there is an edge from every source to every
destination downstream of it (Elhage et al. 2021, "A Mathematical Framework for
Transformer Circuits"; the edge-level graph of ACDC, Conmy et al. 2023, and of
auto-circuit, Miller et al. 2024).

Order inside block l: attention (its heads read the stream before it), then the MLP (reads
the stream after the attention of block l), unless the model runs them in parallel
(`parallel_attn_mlp`, e.g. GPT-J), where the MLP of block l does not read the heads of
block l. For GPT-2 small (12 layers x 12 heads) this gives 32,491 edges.

Node names are the ones `circuits.path_patching` uses: sources `"embed"`, `"L{l}H{h}"`,
`"mlp{l}"`; destinations `"L{l}H{h}.q"` / `".k"` / `".v"`, `"mlp{l}"`, `"logits"`; an edge
is `"<source>-><destination>"`. The node-level view folds q, k and v into their head.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Literal, Protocol

import networkx as nx
import torch
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

NodeKind = Literal["embed", "head", "mlp", "logits"]
HeadInput = Literal["q", "k", "v"]
HEAD_INPUTS: tuple[HeadInput, ...] = ("q", "k", "v")


def parallel_blocks(model: TransformerBridge) -> bool:
    """Whether `model`'s blocks run attention and MLP in parallel (`cfg.parallel_attn_mlp`,
    e.g. GPT-J, GPT-NeoX / Pythia): both read the block's input, so there is no `resid_mid`
    and the MLP of block l does not read the heads of block l."""
    return bool(getattr(model.cfg, "parallel_attn_mlp", False))


class _Placed(Protocol):
    """A node of either graph (`Node` here, `circuits.path_nodes.Node`): its kind and block
    (-1 for the embedding, `n_layers` for the logits)."""

    @property
    def kind(self) -> str: ...

    @property
    def layer(self) -> int: ...


def reads_output(source: _Placed, destination: _Placed, *, parallel_attn_mlp: bool) -> bool:
    """Whether `destination` reads `source`'s output from the residual stream: everything
    written in earlier blocks (the embedding is block -1, the logits block `n_layers`), and
    an MLP also its own block's heads unless attention and MLP run in parallel."""
    if source.layer == destination.layer and (source.kind, destination.kind) == ("head", "mlp"):
        return not parallel_attn_mlp
    return source.layer < destination.layer


@dataclass(frozen=True)
class Node:
    """A source or destination of the graph.

    Attributes:
        kind: `"embed"`, `"head"`, `"mlp"` or `"logits"`.
        layer: Its block (-1 for the embedding, `n_layers` for the logits).
        head: The head index (heads only).
        input: For a destination head, which input: `"q"`, `"k"` or `"v"`.
    """

    kind: NodeKind
    layer: int
    head: int | None = None
    input: HeadInput | None = None

    @property
    def name(self) -> str:
        if self.kind == "embed":
            return "embed"
        if self.kind == "logits":
            return "logits"
        if self.kind == "mlp":
            return f"mlp{self.layer}"
        suffix = f".{self.input}" if self.input else ""
        return f"L{self.layer}H{self.head}{suffix}"

    @property
    def component(self) -> str:
        """The node-level name: a destination head input folded into its head."""
        return self.name.split(".")[0]


@dataclass(frozen=True)
class Edge:
    """Source -> destination: the destination reads the source's output from the stream."""

    source: Node
    destination: Node

    @property
    def name(self) -> str:
        return f"{self.source.name}->{self.destination.name}"


@dataclass(frozen=True)
class ComputationalGraph:
    """Every source, destination and edge of a model of a given shape.

    Attributes:
        n_layers: Blocks.
        n_heads: Heads per block.
        has_mlp: Whether blocks have MLPs (False for attention-only models).
        parallel_attn_mlp: Whether the MLP of a block reads the stream before its attention
            (GPT-J style) rather than after it.
    """

    n_layers: int
    n_heads: int
    has_mlp: bool = True
    parallel_attn_mlp: bool = False

    def __post_init__(self) -> None:
        for name in ("n_layers", "n_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("has_mlp", "parallel_attn_mlp"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    @classmethod
    def from_model(cls, model: TransformerBridge) -> ComputationalGraph:
        """The graph of any `TransformerBridge`, read from its config: its layer and head
        counts and whether attention and MLP run in parallel. It is the nominal layout; on
        a model whose residual stream is no sum of these sources (post-LayerNorm BERT, the
        norms after attention and MLP of Gemma 2 and 3) edge patching, EAP and ACDC refuse
        in one line (`circuits.edge_patching`), so its edges are for display there."""
        cfg = model.cfg
        return cls(
            n_layers=int(cfg.n_layers),
            n_heads=int(cfg.n_heads),
            has_mlp=not bool(getattr(cfg, "attn_only", False)),
            parallel_attn_mlp=parallel_blocks(model),
        )

    # -- nodes -----------------------------------------------------------------------

    @cached_property
    def sources(self) -> tuple[Node, ...]:
        """Every source in forward order: embed, then per block its heads and its MLP."""
        nodes = [Node("embed", -1)]
        for layer in range(self.n_layers):
            nodes += [Node("head", layer, head) for head in range(self.n_heads)]
            if self.has_mlp:
                nodes.append(Node("mlp", layer))
        return tuple(nodes)

    @cached_property
    def destinations(self) -> tuple[Node, ...]:
        """Every destination in forward order: per block its heads' q, k, v, its MLP;
        then the logits."""
        nodes = []
        for layer in range(self.n_layers):
            nodes += [
                Node("head", layer, head, part)
                for head in range(self.n_heads)
                for part in HEAD_INPUTS
            ]
            if self.has_mlp:
                nodes.append(Node("mlp", layer))
        nodes.append(Node("logits", self.n_layers))
        return tuple(nodes)

    def reads(self, source: Node, destination: Node) -> bool:
        """Whether `destination` reads `source`'s output from the residual stream
        (`reads_output`)."""
        return reads_output(source, destination, parallel_attn_mlp=self.parallel_attn_mlp)

    # -- edges -----------------------------------------------------------------------

    @cached_property
    def edges(self) -> tuple[Edge, ...]:
        """Every edge, grouped by destination in forward order, sources in forward order."""
        return tuple(
            Edge(source, destination)
            for destination in self.destinations
            for source in self.sources
            if self.reads(source, destination)
        )

    @cached_property
    def edge_index(self) -> Mapping[str, int]:
        """Edge name -> its position in `edges`."""
        return {edge.name: i for i, edge in enumerate(self.edges)}

    def edge(self, name: str) -> Edge:
        """The edge called `"<source>-><destination>"`; a one-line ValueError otherwise."""
        index = self.edge_index.get(name)
        if index is None:
            raise ValueError(f"no edge {name!r} in this graph ({len(self.edges)} edges)")
        return self.edges[index]

    def __len__(self) -> int:
        return len(self.edges)

    def check_masks(
        self, masks: object, what: str = "masks", device: torch.device | str | None = None
    ) -> Tensor:
        """`masks` as a `[n_circuits, n_edges]` tensor (one row per circuit, one value per
        edge of this graph, on `device` if given), or a one-line ValueError naming it
        `what`."""
        masks = torch.as_tensor(masks, device=device)
        if masks.ndim != 2 or masks.shape[1] != len(self):
            raise ValueError(
                f"{what} must be [n_circuits, {len(self)}] (one row per circuit), got "
                f"{tuple(masks.shape)}"
            )
        return masks

    # -- views -----------------------------------------------------------------------

    def to_networkx(
        self,
        edges: Iterable[str] | None = None,
        scores: Mapping[str, float] | Tensor | None = None,
        level: Literal["edge", "node"] = "edge",
    ) -> nx.DiGraph:
        """A networkx DiGraph of `edges` (all by default).

        At `level="edge"` nodes are sources and destinations by name (`"L1H0.q"` apart
        from `"L1H0"`, the head's output); at `level="node"` a head's inputs are folded
        into the head, so an edge joins two components and parallel q/k/v edges merge
        (their scores summed, their names kept in the `edges` attribute). Each node has
        `kind`, `layer` and `head`; each edge `score` when `scores` is given: edge name ->
        score, or one score per edge of the graph in graph order (`EdgeScores.scores`,
        `ACDCResult.scores`). NaN scores (ACDC's edges removed untested) count as none: an
        edge with no finite score has `score` None.
        """
        if level not in ("edge", "node"):
            raise ValueError(f"level must be 'edge' or 'node', got {level!r}")
        by_name = self._score_map(scores)
        chosen = self.edges if edges is None else [self.edge(name) for name in edges]
        graph = nx.DiGraph()
        for edge in chosen:
            ends = (edge.source, edge.destination)
            keys = [node.name if level == "edge" else node.component for node in ends]
            for key, node in zip(keys, ends, strict=True):
                if key not in graph:
                    graph.add_node(key, kind=node.kind, layer=node.layer, head=node.head)
            data = graph.get_edge_data(*keys)
            score = None if by_name is None else by_name.get(edge.name, 0.0)
            score = score if score is None or math.isfinite(score) else None
            if data is None:
                graph.add_edge(*keys, edges=[edge.name], score=score)
            else:
                data["edges"].append(edge.name)
                if score is not None:
                    data["score"] = score + (data["score"] or 0.0)
        return graph

    def _score_map(self, scores: Mapping[str, float] | Tensor | None) -> dict[str, float] | None:
        """`scores` as edge name -> float (a tensor holds one per edge, in graph order)."""
        if scores is None:
            return None
        if isinstance(scores, Mapping):
            return {name: float(value) for name, value in scores.items()}
        if isinstance(scores, Tensor) and scores.shape == (len(self.edges),):
            values = scores.detach().float().cpu().tolist()
            return {edge.name: value for edge, value in zip(self.edges, values, strict=True)}
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(
            f"scores must map edge names to numbers or be a tensor of {len(self.edges)} "
            f"scores (one per edge, in graph order), got {shape}"
        )

    def to_json(self, edges: Iterable[str] | None = None) -> str:
        """The graph's shape and the chosen edges (all by default) as JSON text."""
        chosen = list(self.edge_index) if edges is None else [self.edge(e).name for e in edges]
        return json.dumps(
            {
                "n_layers": self.n_layers,
                "n_heads": self.n_heads,
                "has_mlp": self.has_mlp,
                "parallel_attn_mlp": self.parallel_attn_mlp,
                "edges": chosen,
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> tuple[ComputationalGraph, list[str]]:
        """The graph and its chosen edges back from `to_json`'s text."""
        try:
            data = json.loads(text)
            graph = cls(
                n_layers=data["n_layers"],
                n_heads=data["n_heads"],
                has_mlp=data["has_mlp"],
                parallel_attn_mlp=data["parallel_attn_mlp"],
            )
            edges = [graph.edge(name).name for name in data["edges"]]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"not a computational graph JSON: {error}") from None
        return graph, edges

    def to_dot(
        self,
        edges: Iterable[str] | None = None,
        scores: Mapping[str, float] | Tensor | None = None,
        level: Literal["edge", "node"] = "node",
    ) -> str:
        """Graphviz DOT text of the chosen edges, one rank per block, scores (as in
        `to_networkx`) as labels and pen widths (render with `dot -Tsvg`)."""
        graph = self.to_networkx(edges, scores, level)
        lines = ["digraph circuit {", "  rankdir=BT;", '  node [shape=box, fontname="Helvetica"];']
        ranks: dict[int, list[str]] = {}
        for name, data in graph.nodes(data=True):
            ranks.setdefault(data["layer"], []).append(name)
            color = {"embed": "gray", "head": "lightblue", "mlp": "lightyellow"}.get(
                data["kind"], "lightpink"
            )
            lines.append(f'  "{name}" [style=filled, fillcolor={color}];')
        for layer in sorted(ranks):
            members = " ".join(f'"{name}"' for name in sorted(ranks[layer]))
            lines.append(f"  {{ rank=same; {members} }}")
        largest = max(
            (abs(d["score"]) for *_, d in graph.edges(data=True) if d["score"] is not None),
            default=0.0,
        )
        for source, destination, data in graph.edges(data=True):
            attributes = ""
            if data["score"] is not None:
                width = 0.5 + 3.0 * abs(data["score"]) / largest if largest else 1.0
                attributes = f' [label="{data["score"]:.3g}", penwidth={width:.2f}]'
            lines.append(f'  "{source}" -> "{destination}"{attributes};')
        lines.append("}")
        return "\n".join(lines) + "\n"
