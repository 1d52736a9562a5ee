"""Direct logit attribution: what each component of a model adds to the logits directly.

The residual stream the unembedding reads is a sum of parts: the embedding, each head's
output, each MLP's output (the sources of `circuits.graph`), and what belongs to no source
(the attention output biases). The final norm divides the whole stream by one scale per
position; with that scale held at its value in the run the logits are linear in the parts,
so each part's direct contribution to the logit of a token is its share of the normalised
stream (`functional.normalized_parts`) dotted with that token's unembedding row (Elhage et
al. 2021, "A Mathematical Framework for Transformer Circuits", the direct path; Wang et al.
2022, "Interpretability in the Wild", section 3.1, finds the name movers this way). The
contributions of every part, plus the unembedding's own (the final norm's bias and `b_U`),
add up to the model's logit (before Gemma 2's final soft cap, which is not linear).

Only direct effects are read: a head that acts through later components (the
previous-token head of an induction circuit) shows ~0 here however much it matters;
activation and path patching (`circuits.patching`, `circuits.path_patching`) measure
those. Heads are split as in edge patching: under Gemma 2 and 3's norm after the attention,
a head's share of the normalised block output.

Covers the models edge patching covers (`circuits.edge_patching`); post-LayerNorm encoders
(BERT) have no such sum and are refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from circuits.edge_patching import why_not_a_sum
from circuits.graph import ComputationalGraph, Node
from interp import functional
from interp.functional import Architecture
from interp.readout import functional_architecture, read_chunks
from interp.runs import Run
from interp.tasks.base import TaskBatch
from interp.validation import check_positive_int

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

Readout = Literal["logit_diff", "answer", "wrong"]
READOUTS: tuple[Readout, ...] = ("logit_diff", "answer", "wrong")

BIAS = "bias"
"""The component that holds the attention output biases (no head's)."""
UNEMBED = "unembed"
"""The component that holds the final norm's bias and the unembedding bias `b_U`."""


@dataclass(frozen=True)
class LogitAttribution:
    """Each component's direct contribution to a logit readout, per example.

    Attributes:
        values: `[example, component]`; a row sums to `total` of that example.
        components: Names of the columns: `"embed"`, `"L{l}H{h}"` per head, `"mlp{l}"`
            per MLP (in forward order, as `ComputationalGraph.sources`), then `"bias"`
            and `"unembed"`.
        total: The model's readout per example, `[example]` (logits before a soft cap).
        readout: `"logit_diff"` (logit of the answer minus the wrong token's),
            `"answer"` or `"wrong"` (that token's logit alone).
        n_layers, n_heads: The model's shape, for `heads()`.
        neurons: With `neurons=True`, each MLP neuron's direct contribution, `[example,
            layer, d_mlp]`: its activation times its output row read through the final
            norm; a layer's neurons plus its MLP's output bias make its `"mlp{l}"` column.
        sources: With `by_source=True`, each head's direct contribution split by the key
            position it attends to, `[example, layer, head, pos]` (its attention weight
            times that position's value through `W_O`; positions past the read one hold
            0 under causal attention); a head's row sums to its column.
    """

    values: Float[Tensor, "example component"]
    components: tuple[str, ...]
    total: Float[Tensor, " example"]
    readout: str
    n_layers: int
    n_heads: int
    neurons: Float[Tensor, "example layer neuron"] | None = None
    sources: Float[Tensor, "example layer head pos"] | None = None

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[1] != len(self.components):
            raise ValueError(
                f"LogitAttribution: values {tuple(self.values.shape)} do not fit "
                f"{len(self.components)} components"
            )
        if self.total.shape != self.values.shape[:1]:
            raise ValueError("LogitAttribution: total must have one value per example")
        if self.neurons is not None and (
            self.neurons.ndim != 3 or self.neurons.shape[:2] != (len(self.total), self.n_layers)
        ):
            raise ValueError("LogitAttribution: neurons must be [example, layer, neuron]")
        if self.sources is not None and (
            self.sources.ndim != 4
            or self.sources.shape[:3] != (len(self.total), self.n_layers, self.n_heads)
        ):
            raise ValueError("LogitAttribution: sources must be [example, layer, head, pos]")

    def top_neurons(self, k: int = 10) -> list[tuple[str, float]]:
        """The `k` neurons (`"L{layer}N{neuron}"`) with the largest mean |contribution|."""
        if self.neurons is None:
            raise ValueError("no neuron attributions: run with neurons=True")
        means = self.neurons.mean(dim=0).flatten()
        order = means.abs().argsort(descending=True)[:k]
        width = self.neurons.shape[2]
        return [(f"L{int(i) // width}N{int(i) % width}", float(means[i])) for i in order]

    def mean(self) -> Float[Tensor, " component"]:
        """Each component's contribution, averaged over the examples."""
        return self.values.mean(dim=0)

    def heads(self) -> Float[Tensor, "layer head"]:
        """The heads' mean contributions as a `[layer, head]` grid."""
        means = dict(zip(self.components, self.mean().tolist(), strict=True))
        grid = [
            [means[Node("head", layer, head).name] for head in range(self.n_heads)]
            for layer in range(self.n_layers)
        ]
        return torch.tensor(grid)

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The `k` components with the largest mean |contribution|, largest first."""
        means = self.mean()
        order = means.abs().argsort(descending=True)[:k]
        return [(self.components[int(i)], float(means[i])) for i in order]

    def to_frame(self) -> pd.DataFrame:
        """One row per component: `component`, `kind` (embed, head, mlp, bias, unembed),
        `layer` and `head` (-1 where none), the `mean` and `std` over examples."""
        rows = []
        for name, mean, std in zip(
            self.components, self.mean().tolist(), self.values.std(dim=0, correction=0).tolist(),
            strict=True,
        ):
            kind, layer, head = _parse(name)
            rows.append({"component": name, "kind": kind, "layer": layer, "head": head,
                         "mean": mean, "std": std})
        return pd.DataFrame(rows)

    def save(self, run: Run | str | os.PathLike[str], name: str = "logit_attribution") -> None:
        """`artifacts/<name>.safetensors` (values, total) and `<name>.json` (the rest)."""
        run = Run.open(run)
        tensors = {"values": self.values, "total": self.total}
        for name_, extra in (("neurons", self.neurons), ("sources", self.sources)):
            if extra is not None:
                tensors[name_] = extra
        run.save_tensors(name, tensors)
        run.save_json(name, {"components": list(self.components), "readout": self.readout,
                             "n_layers": self.n_layers, "n_heads": self.n_heads})

    @classmethod
    def load(
        cls, run: Run | str | os.PathLike[str], name: str = "logit_attribution"
    ) -> LogitAttribution:
        run = Run.open(run)
        tensors, meta = run.load_tensors(name), run.load_json(name)
        return cls(tensors["values"], tuple(meta["components"]), tensors["total"],
                   meta["readout"], int(meta["n_layers"]), int(meta["n_heads"]),
                   tensors.get("neurons"), tensors.get("sources"))


def _parse(name: str) -> tuple[str, int, int]:
    """(kind, layer, head) of a component's name; -1 where it has none."""
    if name.startswith("L") and "H" in name:
        layer, head = name[1:].split("H")
        return "head", int(layer), int(head)
    if name.startswith("mlp"):
        return "mlp", int(name[3:]), -1
    return name, -1, -1


def direct_logit_attribution(
    model: TransformerBridge,
    batch: TaskBatch,
    *,
    readout: Readout = "logit_diff",
    neurons: bool = False,
    by_source: bool = False,
    max_batch: int = 32,
    progress: bool = False,
) -> LogitAttribution:
    """Each component's direct contribution to the readout at `batch.position` of each
    clean prompt (module docstring); with `neurons`, each MLP neuron's too; with
    `by_source`, each head's split by the position it attends to (the name movers of Wang
    et al. 2022 are found attending to the indirect object this way).

    Args:
        model: A model whose residual stream is a sum of parts: those edge patching
            covers (`circuits.edge_patching`).
        batch: The prompts (`clean`), the read positions, `answer` and `wrong` tokens.
        readout: `"logit_diff"` (answer minus wrong), `"answer"` or `"wrong"`.
        neurons: Also attribute to each MLP neuron (`LogitAttribution.neurons`); not
            under a norm after the MLP (Gemma 2 and 3), which mixes its neurons' outputs.
        by_source: Also split each head's contribution by key position
            (`LogitAttribution.sources`; the forward pass then forms the patterns).
        max_batch: Examples per forward pass.
        progress: Show a progress bar over the chunks.
    """
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
    check_positive_int("max_batch", max_batch)
    arch = functional_architecture(model, "direct logit attribution", why_not_a_sum(model))
    if neurons and (arch.d_mlp is None or arch.post_norms):
        why = "it has no MLPs" if arch.d_mlp is None else "a norm after each MLP mixes them"
        raise ValueError(f"neurons=True: this model's neurons have no direct effects of "
                         f"their own ({why})")
    TaskBatch.checked(batch, model)
    params = functional.live_params(model)
    batch = batch.to(params["embed.weight"].device)
    directions, offsets = _readout_rows(params, batch, readout)
    names = [node.name for node in ComputationalGraph.from_model(model).sources] + [BIAS]
    chunks: list[Tensor] = []
    neuron_chunks: list[Tensor] = []
    source_chunks: list[Tensor] = []
    for rows, read in read_chunks(params, arch, batch, max_batch, "direct logit attribution",
                                  progress, patterns=by_source):
        parts = _parts_at(params, arch, read)
        if neurons or by_source:
            seen = _through_final_norm(params, arch, parts.sum(dim=1), directions[rows])
        if neurons:
            neuron_chunks.append(_neurons_at(params, arch, read, seen).cpu())
        if by_source:
            source_chunks.append(_head_sources_at(params, arch, read, seen).cpu())
        shares, norm_bias = functional.normalized_parts(
            params, "ln_final", parts, torch.zeros_like(parts[:, 0]),
            arch.normalization, arch.eps,
        )
        direction = directions[rows].to(shares.dtype)
        values = torch.einsum("bpd,bd->bp", shares, direction)
        constant = (norm_bias * direction).sum(-1) + offsets[rows].to(shares.dtype)
        chunks.append(torch.cat([values, constant.unsqueeze(1)], dim=1).float().cpu())
    values = torch.cat(chunks)
    return LogitAttribution(values, (*names, UNEMBED), values.sum(dim=1), readout,
                            arch.n_layers, arch.n_heads,
                            torch.cat(neuron_chunks) if neurons else None,
                            torch.cat(source_chunks) if by_source else None)


def _parts_at(
    params: Mapping[str, Tensor], arch: Architecture, read: Callable[[str], Tensor]
) -> Float[Tensor, "batch part d_model"]:
    """The final residual stream at each example's read position, in parts: the
    embeddings, per block each head's output (through its `W_O`; under a norm after the
    attention, its share of the normalised block output) and the MLP's, then the
    attention biases (or their shares); `read` from `functional.activations_at`."""
    embed = read("hook_embed")
    if arch.learned_positions:
        embed = embed + read("hook_pos_embed")
    parts, rest = [embed], torch.zeros_like(embed)
    for layer in range(arch.n_layers):
        block = f"blocks.{layer}"
        z = read(f"{block}.attn.hook_z")  # [b, head, d_head]
        w_out = params[f"{block}.attn.o.weight"].view(arch.d_model, arch.n_heads, arch.d_head)
        per_head = torch.einsum("bhe,dhe->bhd", z, w_out)
        bias = params.get(f"{block}.attn.o.bias")
        bias = torch.zeros_like(embed) if bias is None else bias.expand_as(embed)
        if arch.post_norms:
            per_head, bias = functional.normalized_parts(
                params, f"{block}.ln1_post", per_head, bias, arch.normalization, arch.eps
            )
        parts += per_head.unbind(1)
        rest = rest + bias
        if arch.d_mlp is not None:
            parts.append(read(f"{block}.hook_mlp_out"))
    return torch.stack([*parts, rest], dim=1)


def _through_final_norm(
    params: Mapping[str, Tensor], arch: Architecture, final: Float[Tensor, "batch d_model"],
    direction: Float[Tensor, "batch d_model"],
) -> Float[Tensor, "batch d_model"]:
    """The readout `direction` seen from before the final norm at its scale in the run
    (`final`: the stream it reads): for a norm x -> w * centre(x) / s, a part p of the
    stream adds `p . centre(w * direction) / s` to the readout (float32)."""
    kind, weight = arch.normalization, None
    seen = direction.float()
    if kind is None:
        return seen
    stream = final.float()
    if kind in ("LN", "LNPRE"):
        stream = stream - stream.mean(-1, keepdim=True)
    seen = seen / (stream.pow(2).mean(-1, keepdim=True) + arch.eps).sqrt()
    if kind == "RMS1P":
        weight = 1.0 + params["ln_final.weight"].float()
    elif kind in ("LN", "RMS"):
        weight = params["ln_final.weight"].float()
    if weight is not None:
        seen = seen * weight
    if kind in ("LN", "LNPRE"):
        seen = seen - seen.mean(-1, keepdim=True)
    return seen


def _neurons_at(
    params: Mapping[str, Tensor], arch: Architecture, read: Callable[..., Tensor],
    seen: Float[Tensor, "batch d_model"],
) -> Float[Tensor, "batch layer neuron"]:
    """Each neuron's activation times its output row dotted with the readout direction
    `seen` from before the final norm (`_through_final_norm`)."""
    per_layer = []
    for layer in range(arch.n_layers):
        post = read(f"blocks.{layer}.mlp.hook_post").float()  # [b, d_mlp]
        w_out = params[f"blocks.{layer}.mlp.out.weight"].float()  # [d_model, d_mlp]
        per_layer.append(post * (seen @ w_out))
    return torch.stack(per_layer, dim=1)


def _head_sources_at(
    params: Mapping[str, Tensor], arch: Architecture, read: Callable[..., Tensor],
    seen: Float[Tensor, "batch d_model"],
) -> Float[Tensor, "batch layer head pos"]:
    """Each head's output at the read position split by key: its attention weight on key
    k times k's value through `W_O` (under a norm after the attention, each piece's share
    of the normalised block output), dotted with the readout direction `seen`."""
    per_layer = []
    for layer in range(arch.n_layers):
        block = f"blocks.{layer}"
        pattern = read(f"{block}.attn.hook_pattern").float()  # [b, head, key]
        values = read(f"{block}.attn.hook_v", every_position=True).float()  # [b, key, kv, e]
        if values.shape[2] != arch.n_heads:  # grouped keys and values
            values = values.repeat_interleave(arch.n_heads // values.shape[2], dim=2)
        w_out = params[f"{block}.attn.o.weight"].float().view(
            arch.d_model, arch.n_heads, arch.d_head)
        per_key = torch.einsum("bhk,bkhe,dhe->bhkd", pattern, values, w_out)
        if arch.post_norms:
            bias = params.get(f"{block}.attn.o.bias")
            rest = per_key.new_zeros(per_key.shape[0], arch.d_model)
            if bias is not None:
                rest = rest + bias.float()
            shares, _ = functional.normalized_parts(
                params, f"{block}.ln1_post", per_key.flatten(1, 2), rest,
                arch.normalization, arch.eps,
            )
            per_key = shares.float().unflatten(1, per_key.shape[1:3])
        per_layer.append(torch.einsum("bhkd,bd->bhk", per_key, seen))
    return torch.stack(per_layer, dim=1)


def _readout_rows(
    params: Mapping[str, Tensor], batch: TaskBatch, readout: Readout
) -> tuple[Float[Tensor, "example d_model"], Float[Tensor, " example"]]:
    """The unembedding row whose dot product with the normalised stream is the readout,
    per example, and the readout's share of `b_U`."""
    weight, bias = params["unembed.weight"], params.get("unembed.bias")
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    answer, wrong = batch.answer, batch.wrong
    if readout == "answer":
        return weight[answer], bias[answer]
    if readout == "wrong":
        return weight[wrong], bias[wrong]
    return weight[answer] - weight[wrong], bias[answer] - bias[wrong]
