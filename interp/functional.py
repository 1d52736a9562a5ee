"""A pure-function forward pass of the native models that `interp.models.build` makes.

`forward(params, tokens, spec)` computes the same logits as the bridge that `build(spec)`
returns, from a plain dict of tensors keyed exactly like that bridge's `state_dict()`, with
no hooks, wrappers or module state. It composes with `torch.func`: `torch.func.grad` for
gradients, `torch.func.vmap` over parameters stacked along a leading axis
(`stack_params`, `batched_forward`), so S seeds of one model train as one batched
computation. After training, `load_params(model, params)` puts the weights back into a
bridge, which then gives the same logits. The pieces of a block (`normalize`,
`head_projection`, `mix_heads`, `attention_output`, `mlp`, `unembed`) are public so that
other engines, such as incremental activation patching, can rerun part of a forward pass
with exactly the same arithmetic.

The math mirrors TransformerLens's `NativeModel` and its bridge (pre-norm blocks of causal
multi-head attention, Vaswani et al. 2017, "Attention Is All You Need", and an MLP):

    resid = W_E[tokens] + W_pos[:pos]                  (rotary models: no W_pos)
    resid += attn(norm(resid)); resid += mlp(norm(resid))   for each block
    logits = norm(resid) @ W_U.T + b_U

Parameter layout (nn.Linear's [out, in] weights; H heads of width d_head):

    embed.weight [d_vocab, d_model]            pos_embed.weight [n_ctx, d_model]
    blocks.{l}.ln1.weight / .bias [d_model]    blocks.{l}.ln2.* (not attn_only)
    blocks.{l}.attn.{q,k,v}.weight [H*d_head, d_model], .bias [H*d_head]
    blocks.{l}.attn.o.weight [d_model, H*d_head], .bias [d_model]
    blocks.{l}.mlp.in.weight [d_mlp, d_model], .bias [d_mlp]
    blocks.{l}.mlp.out.weight [d_model, d_mlp], .bias [d_model]
    blocks.{l}.mlp.ln.weight / .bias [d_mlp]   (act_fn "solu_ln" only)
    ln_final.weight / .bias [d_model]          unembed.weight [d_vocab_out, d_model]
    unembed.bias [d_vocab_out]

Norm parameters follow the normalization: LN has weight and bias, RMS weight only, LNPre,
RMSPre and None none. `unembed.bias` is a zero buffer in the bridge, not a parameter:
a training loop that should match the bridge's trainable set leaves it out of the update
(`TRAINABLE_EXCLUDED`).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from pydantic import ValidationError
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from interp.models import ModelSpec

Params = dict[str, Tensor]

TRAINABLE_EXCLUDED: frozenset[str] = frozenset({"unembed.bias"})
"""Keys of `params_of` that the bridge holds as buffers, not trainable parameters."""

_NORMS_WITH_WEIGHT = ("LN", "RMS")
_NORMS_WITH_BIAS = ("LN",)


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


def architecture(spec: ModelSpec | Mapping[str, Any]) -> Architecture:
    """Resolve a spec; raise a one-line ValueError for settings this module does not cover."""
    if isinstance(spec, Mapping):
        try:
            spec = ModelSpec.model_validate(dict(spec))
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "spec"
            raise ValueError(f"invalid model spec: {where}: {first['msg']}") from None
    if not isinstance(spec, ModelSpec):
        raise ValueError(f"spec must be an interp.models.ModelSpec, got {type(spec).__name__}")
    return _resolved(spec)


@functools.lru_cache(maxsize=64)
def _resolved(spec: ModelSpec) -> Architecture:
    """`architecture` of a validated (frozen, hashable) spec, remembered: building the
    bridge config costs about as much as a small model's forward pass on a few tokens."""
    cfg = spec.to_bridge_config()
    unsupported = {
        "gated_mlp": bool(cfg.gated_mlp),
        "final_rms": bool(cfg.final_rms),
        "n_key_value_heads (GQA)": cfg.n_key_value_heads not in (None, cfg.n_heads),
        "attn_scores_soft_cap": cfg.attn_scores_soft_cap > 0,
        "output_logits_soft_cap": cfg.output_logits_soft_cap > 0,
        "rope_scaling": bool(getattr(cfg, "rope_scaling", None)),
    }
    named = [name for name, present in unsupported.items() if present]
    if named:
        raise ValueError(f"interp.functional does not support {', '.join(named)}")
    use_scale = cfg.use_attn_scale and cfg.attn_scale > 0
    d_head = cast(int, spec.d_head)  # ModelSpec resolves both defaults
    d_vocab_out = cast(int, spec.d_vocab_out)
    return Architecture(
        n_layers=spec.n_layers,
        n_heads=spec.n_heads,
        d_head=d_head,
        d_model=spec.d_model,
        d_mlp=spec.d_mlp,
        d_vocab=spec.d_vocab,
        d_vocab_out=d_vocab_out,
        n_ctx=spec.n_ctx,
        act_fn=spec.act_fn,
        normalization=spec.normalization.upper() if spec.normalization else None,
        rotary=spec.positional_embedding == "rotary",
        rotary_dim=int(cfg.rotary_dim or d_head),
        rotary_base=float(cfg.rotary_base),
        eps=float(cfg.eps),
        attn_scale=float(cfg.attn_scale) if use_scale else math.sqrt(d_head),
        causal=spec.attention == "causal",
    )


def param_shapes(spec: ModelSpec | Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every key of the bridge's `state_dict()` for `spec`, with its shape, in bridge order."""
    return _param_shapes(architecture(spec))


def _param_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    d, hd = arch.d_model, arch.n_heads * arch.d_head
    shapes: dict[str, tuple[int, ...]] = {"embed.weight": (arch.d_vocab, d)}
    if not arch.rotary:
        shapes["pos_embed.weight"] = (arch.n_ctx, d)
    for layer in range(arch.n_layers):
        block = f"blocks.{layer}"
        shapes.update(_norm_shapes(f"{block}.ln1", d, arch.normalization))
        for name in ("q", "k", "v"):
            shapes[f"{block}.attn.{name}.weight"] = (hd, d)
            shapes[f"{block}.attn.{name}.bias"] = (hd,)
        shapes[f"{block}.attn.o.weight"] = (d, hd)
        shapes[f"{block}.attn.o.bias"] = (d,)
        if arch.d_mlp is not None:
            shapes.update(_norm_shapes(f"{block}.ln2", d, arch.normalization))
            if arch.act_fn == "solu_ln":
                shapes.update(_norm_shapes(f"{block}.mlp.ln", arch.d_mlp, "LN"))
            shapes[f"{block}.mlp.in.weight"] = (arch.d_mlp, d)
            shapes[f"{block}.mlp.in.bias"] = (arch.d_mlp,)
            shapes[f"{block}.mlp.out.weight"] = (d, arch.d_mlp)
            shapes[f"{block}.mlp.out.bias"] = (d,)
    shapes.update(_norm_shapes("ln_final", d, arch.normalization))
    shapes["unembed.weight"] = (arch.d_vocab_out, d)
    shapes["unembed.bias"] = (arch.d_vocab_out,)
    return shapes


def _norm_shapes(prefix: str, width: int, kind: str | None) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    if kind in _NORMS_WITH_WEIGHT:
        shapes[f"{prefix}.weight"] = (width,)
    if kind in _NORMS_WITH_BIAS:
        shapes[f"{prefix}.bias"] = (width,)
    return shapes


def params_of(model: TransformerBridge) -> Params:
    """Detached copies of `model.state_dict()`, same keys: editing them leaves the model be."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def live_params(model: TransformerBridge) -> Params:
    """The bridge's current weights keyed like `state_dict()`, detached but not copied: for
    reading only (writing into them writes into the model).

    Where each key lives (module and attribute) is worked out once per model and kept on
    it, since the bridge's `state_dict()` converts every key (about 1.5 ms for a 2-layer
    model); the tensors are looked up afresh on every call, so weights loaded or moved to
    another device since are seen.
    """
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
            return {name: tensor.detach() for name, tensor in state.items()}
        owners = {key: found[id(tensor)] for key, tensor in state.items()}
        model.__dict__["_interp_param_owners"] = owners
    return {key: getattr(module, name).detach() for key, (module, name) in owners.items()}


def load_params(model: TransformerBridge, params: Mapping[str, Tensor]) -> None:
    """Copy `params` into the bridge's weights in place (strict: same keys, same shapes)."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    _check_layout(params, expected, leading=0, what="params")
    with torch.no_grad():
        model.load_state_dict({name: t.detach() for name, t in params.items()}, strict=True)


def forward(
    params: Mapping[str, Tensor],
    tokens: Int[Tensor, "batch pos"],
    spec: ModelSpec | Mapping[str, Any],
    *,
    cache: dict[str, Tensor] | None = None,
    validate: bool = True,
    final_position_only: bool = False,
    logit_positions: Int[Tensor, " n"] | None = None,
    last_layer_positions: Int[Tensor, " n"] | None = None,
) -> Float[Tensor, "batch pos d_vocab_out"]:
    """Logits of the native model `spec` with weights `params` on `tokens`.

    Args:
        params: Tensors keyed like the bridge's `state_dict()` (see `param_shapes`).
        tokens: Token ids, at most `spec.n_ctx` positions.
        spec: The model's shape.
        cache: When a dict, filled with activations under TransformerLens hook names:
            `hook_embed`, `hook_pos_embed` [batch pos d_model]; per layer l
            `blocks.{l}.hook_resid_pre`, `.hook_attn_out`, `.hook_resid_mid`,
            `.hook_mlp_out`, `.hook_resid_post` [batch pos d_model],
            `blocks.{l}.attn.hook_pattern` [batch head query key],
            `blocks.{l}.attn.hook_q`, `.hook_k`, `.hook_v` (before rotary), `.hook_z`
            [batch pos head d_head],
            `blocks.{l}.mlp.hook_pre`, `blocks.{l}.mlp.hook_post` [batch pos d_mlp].
            Leave it None inside `torch.func.vmap`.
        validate: Check keys, shapes and token ids first (one host sync for the id range).
            Pass False inside your own `vmap` over tokens, or to skip the sync.
        final_position_only: Compute only the logits of the last position, `[batch, 1,
            d_vocab_out]`. The last layer then runs its queries, MLP and unembedding at
            that position alone (earlier positions still give its keys and values), which
            is exact and, for a one-layer model such as the grokking one, about 2.5x less
            work. Cache entries of the last layer then cover that position only.
        logit_positions: Unembed only these positions: logits `[batch, n, d_vocab_out]`
            (every layer still runs at every position; the cache is complete). The
            unembedding is often the largest matmul of a small model.
        last_layer_positions: Like `final_position_only`, for these positions (sorted):
            the last layer's queries, MLP and the unembedding run there only, logits
            `[batch, n, d_vocab_out]`; the last layer's cache entries other than its
            `resid_pre`, `hook_k` and `hook_v` cover these positions only.
    """
    arch = architecture(spec)
    if validate:
        _check_layout(params, _param_shapes(arch), leading=0, what="params")
        _check_tokens(tokens, arch)
    if last_layer_positions is not None and (final_position_only or logit_positions is not None):
        raise ValueError("last_layer_positions replaces final_position_only and logit_positions")
    last_query: slice | Tensor | None = last_layer_positions
    if final_position_only:
        last_query = slice(tokens.shape[1] - 1, tokens.shape[1])
    return _logits(params, tokens, arch, cache, last_query, logit_positions)


def batched_forward(
    stacked: Mapping[str, Tensor],
    tokens: Int[Tensor, "batch pos"],
    spec: ModelSpec | Mapping[str, Any],
    final_position_only: bool = False,
) -> Float[Tensor, "S batch pos d_vocab_out"]:
    """`forward` of S models at once: `stacked` holds each parameter with a leading axis S
    (`stack_params`); the tokens are shared. One `torch.func.vmap` over the leading axis."""
    arch = architecture(spec)
    _check_layout(stacked, _param_shapes(arch), leading=1, what="stacked params")
    _check_tokens(tokens, arch)

    last_query = slice(tokens.shape[1] - 1, tokens.shape[1]) if final_position_only else None

    def one_model(params: Mapping[str, Tensor]) -> Tensor:
        return _logits(params, tokens, arch, None, last_query)

    return torch.func.vmap(one_model)(dict(stacked))


def stack_params(params: Sequence[Mapping[str, Tensor]]) -> Params:
    """Stack S parameter dicts with identical keys and shapes along a new leading axis."""
    if len(params) == 0:
        raise ValueError("stack_params needs at least one parameter dict")
    first = params[0]
    layout = {name: tuple(t.shape) for name, t in first.items()}
    for index, other in enumerate(params[1:], start=1):
        try:
            _check_layout(other, layout, leading=0, what=f"params[{index}]")
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


def _check_layout(
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


def _check_tokens(tokens: Any, arch: Architecture) -> None:
    if not isinstance(tokens, Tensor) or tokens.dim() != 2:
        shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be a [batch, pos] tensor, got {shape}")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
    if not 1 <= tokens.shape[1] <= arch.n_ctx:
        raise ValueError(
            f"tokens have {tokens.shape[1]} positions; the model takes 1..{arch.n_ctx}"
        )
    if tokens.numel():
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= arch.d_vocab:
            raise ValueError(f"token ids span {low}..{high}, outside 0..{arch.d_vocab - 1}")


def _logits(
    params: Mapping[str, Tensor],
    tokens: Tensor,
    arch: Architecture,
    cache: dict[str, Tensor] | None,
    last_query: slice | Tensor | None = None,
    logit_positions: Tensor | None = None,
) -> Tensor:
    """The forward pass proper: no checks and no data-dependent Python control flow.
    `last_query`: the positions the last layer computes its queries at (None: all)."""
    batch, seq = tokens.shape
    record = _recorder(cache)
    resid = record("hook_embed", F.embedding(tokens, params["embed.weight"]))
    rope: tuple[Tensor, Tensor] | None = None
    if arch.rotary:
        rope = _rotary_tables(arch, seq, tokens.device)
    else:
        pos = params["pos_embed.weight"][:seq].expand(batch, seq, arch.d_model)
        resid = resid + record("hook_pos_embed", pos)

    for layer in range(arch.n_layers):
        block = f"blocks.{layer}"
        record(f"{block}.hook_resid_pre", resid)
        normed = normalize(params, f"{block}.ln1", resid, arch.normalization, arch.eps)
        last = last_query is not None and layer == arch.n_layers - 1
        query = last_query if last else slice(0, seq)
        attn_out, pattern = _attention(
            params, f"{block}.attn", normed, arch, rope, query, record
        )
        record(f"{block}.attn.hook_pattern", pattern)
        resid = resid[:, query] + record(f"{block}.hook_attn_out", attn_out)
        if arch.d_mlp is not None:
            record(f"{block}.hook_resid_mid", resid)
            normed = normalize(params, f"{block}.ln2", resid, arch.normalization, arch.eps)
            mlp_out = mlp(params, f"{block}.mlp", normed, arch, record)
            resid = resid + record(f"{block}.hook_mlp_out", mlp_out)
        record(f"{block}.hook_resid_post", resid)

    if logit_positions is not None:
        resid = resid[:, logit_positions]
    return unembed(params, resid, arch)


def unembed(
    params: Mapping[str, Tensor], resid: Float[Tensor, "batch pos d_model"], arch: Architecture
) -> Float[Tensor, "batch pos d_vocab_out"]:
    """Logits from the final residual stream: the final norm, then the unembedding."""
    normed = normalize(params, "ln_final", resid, arch.normalization, arch.eps)
    return F.linear(normed, params["unembed.weight"], params["unembed.bias"])


def _recorder(cache: dict[str, Tensor] | None) -> Callable[[str, Tensor], Tensor]:
    """A pass-through that also stores each activation in `cache` when there is one."""

    def record(name: str, value: Tensor) -> Tensor:
        if cache is not None:
            cache[name] = value
        return value

    return record


def normalize(
    params: Mapping[str, Tensor], prefix: str, x: Tensor, kind: str | None, eps: float
) -> Tensor:
    """Pre-norm as the bridge computes it, in float32: LayerNorm (Ba et al. 2016) centres
    then divides by the root mean square; RMSNorm (Zhang & Sennrich 2019) only divides."""
    if kind is None:
        return x
    if kind == "LN" and x.dtype == torch.float32:  # the same formula as one fused kernel
        weight, bias = params[f"{prefix}.weight"], params[f"{prefix}.bias"]
        return F.layer_norm(x, weight.shape, weight, bias, eps)
    dtype = x.dtype
    x = x.float()
    if kind in ("LN", "LNPRE"):
        x = x - x.mean(-1, keepdim=True)
    if kind == "RMS":  # the bridge runs the native RMSNorm module here, which uses rsqrt
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    else:
        x = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    if kind in _NORMS_WITH_WEIGHT:
        x = x * params[f"{prefix}.weight"]
    if kind in _NORMS_WITH_BIAS:
        x = x + params[f"{prefix}.bias"]
    return x.to(dtype)


def _attention(
    params: Mapping[str, Tensor],
    prefix: str,
    x: Float[Tensor, "batch pos d_model"],
    arch: Architecture,
    rope: tuple[Tensor, Tensor] | None,
    query: slice | Tensor,
    record: Callable[[str, Tensor], Tensor],
) -> tuple[Float[Tensor, "batch query d_model"], Float[Tensor, "batch head query key"]]:
    """Causal multi-head attention of the `query` positions over every position; returns
    the output and the pattern."""
    q = record(f"{prefix}.hook_q", head_projection(params, prefix, "q", x[:, query], arch))
    k = record(f"{prefix}.hook_k", head_projection(params, prefix, "k", x, arch))
    v = record(f"{prefix}.hook_v", head_projection(params, prefix, "v", x, arch))
    positions = torch.arange(x.shape[1], device=x.device)[query]
    z, pattern = mix_heads(q, k, v, positions, arch, rope)
    return attention_output(params, prefix, record(f"{prefix}.hook_z", z)), pattern


def head_projection(
    params: Mapping[str, Tensor],
    prefix: str,
    name: str,
    x: Float[Tensor, "batch pos d_model"],
    arch: Architecture,
) -> Float[Tensor, "batch pos head d_head"]:
    """The `name` ("q", "k" or "v") of every head of the attention at `prefix`, in
    TransformerLens's hook layout (before rotary embedding)."""
    weight, bias = params[f"{prefix}.{name}.weight"], params[f"{prefix}.{name}.bias"]
    flat = F.linear(x, weight, bias)
    return flat.reshape(x.shape[0], x.shape[1], arch.n_heads, arch.d_head)


def mix_heads(
    q: Float[Tensor, "batch query head d_head"] | None,
    k: Float[Tensor, "batch key head d_head"] | None,
    v: Float[Tensor, "batch key head d_head"],
    query_positions: Int[Tensor, " query"],
    arch: Architecture,
    rope: tuple[Tensor, Tensor] | None = None,
    pattern: Float[Tensor, "batch head query key"] | None = None,
) -> tuple[Float[Tensor, "batch query head d_head"], Float[Tensor, "batch head query key"]]:
    """Attention of queries at `query_positions` over keys 0..key-1 (causal unless the
    model is bidirectional): returns each head's output `z` and the pattern. With
    `pattern` given, q and k are not read (pass None) and `z = pattern @ v`. `rope`: the
    cos/sin tables of every key position."""
    values = v.transpose(1, 2)
    if pattern is None:
        if q is None or k is None:
            raise ValueError("mix_heads needs q and k, or a pattern")
        queries, keys = q.transpose(1, 2), k.transpose(1, 2)
        if rope is not None:
            query_rope = (rope[0][query_positions], rope[1][query_positions])
            queries = _apply_rotary(queries, query_rope, arch.rotary_dim)
            keys = _apply_rotary(keys, rope, arch.rotary_dim)
        scores = torch.matmul(queries, keys.transpose(-2, -1)) / arch.attn_scale
        if arch.causal:
            key_positions = torch.arange(keys.shape[2], device=keys.device)
            mask = key_positions[None, :] > query_positions[:, None]
            # Every query sees key 0, so no row is all -inf: masked weights come out 0.
            pattern = F.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        else:
            pattern = F.softmax(scores, dim=-1)
    return torch.matmul(pattern, values).transpose(1, 2), pattern


def attention_output(
    params: Mapping[str, Tensor], prefix: str, z: Float[Tensor, "batch query head d_head"]
) -> Float[Tensor, "batch query d_model"]:
    """The attention's output: every head's `z` through `W_O`, plus the output bias."""
    flat = z.reshape(z.shape[0], z.shape[1], -1)
    return F.linear(flat, params[f"{prefix}.o.weight"], params[f"{prefix}.o.bias"])


def _rotary_tables(arch: Architecture, seq: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Cos and sin [pos, rotary_dim] of rotary embeddings (Su et al. 2021, RoFormer), in the
    adjacent-pair layout: dimensions 2i and 2i+1 rotate together at frequency i."""
    dim = arch.rotary_dim
    inv_freq = 1.0 / (arch.rotary_base ** (torch.arange(0, dim, 2).float() / dim))
    angles = torch.outer(torch.arange(arch.n_ctx).float(), inv_freq)[:seq]
    cos = angles.cos().repeat_interleave(2, dim=-1).to(device)
    sin = angles.sin().repeat_interleave(2, dim=-1).to(device)
    return cos, sin


def _apply_rotary(x: Tensor, rope: tuple[Tensor, Tensor], dim: int) -> Tensor:
    cos, sin = (table.to(x.dtype) for table in rope)
    rotated, passed = x[..., :dim], x[..., dim:]
    swapped = torch.stack((-rotated[..., 1::2], rotated[..., 0::2]), dim=-1).flatten(-2)
    rotated = rotated * cos + swapped * sin
    return torch.cat([rotated, passed], dim=-1) if passed.shape[-1] else rotated


def mlp(
    params: Mapping[str, Tensor],
    prefix: str,
    x: Float[Tensor, "batch pos d_model"],
    arch: Architecture,
    record: Callable[[str, Tensor], Tensor] | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """The MLP at `prefix` on its (normalised) input; `record` sees `hook_pre`/`hook_post`.

    With no `record` and no gradient to keep, the nonlinearity runs in place on the
    hidden layer: one `[batch, pos, d_mlp]` tensor fewer to allocate, which on a CPU is
    a measurable share of a small model's MLP (fresh memory is paid for in page faults)."""
    inplace = record is None  # nothing keeps hook_pre
    record = record or _recorder(None)
    pre = record(
        f"{prefix}.hook_pre",
        F.linear(x, params[f"{prefix}.in.weight"], params[f"{prefix}.in.bias"]),
    )
    post = _activation(arch.act_fn, pre, inplace=inplace and not pre.requires_grad)
    if arch.act_fn == "solu_ln":
        post = normalize(params, f"{prefix}.ln", post, "LN", arch.eps)
    record(f"{prefix}.hook_post", post)
    return F.linear(post, params[f"{prefix}.out.weight"], params[f"{prefix}.out.bias"])


def _activation(name: str, x: Tensor, inplace: bool = False) -> Tensor:
    """The MLP nonlinearity, overwriting `x` when `inplace` (except SoLU, Elhage et al.
    2022: x * softmax(x))."""
    if name == "relu":
        return F.relu(x, inplace=inplace)
    if name in ("gelu", "gelu_new"):
        approximate = "tanh" if name == "gelu_new" else "none"
        if inplace:
            return torch.ops.aten.gelu_(x, approximate=approximate)
        return F.gelu(x, approximate=approximate)
    if name == "silu":
        return F.silu(x, inplace=inplace)
    if name == "solu_ln":
        return x * F.softmax(x, dim=-1)
    raise ValueError(f"interp.functional does not support act_fn={name!r}")
