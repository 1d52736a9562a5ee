"""The pieces of a native model's blocks as pure functions of a parameter dict.

`interp.functional.forward` composes them into the whole forward pass; other engines
(incremental activation patching, edge patching, ACDC's pruning state) call them to rerun
part of a pass with exactly the same arithmetic. Each takes the parameters keyed like the
bridge's `state_dict()` (`interp.param_layout`) and the architecture they describe;
`recorder` passes activations through, storing them under TransformerLens hook names when
given a cache. The math mirrors TransformerLens's `NativeModel` (pre-norm blocks: causal
multi-head attention, Vaswani et al. 2017, then an MLP).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from interp.attention_scores import alibi_bias, causal_bias, per_query_head, scores_of
from interp.param_layout import NORMS_WITH_BIAS, NORMS_WITH_WEIGHT, Architecture
from interp.rotary import apply_rotary

__all__ = [
    "attention",
    "attention_of",
    "attention_scores",
    "attention_output",
    "alibi_bias",
    "block_mlp",
    "causal_bias",
    "embed",
    "head_projection",
    "linear",
    "mix_heads",
    "mlp",
    "normalize",
    "qk_norm_of",
    "recorder",
    "rotated_queries_keys",
    "unembed",
]


def recorder(cache: dict[str, Tensor] | None) -> Callable[[str, Tensor], Tensor]:
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
    then divides by the root mean square; RMSNorm (Zhang & Sennrich 2019) only divides,
    then scales by its weight in the input's dtype (as Llama's and TransformerLens's do:
    in bfloat16 the order shows); "RMS1P" (Gemma's) scales by 1 + weight in float32."""
    if kind is None:
        return x
    if kind == "LN" and x.dtype == torch.float32:  # the same formula as one fused kernel
        weight, bias = params[f"{prefix}.weight"], params[f"{prefix}.bias"]
        return F.layer_norm(x, weight.shape, weight, bias, eps)
    dtype = x.dtype
    x = x.float()
    if kind in ("LN", "LNPRE"):
        x = x - x.mean(-1, keepdim=True)
    if kind in ("RMS", "RMS1P"):  # the bridge runs the native RMSNorm module, with rsqrt
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    else:
        x = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    if kind == "RMS1P":  # Gemma: the weight is an offset from 1, applied in float32
        x = x * (1.0 + params[f"{prefix}.weight"].float())
    elif kind == "RMS":  # Llama's and TransformerLens's: the weight in the input's dtype
        return params[f"{prefix}.weight"] * x.to(dtype)
    elif kind in NORMS_WITH_WEIGHT:
        x = x * params[f"{prefix}.weight"]
    if kind in NORMS_WITH_BIAS:
        x = x + params[f"{prefix}.bias"]
    return x.to(dtype)


def normalized_parts(
    params: Mapping[str, Tensor],
    prefix: str,
    parts: Float[Tensor, "*lead part d"],
    rest: Float[Tensor, "*lead d"],
    kind: str | None,
    eps: float,
) -> tuple[Float[Tensor, "*lead part d"], Float[Tensor, "*lead d"]]:
    """`normalize(params, prefix, parts.sum(-2) + rest, kind, eps)` split into a share per
    part and one for `rest` (which takes the norm's bias), summing to it to float rounding.

    A norm divides its whole input by one scale per position, read from the whole input
    (after centring, for LayerNorm, which is linear), then weights it; so each part's
    share is the part (centred) divided by the sum's scale and weighted. Gemma 2 and 3 put
    such a norm after the attention (`ln1_post`): its heads' outputs are the parts and the
    output bias is `rest`, and a head's share depends on every head of its block through
    the scale, as it does in the model. Computed in float32, as `normalize` does."""
    if kind is None:
        return parts, rest
    dtype = parts.dtype
    parts, rest = parts.float(), rest.float()
    if kind in ("LN", "LNPRE"):
        parts = parts - parts.mean(-1, keepdim=True)
        rest = rest - rest.mean(-1, keepdim=True)
    square = (parts.sum(-2) + rest).pow(2).mean(-1, keepdim=True) + eps
    inverse = torch.rsqrt(square) if kind in ("RMS", "RMS1P") else 1.0 / square.sqrt()
    parts, rest = parts * inverse.unsqueeze(-2), rest * inverse
    if kind == "RMS1P":  # Gemma: the weight is an offset from 1
        weight: Tensor | None = 1.0 + params[f"{prefix}.weight"].float()
    else:
        weight = params[f"{prefix}.weight"].float() if kind in NORMS_WITH_WEIGHT else None
    if weight is not None:
        parts, rest = parts * weight, rest * weight
    if kind in NORMS_WITH_BIAS:
        rest = rest + params[f"{prefix}.bias"].float()
    return parts.to(dtype), rest.to(dtype)


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


def head_projection(
    params: Mapping[str, Tensor],
    prefix: str,
    name: str,
    x: Float[Tensor, "batch pos d_model"],
    arch: Architecture,
) -> Float[Tensor, "batch pos head d_head"]:
    """The `name` ("q", "k" or "v") of every head of the attention at `prefix`, in
    TransformerLens's hook layout (before rotary embedding): under grouped-query attention
    the keys and values have `arch.kv_heads` heads, as the weights give them."""
    flat = linear(x, params[f"{prefix}.{name}.weight"], params.get(f"{prefix}.{name}.bias"))
    return flat.unflatten(-1, (-1, arch.d_head))


def attention(
    params: Mapping[str, Tensor],
    prefix: str,
    x: Float[Tensor, "batch pos d_model"],
    arch: Architecture,
    rope: tuple[Tensor, Tensor] | None,
    query: slice | Tensor,
    record: Callable[[str, Tensor], Tensor],
    fused: bool = False,
) -> tuple[Float[Tensor, "batch query d_model"], Float[Tensor, "batch head query key"] | None]:
    """Causal multi-head attention of the `query` positions over every position; returns
    the output and the pattern (None when `fused`).

    Under `vmap` over stacked weights a strided slice of the positions reaches `linear`,
    which flattens it into rows (a copy) before its matmul; `vmap`'s own rule for
    `F.linear` would broadcast the weight to every example instead (for the grokking
    benchmark's 32 seeds, an 8 GB copy and a per-example matmul in each direction).
    Queries that see every key (the last position only) skip the causal mask, which would
    mask nothing."""
    seq = x.shape[1]
    x_query = x if isinstance(query, slice) and query == slice(0, seq) else x[:, query]
    q = head_projection(params, prefix, "q", x_query, arch)
    k = head_projection(params, prefix, "k", x, arch)
    v = head_projection(params, prefix, "v", x, arch)
    return attention_of(params, prefix, (q, k, v), arch, rope, query, record, seq, fused)


def attention_of(
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
    """`attention` from the queries (at `query`), keys and values `[batch, pos, head,
    d_head]` of its heads."""
    q, k, v = (record(f"{prefix}.hook_{name}", x) for name, x in zip("qkv", qkv, strict=True))
    device = k.device
    window = arch.window(_layer_of(prefix))
    sees_every_key = (
        isinstance(query, slice) and min(range(seq)[query], default=0) >= seq - 1
        and (window is None or window >= seq)
    )
    causal = arch.causal and not sees_every_key
    positions = torch.arange(seq, device=device)[query] if causal or rope is not None else None
    z, pattern = mix_heads(q, k, v, positions, arch, rope, causal=causal, fused=fused,
                           qk_norm=qk_norm_of(params, prefix, arch), window=window)
    return attention_output(params, prefix, record(f"{prefix}.hook_z", z), arch), pattern


def _layer_of(prefix: str) -> int:
    """The layer of an attention prefix `blocks.{layer}.attn`."""
    return int(prefix.split(".")[1])


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
    qk_norm: tuple[Mapping[str, Tensor], str] | None = None,
    window: int | None = None,
) -> tuple[Float[Tensor, "batch query head d_head"], Float[Tensor, "batch head query key"] | None]:
    """Attention of queries at `query_positions` over keys 0..key-1 (causal unless the
    model is bidirectional): returns each head's output `z` and the pattern. With
    `pattern` given, q and k are not read (pass None) and `z = pattern @ v`. `rope`: the
    cos/sin tables of every key position. `causal=False` skips the mask (default: the
    model's setting), for queries that see every key anyway; `query_positions` may then be
    None when there is no `rope` either. Under grouped-query attention k and v have fewer
    heads, each repeated for the query heads of its group. `qk_norm`: the parameters and
    prefix of an attention whose queries and keys are RMS-normalised per head before the
    rotary embedding (Qwen3; `qk_norm_of`), or None. `window`: the layer's sliding window
    (`arch.window(layer)`): a query sees only the `window` latest keys up to itself.
    Scores are soft-capped where the model says (`arch.attn_softcap`, Gemma 2), and take
    each head's ALiBi bias (`alibi_bias`, BLOOM), which depends on the key alone.

    `fused=True`, for callers that do not read the pattern: one
    `F.scaled_dot_product_attention` kernel (the causal mask an additive table kept per
    size and device) instead of the seven of scores, scale, mask, softmax and mixing; the
    pattern comes back as None. The same function to float rounding (~1e-6). Not under
    `torch.func.vmap`: the fused kernels have no batching rule there."""
    if pattern is None and (q is None or k is None):
        raise ValueError("mix_heads needs q and k, or a pattern")
    n_heads = pattern.shape[1] if pattern is not None else q.shape[2]  # type: ignore[union-attr]
    values = v.transpose(1, 2)
    if pattern is None:
        causal = arch.causal if causal is None else causal
        if query_positions is None and (causal or rope is not None):
            raise ValueError("mix_heads needs query_positions for the causal mask or rotary")
        queries, keys = rotated_queries_keys(q, k, query_positions, arch, rope, qk_norm)
        masked = causal and query_positions is not None
        alibi = (None if arch.alibi_slopes is None  # (no hash of `arch` per call without)
                 else alibi_bias(arch, keys.shape[2], keys.device, queries.dtype))
        if fused and arch.attn_softcap is None:  # the kernel cannot soft-cap its scores
            bias = (
                causal_bias(keys.shape[2], keys.device, queries.dtype, window)[query_positions]
                if masked
                else None
            )
            if alibi is not None:  # per head: [head, query, key], broadcast over the batch
                n_queries = queries.shape[2]
                bias = (alibi.expand(-1, n_queries, -1).contiguous() if bias is None  # (no
                        else alibi + bias)  # stride-0 query axis for the kernels to refuse)
            z = F.scaled_dot_product_attention(  # grouped keys and values read in place
                queries, keys, values, attn_mask=bias, scale=1.0 / arch.attn_scale,
                enable_gqa=keys.shape[1] != n_heads,
            )
            return z.transpose(1, 2), None
        scores = scores_of(queries, keys, arch, alibi,
                           query_positions if masked else None, window)
        pattern = F.softmax(scores, dim=-1)
    return torch.matmul(pattern, per_query_head(values, n_heads)).transpose(1, 2), pattern


def rotated_queries_keys(
    q: Float[Tensor, "batch query head d_head"],
    k: Float[Tensor, "batch key kv_head d_head"],
    query_positions: Int[Tensor, " query"] | None,
    arch: Architecture,
    rope: tuple[Tensor, Tensor] | None,
    qk_norm: tuple[Mapping[str, Tensor], str] | None,
) -> tuple[Float[Tensor, "batch head query d_head"], Float[Tensor, "batch kv_head key d_head"]]:
    """Queries and keys as the scores read them, heads first: normalised per head
    (`qk_norm`: the parameters and attention prefix, or None) and rotated (`rope`: the
    cos/sin tables of every key position; the queries' rows picked by `query_positions`)."""
    queries, keys = q.transpose(1, 2), k.transpose(1, 2)  # keys rotated per key head
    if qk_norm is not None:
        norm_params, prefix = qk_norm
        kind = arch.normalization  # RMS (Qwen3), or 1 + weight (Gemma 3)
        queries = normalize(norm_params, f"{prefix}.q_norm", queries, kind, arch.eps)
        keys = normalize(norm_params, f"{prefix}.k_norm", keys, kind, arch.eps)
    if rope is not None and query_positions is not None:
        query_rope = (rope[0][query_positions], rope[1][query_positions])
        queries = apply_rotary(queries, query_rope, arch)
        keys = apply_rotary(keys, rope, arch)
    return queries, keys


def attention_scores(
    q: Float[Tensor, "batch query head d_head"],
    k: Float[Tensor, "batch key kv_head d_head"],
    query_positions: Int[Tensor, " query"],
    arch: Architecture,
    rope: tuple[Tensor, Tensor] | None = None,
    *,
    qk_norm: tuple[Mapping[str, Tensor], str] | None = None,
    window: int | None = None,
) -> Float[Tensor, "batch head query key"]:
    """The scores `interp.layers.mix_heads` forms from queries `q` (at `query_positions`)
    and keys `k` of every position (both in TransformerLens's hook layout, before rotary):
    the softmax of the result over the last axis is the attention pattern, -inf where the
    model masks (causal unless it attends both ways; `window`: the layer's sliding
    window). Under grouped-query attention each key head serves the query heads of its
    group."""
    queries, keys = rotated_queries_keys(q, k, query_positions, arch, rope, qk_norm)
    alibi = (None if arch.alibi_slopes is None
             else alibi_bias(arch, keys.shape[2], keys.device, queries.dtype))
    return scores_of(queries, keys, arch, alibi,
                     query_positions if arch.causal else None, window)


def qk_norm_of(
    params: Mapping[str, Tensor], prefix: str, arch: Architecture
) -> tuple[Mapping[str, Tensor], str] | None:
    """`mix_heads`'s `qk_norm` for the attention at `prefix`: None unless the model
    normalises its queries and keys (`arch.qk_norm`)."""
    return (params, prefix) if arch.qk_norm else None


def attention_output(
    params: Mapping[str, Tensor],
    prefix: str,
    z: Float[Tensor, "batch query head d_head"],
    arch: Architecture,
) -> Float[Tensor, "batch query d_model"]:
    """The attention's output: every head's `z` through `W_O`, plus the output bias, then
    (Gemma 2 and 3, `arch.post_norms`) the block's norm `ln1_post`."""
    flat = z.reshape(z.shape[0], z.shape[1], -1)
    out = linear(flat, params[f"{prefix}.o.weight"], params.get(f"{prefix}.o.bias"))
    if arch.post_norms:
        block = prefix.rsplit(".", 1)[0]
        out = normalize(params, f"{block}.ln1_post", out, arch.normalization, arch.eps)
    return out


def mlp(
    params: Mapping[str, Tensor],
    prefix: str,
    x: Float[Tensor, "batch pos d_model"],
    arch: Architecture,
    record: Callable[[str, Tensor], Tensor] | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """The MLP at `prefix` on its (normalised) input; `record` sees `hook_pre`/`hook_post`
    (and `hook_pre_linear`, the linear half of a gated MLP, whose `hook_pre` is the gate's).

    With no `record` and no gradient to keep, the nonlinearity runs in place on the
    hidden layer: one `[batch, pos, d_mlp]` tensor fewer to allocate, which on a CPU is
    a measurable share of a small model's MLP (fresh memory is paid for in page faults)."""
    inplace = record is None  # nothing keeps hook_pre
    record = record or recorder(None)
    entry = "gate" if arch.gated_mlp else "in"  # the nonlinearity's input: TL's hook_pre
    pre = record(
        f"{prefix}.hook_pre",
        linear(x, params[f"{prefix}.{entry}.weight"], params.get(f"{prefix}.{entry}.bias")),
    )
    post = _activation(arch.act_fn, pre, inplace=inplace and not pre.requires_grad)
    if arch.act_fn == "solu_ln":
        post = normalize(params, f"{prefix}.ln", post, "LN", arch.eps)
    if arch.gated_mlp:
        linear_part = record(
            f"{prefix}.hook_pre_linear",
            linear(x, params[f"{prefix}.in.weight"], params.get(f"{prefix}.in.bias")),
        )
        post = post * linear_part
    record(f"{prefix}.hook_post", post)
    return linear(post, params[f"{prefix}.out.weight"], params.get(f"{prefix}.out.bias"))


def block_mlp(
    params: Mapping[str, Tensor],
    layer: int,
    x: Float[Tensor, "*lead pos d_model"],
    arch: Architecture,
    record: Callable[[str, Tensor], Tensor] | None = None,
) -> Float[Tensor, "*lead pos d_model"]:
    """The MLP of block `layer` on its input `x` (`resid_mid`, or the block's input in
    parallel blocks): its norm `ln2` (GPT-J's and Phi's shared `ln1`), then `mlp` (then,
    Gemma 2 and 3, the norm `ln2_post`)."""
    block = f"blocks.{layer}"
    norm = "ln1" if arch.shared_norm else "ln2"  # GPT-J, Phi: the attention's norm serves both
    normed = normalize(params, f"{block}.{norm}", x, arch.normalization, arch.eps)
    out = mlp(params, f"{block}.mlp", normed, arch, record)
    if arch.post_norms:
        out = normalize(params, f"{block}.ln2_post", out, arch.normalization, arch.eps)
    return out


def _activation(name: str, x: Tensor, inplace: bool = False) -> Tensor:
    """The MLP nonlinearity, overwriting `x` when `inplace` (except SoLU, Elhage et al.
    2022: x * softmax(x), and GPT-2's tanh GELU out of float32). "gelu_pytorch_tanh"
    (Gemma's) is the fused tanh GELU at every precision."""
    if name == "relu":
        return F.relu(x, inplace=inplace)
    if name == "gelu_new" and x.dtype != torch.float32:
        # GPT-2's (and TransformerLens's) formula, op by op: in half precision its rounding
        # differs from the fused kernel's, which float32 hides (~1e-7)
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if name in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        approximate = "none" if name == "gelu" else "tanh"
        if inplace:
            return torch.ops.aten.gelu_(x, approximate=approximate)
        return F.gelu(x, approximate=approximate)
    if name == "silu":
        return F.silu(x, inplace=inplace)
    if name == "bloom_gelu":  # BLOOM's `bloom_gelu_forward`, op by op (its own constant)
        return x * 0.5 * (1.0 + torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))
    if name == "solu_ln":
        return x * F.softmax(x, dim=-1)
    raise ValueError(f"interp.functional does not support act_fn={name!r}")


def embed(
    params: Mapping[str, Tensor],
    tokens: Int[Tensor, "batch pos"],
    arch: Architecture,
    record: Callable[[str, Tensor], Tensor] | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """The residual stream entering the first block: the tokens' embeddings (times
    `arch.embed_scale`; BLOOM: through the LayerNorm `embed_ln`) plus, with learned
    positions (neither rotary embeddings nor ALiBi), the position embeddings (rows
    `arch.pos_offset` on: OPT's start at row 2; `record` sees `hook_embed`, scaled and
    normalised as the bridge's, and `hook_pos_embed`)."""
    record = record or recorder(None)
    resid = F.embedding(tokens, params["embed.weight"])
    if arch.embed_scale != 1.0:  # Gemma: in the embeddings' dtype, as Hugging Face's
        resid = resid * torch.tensor(arch.embed_scale, dtype=resid.dtype)
    if arch.embed_norm:  # BLOOM's word_embeddings_layernorm
        resid = normalize(params, "embed_ln", resid, arch.normalization, arch.eps)
    resid = record("hook_embed", resid)
    if not arch.learned_positions:
        return resid
    batch, seq = tokens.shape
    offset = arch.pos_offset
    pos = params["pos_embed.weight"][offset:offset + seq].expand(batch, seq, arch.d_model)
    return resid + record("hook_pos_embed", pos)


def unembed(
    params: Mapping[str, Tensor], resid: Float[Tensor, "batch pos d_model"], arch: Architecture
) -> Float[Tensor, "batch pos d_vocab_out"]:
    """Logits from the final residual stream: the final norm, then the unembedding (then,
    Gemma 2, the soft cap `arch.logit_softcap`)."""
    normed = normalize(params, "ln_final", resid, arch.normalization, arch.eps)
    logits = linear(normed, params["unembed.weight"], params["unembed.bias"])
    if arch.logit_softcap is not None:
        logits = torch.tanh(logits / arch.logit_softcap) * arch.logit_softcap
    return logits
