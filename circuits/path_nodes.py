"""The nodes of path patching: their names, and which sender's output a receiver reads.

Path patching (Wang et al. 2022, "Interpretability in the Wild: a Circuit for Indirect
Object Identification in GPT-2 small", appendix B) patches the path from senders to
receivers. A sender is a component that writes into the residual stream: a head
(`"L{l}H{h}"`, head h of layer l), an MLP's output (`"mlp{l}"`) or the embedding (`"embed"`,
the whole input residual of block 0: token and position embeddings). A receiver is an
input that reads from it: the query, key or value input of a head (`"L{l}H{h}.q"`, `".k"`,
`".v"`), the input of an MLP (`"mlp{l}"`) or the final residual stream (`"logits"`).
`parse_node` turns a name into a `Node`, checked against the model, with a one-line
ValueError for a bad name; `"logits"` combines with no other receiver.

A sender reaches a receiver after it in the forward pass (`reaches`): a head of layer l
feeds MLP l and everything from layer l + 1 on, never another head of layer l; MLP l
feeds layer l + 1 on; with parallel attention and MLP (`cfg.parallel_attn_mlp`) heads of
layer l do not feed MLP l. Each node maps to the TransformerLens hooks that carry it:
head `(l, h)` sends `blocks.{l}.attn.hook_z[:, :, h]`, MLP `l` sends
`blocks.{l}.hook_mlp_out`, the embedding sends `blocks.0.hook_resid_pre`; a head receives
at `blocks.{l}.attn.hook_q/k/v[:, :, h]` (for grouped-query attention, a `.k` or `.v`
receiver is the key/value head that head h reads), an MLP at `blocks.{l}.mlp.hook_pre`
(and `hook_pre_linear` for gated MLPs). The runs themselves are in
`circuits.path_patching`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from circuits.graph import reads_output

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

NodeKind = Literal["embed", "head", "mlp", "logits"]
Role = Literal["sender", "receiver"]

_EMBED_HOOK = "blocks.0.hook_resid_pre"
_SENDER_FORMS = "'embed', 'L{layer}H{head}' or 'mlp{layer}'"
_RECEIVER_FORMS = "'L{layer}H{head}.q', '.k', '.v', 'mlp{layer}' or 'logits'"
_HEAD_PATTERN = re.compile(r"L(\d+)H(\d+)")
_HEAD_INPUT_PATTERN = re.compile(r"L(\d+)H(\d+)\.([qkv])")
_MLP_PATTERN = re.compile(r"mlp(\d+)")


@dataclass(frozen=True)
class Node:
    """A sender or receiver of path patching.

    Attributes:
        name: The name it was parsed from, e.g. `"L1H0.v"`.
        kind: `"embed"`, `"head"`, `"mlp"` or `"logits"`.
        layer: The block it belongs to (-1 for the embedding, `n_layers` for the logits).
        head: The head index (heads only).
        input: Which input of a receiver head is patched: `"q"`, `"k"` or `"v"`.
    """

    name: str
    kind: NodeKind
    layer: int
    head: int | None = None
    input: Literal["q", "k", "v"] | None = None


def _check_range(name: str, role: Role, what: str, index: int, size: int) -> None:
    if index >= size:
        raise ValueError(f"{role} {name!r}: {what} {index} is out of range (the model has {size})")


def parse_node(name: str, model: TransformerBridge, role: Role) -> Node:
    """The node called `name`, checked against `model`; a one-line ValueError if invalid.

    Senders: `"embed"`, `"L{l}H{h}"` (head h of layer l), `"mlp{l}"` (MLP output of layer l).
    Receivers: `"L{l}H{h}.q"`, `".k"`, `".v"` (that input of the head), `"mlp{l}"` (the MLP's
    input), `"logits"` (the final residual stream).
    """
    if role not in ("sender", "receiver"):
        raise ValueError(f"role must be 'sender' or 'receiver', got {role!r}")
    forms = _SENDER_FORMS if role == "sender" else _RECEIVER_FORMS
    if not isinstance(name, str):
        raise ValueError(f"{role} names must be strings like {forms}, got {name!r}")
    cfg = model.cfg
    n_layers, n_heads = int(cfg.n_layers), int(cfg.n_heads)
    if role == "sender" and name == "embed":
        return Node(name, "embed", -1)
    if role == "receiver" and name == "logits":
        return Node(name, "logits", n_layers)
    head_pattern = _HEAD_PATTERN if role == "sender" else _HEAD_INPUT_PATTERN
    if match := head_pattern.fullmatch(name):
        layer, head = int(match.group(1)), int(match.group(2))
        _check_range(name, role, "layer", layer, n_layers)
        _check_range(name, role, "head", head, n_heads)
        head_input = match.group(3) if role == "receiver" else None
        return Node(name, "head", layer, head, head_input)  # type: ignore[arg-type]
    if match := _MLP_PATTERN.fullmatch(name):
        layer = int(match.group(1))
        _check_range(name, role, "layer", layer, n_layers)
        if getattr(cfg, "attn_only", False):
            raise ValueError(f"{role} {name!r}: the model is attention-only and has no MLPs")
        return Node(name, "mlp", layer)
    raise ValueError(f"unknown {role} {name!r}; expected {forms}")


def _parse_nodes(names: Sequence[str], model: TransformerBridge, role: Role) -> list[Node]:
    """Parsed nodes in the given order, duplicates dropped."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ValueError(f"{role}s must be a list of node names, got {names!r}")
    nodes: dict[str, Node] = {}
    for name in names:
        nodes.setdefault(name, parse_node(name, model, role))
    return list(nodes.values())


def _parse_receivers(names: Sequence[str], model: TransformerBridge) -> list[Node]:
    receivers = _parse_nodes(names, model, "receiver")
    if not receivers:
        raise ValueError("path patching needs at least one receiver")
    if len(receivers) > 1 and any(node.kind == "logits" for node in receivers):
        raise ValueError("the 'logits' receiver cannot be combined with other receivers")
    return receivers


def reaches(sender: Node, receiver: Node, *, parallel_attn_mlp: bool = False) -> bool:
    """Whether `sender`'s output is read, through the residual stream, by `receiver`: the
    rule of the computational graph's edges (`circuits.graph.reads_output`)."""
    return reads_output(sender, receiver, parallel_attn_mlp=parallel_attn_mlp)


def _reaches_any(senders: Sequence[Node], receivers: Sequence[Node], parallel: bool) -> bool:
    return any(
        reaches(s, r, parallel_attn_mlp=parallel) for s in senders for r in receivers
    )


def _sender_hook(node: Node) -> str:
    if node.kind == "embed":
        return _EMBED_HOOK
    if node.kind == "head":
        return f"blocks.{node.layer}.attn.hook_z"
    return f"blocks.{node.layer}.hook_mlp_out"


def _sender_index(node: Node) -> tuple[Any, ...]:
    """Where in a `[batch, ...]` sender activation this node's output lies."""
    if node.kind == "head":
        return (slice(None), slice(None), node.head)
    return (Ellipsis,)


def _receiver_patches(node: Node, model: TransformerBridge) -> list[tuple[str, tuple[Any, ...]]]:
    """The hooks that carry a receiver's input, each with the index of the receiver in it.

    A head's q, k or v at `blocks.{l}.attn.hook_{q,k,v}[:, :, h]` (for grouped-query
    attention, the key/value head that h reads); an MLP's projected input at
    `blocks.{l}.mlp.hook_pre`, and also at `hook_pre_linear` for gated MLPs, whose input
    goes through a gate and an up projection.
    """
    if node.kind == "head":
        head = int(node.head or 0)
        n_kv = getattr(model.cfg, "n_key_value_heads", None)
        if node.input in ("k", "v") and n_kv:
            head //= int(model.cfg.n_heads) // int(n_kv)
        return [(f"blocks.{node.layer}.attn.hook_{node.input}", (slice(None), slice(None), head))]
    if node.kind == "mlp":
        names = [f"blocks.{node.layer}.mlp.hook_pre"]
        if f"blocks.{node.layer}.mlp.hook_pre_linear" in model.hook_dict:
            names.append(f"blocks.{node.layer}.mlp.hook_pre_linear")
        return [(name, (Ellipsis,)) for name in names]
    return []
