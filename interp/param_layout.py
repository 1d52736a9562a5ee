"""The parameter layout of the models `interp.functional` computes (native ones from
`interp.models.build`, and the pretrained classes `interp.pretrained_layout` covers), as
plain dicts of tensors: the side of `interp.functional` that never runs a forward pass.

`architecture(spec)` resolves a spec (through the bridge config) into the numbers the
forward pass reads; `param_shapes(spec)` lists every key of the bridge's `state_dict()` with
its shape, in bridge order. `params_of`, `live_params` and `load_params` move weights
between a bridge and such a dict (every weight as `nn.Linear`'s `[out, in]`: GPT-2's
`Conv1D` weights are seen transposed); `dense_params` gives the per-head layout of models
with grouped keys or without biases; `stack_params` and `unstack_params` add and remove
the leading seed axis that `interp.functional.batched_forward` vmaps over; `check_layout`
is the one-line ValueError check of a dict against a layout. `interp.functional`
re-exports the public names, so `functional.params_of(model)` keeps working.

Parameter layout (nn.Linear's [out, in] weights; H heads of width d_head, K key and value
heads, K = H without grouping):

    embed.weight [d_vocab, d_model]            pos_embed.weight [n_ctx + pos_offset, d_model]
    embed_ln.weight / .bias [d_model]          (BLOOM's LayerNorm on the embeddings)
    blocks.{l}.ln1.weight / .bias [d_model]    blocks.{l}.ln2.* (not attn_only)
    blocks.{l}.attn.q.weight [H*d_head, d_model], .bias [H*d_head]
    blocks.{l}.attn.{k,v}.weight [K*d_head, d_model], .bias [K*d_head]
    blocks.{l}.attn.o.weight [d_model, H*d_head], .bias [d_model]
    blocks.{l}.attn.{q,k}_norm.weight [d_head]   (Qwen3's per-head query and key norms)
    blocks.{l}.mlp.gate.weight [d_mlp, d_model], .bias [d_mlp]   (gated MLPs only)
    blocks.{l}.mlp.in.weight [d_mlp, d_model], .bias [d_mlp]
    blocks.{l}.mlp.out.weight [d_model, d_mlp], .bias [d_model]
    blocks.{l}.mlp.ln.weight / .bias [d_mlp]   (act_fn "solu_ln" only)
    ln_final.weight / .bias [d_model]          unembed.weight [d_vocab_out, d_model]
    unembed.bias [d_vocab_out]

Norm parameters follow the normalization: LN has weight and bias, RMS and RMS1P (Gemma's,
scaled by 1 + weight) weight only, LNPre, RMSPre and None none. Projection biases exist
where the `Architecture` says (`qkv_bias`, `out_bias`, `mlp_bias`: all of them in native
models, GPT-2 and GPT-NeoX; none in Llama, Mistral, Qwen3 or Gemma; q, k and v in Qwen2).
`unembed.bias` is a zero buffer in the bridge, not a parameter: a training loop that
should match the bridge's trainable set leaves it out of the update (`TRAINABLE_EXCLUDED`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from interp.models import ModelSpec
from interp.validation import parse_config

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

Params = dict[str, Tensor]

TRAINABLE_EXCLUDED: frozenset[str] = frozenset({"unembed.bias"})
"""Keys of `params_of` that the bridge holds as buffers, not trainable parameters."""

NORMS_WITH_WEIGHT = ("LN", "RMS", "RMS1P")
"""Norms with a weight; "RMS1P" is Gemma's RMSNorm, scaled by 1 + weight."""
NORMS_WITH_BIAS = ("LN",)


@dataclass(frozen=True)
class Architecture:
    """What the forward pass needs from a spec, resolved through the bridge config."""

    n_layers: int
    n_heads: int
    d_head: int
    d_model: int
    d_mlp: int | None
    d_vocab: int
    d_vocab_out: int
    n_ctx: int
    act_fn: str
    normalization: str | None
    rotary: bool
    rotary_dim: int
    rotary_base: float
    eps: float
    attn_scale: float
    causal: bool = True
    parallel_attn_mlp: bool = False
    """GPT-J / GPT-NeoX / Phi blocks: `resid + attn(ln1(resid)) + mlp(ln2(resid))`."""
    shared_norm: bool = False
    """GPT-J, Phi: one norm (`ln1`) before both the attention and the (parallel) MLP; no `ln2`."""
    rotary_adjacent_pairs: bool = True
    """Rotary layout: dimensions 2i and 2i+1 rotate together (TransformerLens's native
    models), or i and i + rotary_dim / 2 (GPT-NeoX's and Llama's "rotate half")."""
    rotary_inv_freq: tuple[float, ...] | None = None
    """A pretrained model's rotary frequencies, as its class computes them (scaled ones
    too: Llama 3's "llama3", "linear", "yarn"); None: `1 / rotary_base^(2i / rotary_dim)`."""
    rotary_scale: float = 1.0
    """Factor on the rotary cos and sin tables (YaRN's attention scaling; 1 otherwise)."""
    rotary_local_inv_freq: tuple[float, ...] | None = None
    """Gemma 3: the rotary frequencies of its local (sliding-window) layers, whose base
    differs from its global layers' (`rotary_local_layers`); None: one set for all."""
    rotary_local_layers: tuple[int, ...] = ()
    """The layers that use `rotary_local_inv_freq`."""
    n_kv_heads: int | None = None
    """Grouped-query attention (Ainslie et al. 2023, Llama, Mistral, Qwen2, Qwen3, Gemma): heads
    `g * n_heads / n_kv_heads ...` share key and value head g; None: one per head."""
    embed_scale: float = 1.0
    """Factor on the token embeddings entering the first block (Gemma: sqrt(d_model));
    `hook_embed` holds them scaled, as the bridge's does."""
    qk_norm: bool = False
    """Qwen3, Gemma 3: queries and keys RMS-normalised per head (`attn.q_norm`,
    `attn.k_norm`, weights of width d_head; the model's `normalization`) after their
    projection and before the rotary embedding."""
    gated_mlp: bool = False
    """Llama's MLP: `out(act(gate(x)) * in(x))` (Shazeer 2020, "GLU Variants")."""
    qkv_bias: bool = True
    """Whether the query, key and value projections have biases."""
    out_bias: bool = True
    """Whether the attention's output projection has a bias."""
    mlp_bias: bool = True
    """Whether the MLP's projections have biases."""
    post_norms: bool = False
    """Gemma 2: the attention's and the MLP's outputs normalised (`ln1_post`, `ln2_post`)
    before they join the residual stream; `hook_attn_out` and `hook_mlp_out` hold them
    normalised, as the bridge's do."""
    attn_softcap: float | None = None
    """Gemma 2: attention scores soft-capped, `cap * tanh(scores / cap)`, before the mask."""
    logit_softcap: float | None = None
    """Gemma 2: logits soft-capped, `cap * tanh(logits / cap)`."""
    pos_offset: int = 0
    """OPT: learned position p is row p + 2 of `pos_embed.weight` (its
    `OPTLearnedPositionalEmbedding` keeps two rows in front), so the table has
    `n_ctx + pos_offset` rows."""
    attention_windows: tuple[int | None, ...] | None = None
    """Sliding-window attention (Mistral, the local layers of Gemma 2 and 3), per layer:
    query i sees keys i - window + 1 .. i (None: every earlier key); None: no window
    anywhere."""
    embed_norm: bool = False
    """BLOOM: a LayerNorm (`embed_ln`, the model's `normalization` and `eps`) on the token
    embeddings before the first block; `hook_embed` holds them normalised, as the bridge's
    does."""
    alibi_slopes: tuple[float, ...] | None = None
    """ALiBi (Press et al. 2022, BLOOM): head h adds `alibi_slopes[h] * j` to its score of
    key j before the softmax, in place of position embeddings (a per-query constant, which
    the softmax ignores, is left out, as Hugging Face's `build_alibi_tensor` leaves it);
    None: no such bias."""

    @property
    def learned_positions(self) -> bool:
        """Whether the model adds learned position embeddings (`pos_embed`): neither rotary
        embeddings nor ALiBi."""
        return not self.rotary and self.alibi_slopes is None

    def window(self, layer: int) -> int | None:
        """The attention window of `layer`, or None where it sees every earlier key."""
        return None if self.attention_windows is None else self.attention_windows[layer]

    @property
    def kv_heads(self) -> int:
        """Key and value heads: `n_kv_heads`, or `n_heads` without grouping."""
        return self.n_kv_heads or self.n_heads

    @property
    def per_head_layout(self) -> bool:
        """Whether `params` already hold one key and value head per query head and every
        bias (what `dense_params` gives)."""
        return self.kv_heads == self.n_heads and self.qkv_bias and self.out_bias and (
            self.mlp_bias
        )


def architecture(spec: ModelSpec | Mapping[str, Any] | Architecture) -> Architecture:
    """Resolve a spec; raise a one-line ValueError for settings this module does not cover.
    An `Architecture` (a pretrained model's, from `architecture_of`) is returned as is."""
    if isinstance(spec, Architecture):
        return spec
    if isinstance(spec, Mapping):
        spec = parse_config(ModelSpec, spec)
    if not isinstance(spec, ModelSpec):
        raise ValueError(f"spec must be an interp.models.ModelSpec, got {type(spec).__name__}")
    return _resolved(spec)


@functools.lru_cache(maxsize=64)
def _resolved(spec: ModelSpec) -> Architecture:
    """`architecture` of a validated (frozen, hashable) spec, remembered: building the
    bridge config costs about as much as a small model's forward pass on a few tokens."""
    cfg = spec.to_bridge_config()
    named = unsupported_features(cfg)
    if named:
        raise ValueError(f"interp.functional does not support {', '.join(named)}")
    return architecture_from_cfg(cfg)


def architecture_from_cfg(cfg: Any, **fields: Any) -> Architecture:
    """The `Architecture` a TransformerLens config describes; `fields` set what the config
    does not say (a pretrained model's rotary layout, grouping, biases)."""
    d_head = int(cfg.d_head)
    use_scale = cfg.use_attn_scale and (cfg.attn_scale or 0) > 0
    values: dict[str, Any] = dict(
        n_layers=int(cfg.n_layers),
        n_heads=int(cfg.n_heads),
        d_head=d_head,
        d_model=int(cfg.d_model),
        d_mlp=None if cfg.attn_only else int(cfg.d_mlp),
        d_vocab=int(cfg.d_vocab),
        d_vocab_out=int(cfg.d_vocab_out),
        n_ctx=int(cfg.n_ctx),
        act_fn=str(cfg.act_fn),
        normalization=cfg.normalization_type.upper() if cfg.normalization_type else None,
        rotary=cfg.positional_embedding_type == "rotary",
        rotary_dim=int(cfg.rotary_dim or d_head),
        rotary_base=float(cfg.rotary_base),
        eps=float(cfg.eps),
        attn_scale=float(cfg.attn_scale) if use_scale else math.sqrt(d_head),
        causal=cfg.attention_dir == "causal",
        parallel_attn_mlp=bool(cfg.parallel_attn_mlp),
    )
    return Architecture(**{**values, **fields})


def unsupported_features(cfg: Any, allowed: Collection[str] = ()) -> list[str]:
    """The settings of a TransformerLens config that the forward pass does not compute,
    bar the `allowed` ones (a pretrained class whose `Architecture` says how)."""
    unsupported = {
        "gated_mlp": bool(cfg.gated_mlp),
        "final_rms": bool(cfg.final_rms),
        "n_key_value_heads (GQA)": cfg.n_key_value_heads not in (None, cfg.n_heads),
        "attn_scores_soft_cap": (cfg.attn_scores_soft_cap or 0) > 0,
        "output_logits_soft_cap": (cfg.output_logits_soft_cap or 0) > 0,
        "rope_scaling": bool(getattr(cfg, "rope_scaling", None)),
    }
    return [name for name, present in unsupported.items() if present and name not in allowed]


def param_shapes(spec: ModelSpec | Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every key of the bridge's `state_dict()` for `spec`, with its shape, in bridge order."""
    return arch_param_shapes(architecture(spec))


def arch_param_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """`param_shapes` of an already resolved `Architecture`."""
    d, hd, kv = arch.d_model, arch.n_heads * arch.d_head, arch.kv_heads * arch.d_head
    shapes: dict[str, tuple[int, ...]] = {"embed.weight": (arch.d_vocab, d)}
    if arch.embed_norm:
        shapes.update(_norm_shapes("embed_ln", d, arch.normalization))
    if arch.learned_positions:
        shapes["pos_embed.weight"] = (arch.n_ctx + arch.pos_offset, d)
    for layer in range(arch.n_layers):
        block = f"blocks.{layer}"
        shapes.update(_norm_shapes(f"{block}.ln1", d, arch.normalization))
        if arch.qk_norm:
            shapes.update({f"{block}.attn.{name}_norm.weight": (arch.d_head,) for name in "qk"})
        for name, width in (("q", hd), ("k", kv), ("v", kv)):
            shapes.update(_linear_shapes(f"{block}.attn.{name}", width, d, arch.qkv_bias))
        shapes.update(_linear_shapes(f"{block}.attn.o", d, hd, arch.out_bias))
        if arch.post_norms:
            shapes.update(_norm_shapes(f"{block}.ln1_post", d, arch.normalization))
        if arch.d_mlp is not None:
            if not arch.shared_norm:
                shapes.update(_norm_shapes(f"{block}.ln2", d, arch.normalization))
            if arch.act_fn == "solu_ln":
                shapes.update(_norm_shapes(f"{block}.mlp.ln", arch.d_mlp, "LN"))
            if arch.gated_mlp:
                shapes.update(_linear_shapes(f"{block}.mlp.gate", arch.d_mlp, d, arch.mlp_bias))
            shapes.update(_linear_shapes(f"{block}.mlp.in", arch.d_mlp, d, arch.mlp_bias))
            shapes.update(_linear_shapes(f"{block}.mlp.out", d, arch.d_mlp, arch.mlp_bias))
            if arch.post_norms:
                shapes.update(_norm_shapes(f"{block}.ln2_post", d, arch.normalization))
    shapes.update(_norm_shapes("ln_final", d, arch.normalization))
    shapes["unembed.weight"] = (arch.d_vocab_out, d)
    shapes["unembed.bias"] = (arch.d_vocab_out,)
    return shapes


def _linear_shapes(prefix: str, d_out: int, d_in: int, bias: bool) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {f"{prefix}.weight": (d_out, d_in)}
    if bias:
        shapes[f"{prefix}.bias"] = (d_out,)
    return shapes


def dense_params(params: Mapping[str, Tensor], arch: Architecture) -> Mapping[str, Tensor]:
    """`params` in the per-head layout of a model without grouped keys or missing biases:
    each query head's own key and value weights (a group's shared ones repeated) and zero
    biases where the model has none. The engines that slice weights head by head (edge
    patching, ACDC's pruning state, head weights) read this; `forward` reads either.
    `params` itself when it is already in that layout (GPT-2, GPT-NeoX, native models)."""
    if arch.per_head_layout:
        return params
    dense = dict(params)
    group = arch.n_heads // arch.kv_heads
    for layer in range(arch.n_layers):
        for key in (f"blocks.{layer}.attn.{name}.{kind}" for name in "kv" for kind in
                    ("weight", "bias")):
            if key in params:  # [kv_heads * d_head, ...] -> [n_heads * d_head, ...]
                grouped = params[key].unflatten(0, (arch.kv_heads, arch.d_head))
                dense[key] = grouped.repeat_interleave(group, dim=0).flatten(0, 1)
    embed = params["embed.weight"]
    for name, shape in arch_param_shapes(_per_head(arch)).items():
        if name not in dense:  # a bias the model does not have
            dense[name] = embed.new_zeros(shape)
    return dense


def _per_head(arch: Architecture) -> Architecture:
    """`arch` with one key and value head per query head and every bias."""
    return dataclasses.replace(
        arch, n_kv_heads=None, qkv_bias=True, out_bias=True, mlp_bias=True
    )


def _norm_shapes(prefix: str, width: int, kind: str | None) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    if kind in NORMS_WITH_WEIGHT:
        shapes[f"{prefix}.weight"] = (width,)
    if kind in NORMS_WITH_BIAS:
        shapes[f"{prefix}.bias"] = (width,)
    return shapes


def params_of(model: TransformerBridge) -> Params:
    """Detached copies of `live_params(model)`, same keys: editing them leaves the model be."""
    return {
        name: tensor.clone(memory_format=torch.contiguous_format)
        for name, tensor in live_params(model).items()
    }


def live_params(model: TransformerBridge) -> Params:
    """The bridge's current weights keyed like `state_dict()`, detached but not copied: for
    reading only (writing into them writes into the model).

    Where each key lives (module and attribute) is worked out once per model and kept on
    it, since the bridge's `state_dict()` converts every key (about 1.5 ms for a 2-layer
    model); the tensors are looked up afresh on every call, so weights loaded or moved to
    another device since are seen. The detached views are kept too, and reused while the
    module holds the same tensor on the same memory (a view shares it, so in-place loads
    show through): a detach is an op dispatched per weight, which on a GPU is host time
    that a patching sweep of a small model notices.

    Weights of Hugging Face `Conv1D` modules (GPT-2's attention output and MLP), which
    store `[in, out]`, are given transposed, as `nn.Linear`'s `[out, in]`: the layout of
    `arch_param_shapes` (a view, no copy).
    """
    from transformers.pytorch_utils import Conv1D  # transformers loads in ~1 s

    owners = model.__dict__.get("_interp_param_owners")
    if owners is None:
        found = {
            id(tensor): (module, name)
            for module in model.modules()
            for name, tensor in itertools.chain(module._parameters.items(), module._buffers.items())
            if tensor is not None
        }
        state = model.state_dict(keep_vars=True)
        if not all(id(tensor) in found for tensor in state.values()):
            # no module holds some tensor: read state_dict as is, unless it may hold a
            # Conv1D weight, whose layout could then not be told apart
            if any(isinstance(module, Conv1D) for module in model.modules()):
                raise ValueError("cannot tell which of this bridge's weights are Conv1D's")
            return {name: tensor.detach() for name, tensor in state.items()}
        owners = {key: found[id(tensor)] for key, tensor in state.items()}
        model.__dict__["_interp_param_owners"] = owners
    views: dict[str, tuple[Tensor, int, Tensor]] = model.__dict__.setdefault(
        "_interp_param_views", {}
    )
    live: Params = {}
    for key, (module, name) in owners.items():
        tensor = getattr(module, name)
        kept = views.get(key)
        if kept is None or kept[0] is not tensor or kept[1] != tensor.data_ptr() or (
            kept[2].dtype != tensor.dtype or kept[2].numel() != tensor.numel()
        ):
            view = tensor.detach()
            if name == "weight" and isinstance(module, Conv1D):
                view = view.t()
            kept = (tensor, tensor.data_ptr(), view)
            views[key] = kept
        live[key] = kept[2]
    return live


def load_params(model: TransformerBridge, params: Mapping[str, Tensor]) -> None:
    """Copy `params` into the bridge's weights in place (strict: the keys and shapes of
    `live_params(model)`, so a GPT-2 `Conv1D` weight is given as `[out, in]` too)."""
    live = live_params(model)
    check_layout(params, {name: tuple(t.shape) for name, t in live.items()}, leading=0,
                 what="params")
    tied: dict[tuple[int, tuple[int, ...], tuple[int, ...]], str] = {}
    for name, target in live.items():
        first = tied.setdefault((target.data_ptr(), target.shape, target.stride()), name)
        if first != name and not torch.equal(params[first], params[name]):
            raise ValueError(f"params[{name!r}] must equal params[{first!r}]: the model ties them")
    with torch.no_grad():
        for name, target in live.items():
            target.copy_(params[name].detach())


def stack_params(params: Sequence[Mapping[str, Tensor]]) -> Params:
    """Stack S parameter dicts with identical keys and shapes along a new leading axis."""
    if len(params) == 0:
        raise ValueError("stack_params needs at least one parameter dict")
    first = params[0]
    layout = {name: tuple(t.shape) for name, t in first.items()}
    for index, other in enumerate(params[1:], start=1):
        try:
            check_layout(other, layout, leading=0, what=f"params[{index}]")
        except ValueError as error:
            raise ValueError(f"{error} (compared with params[0])") from None
    return {name: torch.stack([p[name] for p in params]) for name in first}


def unstack_params(stacked: Mapping[str, Tensor]) -> list[Params]:
    """Split stacked parameters into S dicts (views into `stacked`, sharing its memory)."""
    sizes = {t.shape[0] if t.dim() else None for t in stacked.values()}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"stacked params need one common leading axis, got sizes {sizes}")
    (size,) = sizes
    return [{name: t[index] for name, t in stacked.items()} for index in range(size)]


def check_layout(
    params: Mapping[str, Tensor],
    expected: Mapping[str, tuple[int, ...]],
    *,
    leading: int,
    what: str,
) -> None:
    """Same keys as `expected`, each tensor of the expected shape after `leading` axes that
    agree across all tensors."""
    if not isinstance(params, Mapping):
        raise ValueError(f"{what} must be a dict of tensors, got {type(params).__name__}")
    missing = [name for name in expected if name not in params]
    extra = [name for name in params if name not in expected]
    if missing or extra:
        raise ValueError(
            f"{what} do not fit the model: missing {_few(missing)}, unexpected {_few(extra)}"
        )
    leads: set[tuple[int, ...]] = set()
    for name, shape in expected.items():
        tensor = params[name]
        if not isinstance(tensor, Tensor):
            raise ValueError(f"{what}[{name!r}] is a {type(tensor).__name__}, not a tensor")
        if tuple(tensor.shape[leading:]) != shape or tensor.dim() != len(shape) + leading:
            lead_text = "S, " * leading
            raise ValueError(
                f"{what}[{name!r}] has shape {tuple(tensor.shape)}, expected ({lead_text}"
                f"{', '.join(map(str, shape))})"
            )
        leads.add(tuple(tensor.shape[:leading]))
    if len(leads) > 1:
        raise ValueError(f"{what} disagree on the leading axis: sizes {sorted(leads)}")


def _few(names: Sequence[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(repr(n) for n in names[:4])
    return shown + (f" and {len(names) - 4} more" if len(names) > 4 else "")
