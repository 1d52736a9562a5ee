"""A pure-function forward pass of the native models that `interp.models.build` makes, and
of pretrained GPT-2, GPT-NeoX (Pythia), GPT-J, OPT, GPT-Neo, Phi, BLOOM, Llama, Mistral,
Qwen2, Qwen3, Phi-3 and Gemma 1-3.

`forward(params, tokens, spec)` computes the same logits as the bridge that `build(spec)`
returns, from a plain dict of tensors in the layout of `live_params` (the bridge's
`state_dict()` keys, every weight as `nn.Linear`'s `[out, in]`), with no hooks, wrappers
or module state. A pretrained bridge of a covered class runs the same way, with
`forward(live_params(model), tokens, architecture_of(model))` (`interp.pretrained_layout`
says which models are covered and why others are not). It composes with `torch.func`:
`torch.func.grad` for gradients, `torch.func.vmap` over parameters stacked along a leading
axis (`stack_params`, `batched_forward`), so S seeds of one model train as one batched
computation. After training, `load_params(model, params)` puts the weights back into a
bridge, which then gives the same logits. The pieces of a block live in `interp.layers`
(rotary embeddings in `interp.rotary`, score arithmetic and bias tables in
`interp.attention_scores`); the public ones (`embed`, `normalize`, `normalized_parts`,
`linear`, `head_projection`, `mix_heads`, `attention_scores`, `causal_bias`, `alibi_bias`,
`rotary_tables`, `rope_of`, `apply_rotary`, `attention_output`, `mlp`, `block_mlp`,
`unembed`) are re-exported here, so that other engines, such as incremental activation
patching, can rerun part of a forward pass with exactly the same arithmetic.

The math mirrors TransformerLens's `NativeModel` and its bridge (pre-norm blocks of causal
multi-head attention, Vaswani et al. 2017, "Attention Is All You Need", and an MLP):

    resid = W_E[tokens] + W_pos[:pos]    (rotary models, ALiBi: no W_pos; BLOOM: LN(W_E[tokens]))
    resid += attn(norm(resid)); resid += mlp(norm(resid))   for each block
    (parallel blocks, GPT-NeoX: resid += attn(norm1(resid)) + mlp(norm2(resid)))
    (Llama's gated MLP: mlp(x) = W_out (act(W_gate x) * W_in x); grouped-query attention:
     heads of a group share one key and value head)
    logits = norm(resid) @ W_U.T + b_U

Parameter layout: `interp.param_layout` (keys and shapes, `params_of`, `load_params`,
`stack_params`, `dense_params`), whose public names this module re-exports.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from interp.layers import (
    alibi_bias,
    attention,
    attention_of,
    attention_output,
    attention_scores,
    block_mlp,
    causal_bias,
    embed,
    head_projection,
    linear,
    mix_heads,
    mlp,
    normalize,
    normalized_parts,
    qk_norm_of,
    recorder,
    unembed,
)
from interp.models import ModelSpec
from interp.param_layout import (
    TRAINABLE_EXCLUDED,
    Architecture,
    Params,
    arch_param_shapes,
    architecture,
    check_layout,
    dense_params,
    live_params,
    load_params,
    param_shapes,
    params_of,
    stack_params,
    unstack_params,
)
from interp.pretrained_layout import architecture_of, covers
from interp.rotary import apply_rotary, rope_of, rotary_tables

__all__ = [
    "TRAINABLE_EXCLUDED",
    "Architecture",
    "Params",
    "alibi_bias",
    "architecture",
    "architecture_of",
    "apply_rotary",
    "attention_output",
    "attention_scores",
    "activations_at",
    "batched_forward",
    "block_mlp",
    "causal_bias",
    "covers",
    "dense_params",
    "embed",
    "first_layer_tables",
    "forward",
    "head_projection",
    "linear",
    "live_params",
    "load_params",
    "mix_heads",
    "mlp",
    "normalize",
    "normalized_parts",
    "param_shapes",
    "params_of",
    "qk_norm_of",
    "rope_of",
    "rotary_tables",
    "stack_params",
    "unembed",
    "unstack_params",
]


def forward(
    params: Mapping[str, Tensor],
    tokens: Int[Tensor, "batch pos"],
    spec: ModelSpec | Mapping[str, Any] | Architecture,
    *,
    cache: dict[str, Tensor] | None = None,
    validate: bool = True,
    final_position_only: bool = False,
    logit_positions: Int[Tensor, " n"] | None = None,
    last_layer_positions: Int[Tensor, " n"] | None = None,
    patterns: bool = True,
    token_tables: bool = False,
) -> Float[Tensor, "batch pos d_vocab_out"]:
    """Logits of the model `spec` with weights `params` on `tokens`.

    Args:
        params: Tensors in the layout of `live_params` (see `arch_param_shapes`), or of
            `dense_params`.
        tokens: Token ids, at most `spec.n_ctx` positions.
        spec: The model's shape: a native spec, or an `Architecture`
            (`architecture_of(model)`, for a pretrained model too).
        cache: When a dict, filled with activations under TransformerLens hook names:
            `hook_embed`, `hook_pos_embed` [batch pos d_model]; per layer l
            `blocks.{l}.hook_resid_pre`, `.hook_attn_out`, `.hook_resid_mid` (none in
            parallel blocks), `.hook_mlp_out`, `.hook_resid_post` [batch pos d_model],
            `blocks.{l}.attn.hook_pattern` [batch head query key],
            `blocks.{l}.attn.hook_q`, `.hook_k`, `.hook_v` (before rotary; keys and
            values with `kv_heads` heads), `.hook_z` [batch pos head d_head],
            `blocks.{l}.mlp.hook_pre`, `.hook_post` (and `.hook_pre_linear` of a gated
            MLP) [batch pos d_mlp].
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
            set: 3,831 examples of a 115-token vocabulary). Absolute position embeddings
            only; no `cache`.
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


def activations_at(
    params: Mapping[str, Tensor],
    tokens: Int[Tensor, "batch pos"],
    arch: Architecture,
    positions: Int[Tensor, " batch"],
    *,
    patterns: bool = False,
) -> Callable[..., Tensor]:
    """One forward pass that computes the last layer and the unembedding only at the
    positions some example reads (`last_layer_positions`), and a reader: `read(name)` is
    the activation `name` (a `forward` cache name) of each example at its own position,
    `[batch, ...]` (an attention pattern: that query's row, `[batch, head, key]`);
    `read(name, every_position=True)` is the whole entry (every key's `hook_k` /
    `hook_v`, any layer's entries but the last's queries). For analyses that read one
    position per example, such as direct logit attribution and the logit lens: the logits
    of every other position (for a large vocabulary, a third of a small model's work) are
    never computed. One host sync (the distinct positions); attention runs fused unless
    `patterns` (then the patterns are cached)."""
    cache: dict[str, Tensor] = {}
    read_at = positions.unique(sorted=True)
    forward(params, tokens, arch, cache=cache, patterns=patterns, last_layer_positions=read_at)
    rows = torch.arange(len(tokens), device=tokens.device)
    narrowed = torch.searchsorted(read_at, positions)
    last = f"blocks.{arch.n_layers - 1}."
    full_in_last = ("hook_resid_pre", "attn.hook_k", "attn.hook_v")

    def read(name: str, every_position: bool = False) -> Tensor:
        only_read = name.startswith(last) and not name.endswith(full_in_last)
        if every_position:
            if only_read:
                raise ValueError(f"{name} is computed at the read positions only")
            return cache[name]
        at = narrowed if only_read else positions
        if name.endswith("hook_pattern"):  # [batch, head, query, key]
            return cache[name][rows, :, at]
        return cache[name][rows, at]

    return read


def batched_forward(
    stacked: Mapping[str, Tensor],
    tokens: Int[Tensor, "batch pos"],
    spec: ModelSpec | Mapping[str, Any] | Architecture,
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
        return _logits(params, tokens, arch, None, last_query, token_tables=token_tables)

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
    fused: bool = False,
    token_tables: bool = False,
) -> Tensor:
    """The forward pass proper: no checks and no data-dependent Python control flow.
    `last_query`: the positions the last layer computes its queries at (None: all).
    `fused`: attention as one kernel, no pattern (see `mix_heads`); not under `vmap`.
    `token_tables`: the first layer from per-(position, token) tables (`first_layer_tables`)."""
    seq = tokens.shape[1]
    record = recorder(cache)
    first_qkv: tuple[Tensor, Tensor, Tensor] | None = None
    if token_tables:
        first_query = last_query if last_query is not None and arch.n_layers == 1 else None
        resid, first_qkv = first_layer_tables(params, tokens, arch, first_query)
    else:
        resid = embed(params, tokens, arch, record)

    for layer in range(arch.n_layers):
        block = f"blocks.{layer}"
        record(f"{block}.hook_resid_pre", resid)
        last = last_query is not None and layer == arch.n_layers - 1
        query = last_query if last else slice(0, seq)
        rope = rope_of(arch, layer, seq, tokens.device)
        if layer == 0 and first_qkv is not None:
            attn_out, pattern = attention_of(
                params, f"{block}.attn", first_qkv, arch, rope, query, record, seq
            )
        else:
            normed = normalize(params, f"{block}.ln1", resid, arch.normalization, arch.eps)
            attn_out, pattern = attention(
                params, f"{block}.attn", normed, arch, rope, query, record, fused
            )
        if pattern is not None:
            record(f"{block}.attn.hook_pattern", pattern)
        resid = resid[:, query]
        if arch.parallel_attn_mlp:  # both read the block's input: no resid_mid
            mlp_out = block_mlp(params, layer, resid, arch, record)
            # summed in GPT-NeoX's order (half precision shows it)
            resid = (
                record(f"{block}.hook_mlp_out", mlp_out)
                + record(f"{block}.hook_attn_out", attn_out)
                + resid
            )
        else:
            resid = resid + record(f"{block}.hook_attn_out", attn_out)
            if arch.d_mlp is not None:
                record(f"{block}.hook_resid_mid", resid)
                mlp_out = block_mlp(params, layer, resid, arch, record)
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
    positions = params["pos_embed.weight"][arch.pos_offset:arch.pos_offset + seq, None]
    table = embed + positions  # [pos, d_vocab, d_model]
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
    if not arch.learned_positions or arch.embed_norm:
        kind = "rotary" if arch.rotary else "ALiBi" if arch.alibi_slopes else "embedding-normed"
        raise ValueError(f"token_tables needs absolute position embeddings; this model is {kind}")
    if not arch.per_head_layout:
        raise ValueError("token_tables needs every q, k and v bias and one key head per head")
    if cache is not None:
        raise ValueError("token_tables keeps no per-example embeddings to cache: pass cache=None")
