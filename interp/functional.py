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

Parameter layout: `interp.param_layout` (keys and shapes, `params_of`, `load_params`,
`stack_params`), whose public names this module re-exports.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from interp.models import ModelSpec
from interp.param_layout import (
    NORMS_WITH_BIAS,
    NORMS_WITH_WEIGHT,
    TRAINABLE_EXCLUDED,
    Architecture,
    Params,
    arch_param_shapes,
    architecture,
    check_layout,
    live_params,
    load_params,
    param_shapes,
    params_of,
    stack_params,
    unstack_params,
)

__all__ = [
    "TRAINABLE_EXCLUDED",
    "Architecture",
    "Params",
    "architecture",
    "attention_output",
    "batched_forward",
    "causal_bias",
    "first_layer_tables",
    "forward",
    "head_projection",
    "linear",
    "live_params",
    "load_params",
    "mix_heads",
    "mlp",
    "normalize",
    "param_shapes",
    "params_of",
    "stack_params",
    "unembed",
    "unstack_params",
]


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
    patterns: bool = True,
    token_tables: bool = False,
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
        patterns: False: no attention pattern is formed, so none is cached; each
            attention is one fused kernel (`mix_heads(fused=True)`), equal to ~1e-6 rather
            than bit for bit (the default is the bridge's own arithmetic).
        token_tables: Compute the first layer's residual stream, queries, keys and values
            once per (position, token) and gather them (`first_layer_tables`), instead of
            once per (example, position): the same values to float rounding, and much less
            work when the batch is larger than the vocabulary (the grokking training
            set: 3,831 examples of a 115-token vocabulary). Absolute position embeddings only; no
            `cache`.
    """
    arch = architecture(spec)
    if validate:
        check_layout(params, arch_param_shapes(arch), leading=0, what="params")
        check_tokens(tokens, arch)
    if last_layer_positions is not None and (final_position_only or logit_positions is not None):
        raise ValueError("last_layer_positions replaces final_position_only and logit_positions")
    last_query: slice | Tensor | None = last_layer_positions
    if final_position_only:
        last_query = slice(tokens.shape[1] - 1, tokens.shape[1])
    if token_tables:
        _check_token_tables(arch, cache)
    return _logits(
        params, tokens, arch, cache, last_query, logit_positions, fused=not patterns,
        token_tables=token_tables,
    )


def batched_forward(
    stacked: Mapping[str, Tensor],
    tokens: Int[Tensor, "batch pos"],
    spec: ModelSpec | Mapping[str, Any],
    final_position_only: bool = False,
    *,
    validate: bool = True,
    token_tables: bool = False,
) -> Float[Tensor, "S batch pos d_vocab_out"]:
    """`forward` of S models at once: `stacked` holds each parameter with a leading axis S
    (`stack_params`); the tokens are shared. One `torch.func.vmap` over the leading axis.

    `validate=False` skips the checks of keys, shapes and token ids (and the host sync of
    the id range): for a training loop that checked its fixed inputs once."""
    arch = architecture(spec)
    if validate:
        check_layout(stacked, arch_param_shapes(arch), leading=1, what="stacked params")
        check_tokens(tokens, arch)

    if token_tables:
        _check_token_tables(arch, None)
    last_query = slice(tokens.shape[1] - 1, tokens.shape[1]) if final_position_only else None

    def one_model(params: Mapping[str, Tensor]) -> Tensor:
        return _logits(
            params, tokens, arch, None, last_query, batched=True, token_tables=token_tables
        )

    return torch.func.vmap(one_model)(dict(stacked))


def check_tokens(tokens: Any, arch: Architecture) -> None:
    """Raise a one-line ValueError unless `tokens` is a `[batch, pos]` integer tensor of ids
    in the vocabulary and at most `n_ctx` positions (one host sync: the id range)."""
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
        low, high = torch.stack(torch.aminmax(tokens)).tolist()
        if low < 0 or high >= arch.d_vocab:
            raise ValueError(f"token ids span {low}..{high}, outside 0..{arch.d_vocab - 1}")


def _logits(
    params: Mapping[str, Tensor],
    tokens: Tensor,
    arch: Architecture,
    cache: dict[str, Tensor] | None,
    last_query: slice | Tensor | None = None,
    logit_positions: Tensor | None = None,
    batched: bool = False,
    fused: bool = False,
    token_tables: bool = False,
) -> Tensor:
    """The forward pass proper: no checks and no data-dependent Python control flow.
    `last_query`: the positions the last layer computes its queries at (None: all).
    `batched`: running under `vmap` over stacked parameters (see `_attention`).
    `fused`: attention as one kernel, no pattern (see `mix_heads`); not with `batched`.
    `token_tables`: the first layer from per-(position, token) tables (`first_layer_tables`)."""
    batch, seq = tokens.shape
    record = _recorder(cache)
    rope: tuple[Tensor, Tensor] | None = None
    first_qkv: tuple[Tensor, Tensor, Tensor] | None = None
    if token_tables:
        first_query = last_query if last_query is not None and arch.n_layers == 1 else None
        resid, first_qkv = first_layer_tables(params, tokens, arch, first_query)
    else:
        resid = record("hook_embed", F.embedding(tokens, params["embed.weight"]))
        if arch.rotary:
            rope = _rotary_tables(arch, seq, tokens.device)
        else:
            pos = params["pos_embed.weight"][:seq].expand(batch, seq, arch.d_model)
            resid = resid + record("hook_pos_embed", pos)

    for layer in range(arch.n_layers):
        block = f"blocks.{layer}"
        record(f"{block}.hook_resid_pre", resid)
        last = last_query is not None and layer == arch.n_layers - 1
        query = last_query if last else slice(0, seq)
        if layer == 0 and first_qkv is not None:
            attn_out, pattern = _attention_of(
                params, f"{block}.attn", first_qkv, arch, rope, query, record, seq
            )
        else:
            normed = normalize(params, f"{block}.ln1", resid, arch.normalization, arch.eps)
            attn_out, pattern = _attention(
                params, f"{block}.attn", normed, arch, rope, query, record, batched, fused
            )
        if pattern is not None:
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


def first_layer_tables(
    params: Mapping[str, Tensor],
    tokens: Int[Tensor, "batch pos"],
    arch: Architecture,
    query: slice | Tensor | None = None,
) -> tuple[
    Float[Tensor, "batch pos d_model"],
    tuple[
        Float[Tensor, "batch query head d_head"],
        Float[Tensor, "batch pos head d_head"],
        Float[Tensor, "batch pos head d_head"],
    ],
]:
    """The embedded residual stream and the first attention's queries (at `query`; None:
    every position), keys and values, gathered from tables over (position, token).

    With absolute position embeddings, the first block's input at position i depends on
    the token there alone: `W_E[t] + W_pos[i]`, and so do its normalised input and its
    q, k and v. Computed for every (position, token) pair, they cost `pos x d_vocab` rows
    of arithmetic instead of `batch x pos`; each example's rows are then gathered, all in
    one `F.embedding` (whose backward sums the examples' gradients per row). The same
    values as the per-example pass to float rounding (the residual stream bit for bit)."""
    batch, seq = tokens.shape
    embed = params["embed.weight"]
    d_vocab, d_model, width = embed.shape[0], arch.d_model, arch.n_heads * arch.d_head
    table = embed + params["pos_embed.weight"][:seq, None]  # [pos, d_vocab, d_model]
    normed = normalize(params, "blocks.0.ln1", table, arch.normalization, arch.eps)
    prefix = "blocks.0.attn"
    weight = torch.cat([params[f"{prefix}.{name}.weight"] for name in "qkv"])
    bias = torch.cat([params[f"{prefix}.{name}.bias"] for name in "qkv"])
    # One table, one gather: [pos * d_vocab, d_model + 3 * heads * d_head].
    rows = torch.cat([table, linear(normed, weight, bias)], dim=-1).flatten(0, 1)
    at = tokens + _row_offsets(seq, d_vocab, tokens.device)  # [batch, pos]
    resid, q, k, v = (  # one split: its backward is one concatenation
        part.unflatten(-1, (arch.n_heads, arch.d_head)) if i else part
        for i, part in enumerate(F.embedding(at, rows).split([d_model, width, width, width], -1))
    )
    return resid, (q if query is None else q[:, query], k, v)


@functools.lru_cache(maxsize=32)
def _row_offsets(seq: int, d_vocab: int, device: torch.device) -> Int[Tensor, " pos"]:
    """`i * d_vocab` for each position i: the first row of position i's block of a
    `first_layer_tables` table; kept per size and device rather than rebuilt each call."""
    with torch.inference_mode(False), torch.no_grad():
        return torch.arange(seq, device=device) * d_vocab


def _check_token_tables(arch: Architecture, cache: dict[str, Tensor] | None) -> None:
    """Raise a one-line ValueError where `token_tables=True` cannot apply."""
    if arch.rotary:
        raise ValueError("token_tables needs absolute position embeddings; this model is rotary")
    if cache is not None:
        raise ValueError("token_tables keeps no per-example embeddings to cache: pass cache=None")


def unembed(
    params: Mapping[str, Tensor], resid: Float[Tensor, "batch pos d_model"], arch: Architecture
) -> Float[Tensor, "batch pos d_vocab_out"]:
    """Logits from the final residual stream: the final norm, then the unembedding."""
    normed = normalize(params, "ln_final", resid, arch.normalization, arch.eps)
    return linear(normed, params["unembed.weight"], params["unembed.bias"])


def linear(
    x: Float[Tensor, "*lead d_in"], weight: Float[Tensor, "d_out d_in"], bias: Tensor | None
) -> Float[Tensor, "*lead d_out"]:
    """`F.linear`, except under `torch.func.vmap` over stacked weights, where it computes
    `(W @ x^T)^T + b`: the same values, in two kernels where vmap's rule for `F.linear`
    with a batched bias (`addmm`) takes three (it also scales the bias by beta = 1), and
    with the weight's gradient made in the weight's own layout (`grad^T @ x`), which
    autograd then accumulates without a copy (`x @ W^T` gives it transposed: a copy per
    weight per step)."""
    if bias is not None and torch._C._functorch.is_batchedtensor(weight):
        rows = x.reshape(-1, x.shape[-1])
        return torch.matmul(weight, rows.mT).mT.reshape(*x.shape[:-1], -1) + bias
    return F.linear(x, weight, bias)


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
    if kind in NORMS_WITH_WEIGHT:
        x = x * params[f"{prefix}.weight"]
    if kind in NORMS_WITH_BIAS:
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
    batched: bool = False,
    fused: bool = False,
) -> tuple[Float[Tensor, "batch query d_model"], Float[Tensor, "batch head query key"] | None]:
    """Causal multi-head attention of the `query` positions over every position; returns
    the output and the pattern (None when `fused`).

    Under `vmap` over stacked weights (`batched`), a strided slice of the positions is made
    contiguous before its projection: `vmap`'s rule for a linear layer with a batched
    weight otherwise broadcasts the weight to every example (for the grokking benchmark's
    32 seeds, an 8 GB copy and a per-example matmul in each direction). Queries that see
    every key (the last position only) skip the causal mask, which would mask nothing."""
    seq = x.shape[1]
    whole = isinstance(query, slice) and query == slice(0, seq)
    x_query = x if whole else x[:, query]
    if batched and isinstance(query, slice) and not x_query.is_contiguous():
        x_query = x_query.contiguous()
    q = head_projection(params, prefix, "q", x_query, arch)
    k = head_projection(params, prefix, "k", x, arch)
    v = head_projection(params, prefix, "v", x, arch)
    return _attention_of(params, prefix, (q, k, v), arch, rope, query, record, seq, fused)


def _attention_of(
    params: Mapping[str, Tensor],
    prefix: str,
    qkv: tuple[Tensor, Tensor, Tensor],
    arch: Architecture,
    rope: tuple[Tensor, Tensor] | None,
    query: slice | Tensor,
    record: Callable[[str, Tensor], Tensor],
    seq: int,
    fused: bool = False,
) -> tuple[Float[Tensor, "batch query d_model"], Float[Tensor, "batch head query key"] | None]:
    """`_attention` from the queries (at `query`), keys and values `[batch, pos, head,
    d_head]` of its heads."""
    q, k, v = (record(f"{prefix}.hook_{name}", x) for name, x in zip("qkv", qkv, strict=True))
    device = k.device
    sees_every_key = isinstance(query, slice) and min(range(seq)[query], default=0) >= seq - 1
    causal = arch.causal and not sees_every_key
    positions = torch.arange(seq, device=device)[query] if causal or rope is not None else None
    z, pattern = mix_heads(q, k, v, positions, arch, rope, causal=causal, fused=fused)
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
    flat = linear(x, weight, bias)
    return flat.reshape(x.shape[0], x.shape[1], arch.n_heads, arch.d_head)


def mix_heads(
    q: Float[Tensor, "batch query head d_head"] | None,
    k: Float[Tensor, "batch key head d_head"] | None,
    v: Float[Tensor, "batch key head d_head"],
    query_positions: Int[Tensor, " query"] | None,
    arch: Architecture,
    rope: tuple[Tensor, Tensor] | None = None,
    pattern: Float[Tensor, "batch head query key"] | None = None,
    *,
    causal: bool | None = None,
    fused: bool = False,
) -> tuple[Float[Tensor, "batch query head d_head"], Float[Tensor, "batch head query key"] | None]:
    """Attention of queries at `query_positions` over keys 0..key-1 (causal unless the
    model is bidirectional): returns each head's output `z` and the pattern. With
    `pattern` given, q and k are not read (pass None) and `z = pattern @ v`. `rope`: the
    cos/sin tables of every key position. `causal=False` skips the mask (default: the
    model's setting), for queries that see every key anyway; `query_positions` may then be
    None when there is no `rope` either.

    `fused=True`, for callers that do not read the pattern: one
    `F.scaled_dot_product_attention` kernel (the causal mask an additive table kept per
    size and device) instead of the seven of scores, scale, mask, softmax and mixing; the
    pattern comes back as None. The same function to float rounding (~1e-6). Not under
    `torch.func.vmap`: the fused kernels have no batching rule there."""
    values = v.transpose(1, 2)
    if pattern is None:
        if q is None or k is None:
            raise ValueError("mix_heads needs q and k, or a pattern")
        causal = arch.causal if causal is None else causal
        if query_positions is None and (causal or rope is not None):
            raise ValueError("mix_heads needs query_positions for the causal mask or rotary")
        queries, keys = q.transpose(1, 2), k.transpose(1, 2)
        if rope is not None and query_positions is not None:
            query_rope = (rope[0][query_positions], rope[1][query_positions])
            queries = _apply_rotary(queries, query_rope, arch.rotary_dim)
            keys = _apply_rotary(keys, rope, arch.rotary_dim)
        masked = causal and query_positions is not None
        if fused:
            bias = (
                causal_bias(keys.shape[2], keys.device, queries.dtype)[query_positions]
                if masked
                else None
            )
            z = F.scaled_dot_product_attention(
                queries, keys, values, attn_mask=bias, scale=1.0 / arch.attn_scale
            )
            return z.transpose(1, 2), None
        scores = torch.matmul(queries, keys.transpose(-2, -1)) / arch.attn_scale
        if masked:
            key_positions = torch.arange(keys.shape[2], device=keys.device)
            mask = key_positions[None, :] > query_positions[:, None]
            # Every query sees key 0, so no row is all -inf: masked weights come out 0.
            pattern = F.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        else:
            pattern = F.softmax(scores, dim=-1)
    return torch.matmul(pattern, values).transpose(1, 2), pattern


@functools.lru_cache(maxsize=32)
def causal_bias(
    n_keys: int, device: torch.device, dtype: torch.dtype
) -> Float[Tensor, "query key"]:
    """The additive causal mask of `n_keys` positions: 0 where query i may see key j
    (j <= i), -inf elsewhere; kept per size, device and dtype (rows are picked by index,
    so a sweep builds it once). Made outside inference mode, so that autograd may save it."""
    with torch.inference_mode(False), torch.no_grad():
        positions = torch.arange(n_keys, device=device)
        above = positions[None, :] > positions[:, None]
        return torch.zeros(n_keys, n_keys, device=device, dtype=dtype).masked_fill_(
            above, float("-inf")
        )


def attention_output(
    params: Mapping[str, Tensor], prefix: str, z: Float[Tensor, "batch query head d_head"]
) -> Float[Tensor, "batch query d_model"]:
    """The attention's output: every head's `z` through `W_O`, plus the output bias."""
    flat = z.reshape(z.shape[0], z.shape[1], -1)
    return linear(flat, params[f"{prefix}.o.weight"], params[f"{prefix}.o.bias"])


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
        linear(x, params[f"{prefix}.in.weight"], params[f"{prefix}.in.bias"]),
    )
    post = _activation(arch.act_fn, pre, inplace=inplace and not pre.requires_grad)
    if arch.act_fn == "solu_ln":
        post = normalize(params, f"{prefix}.ln", post, "LN", arch.eps)
    record(f"{prefix}.hook_post", post)
    return linear(post, params[f"{prefix}.out.weight"], params[f"{prefix}.out.bias"])


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
