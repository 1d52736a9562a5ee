"""The pieces of an edge-patched forward pass that ACDC's pruning state
(`circuits.pruning_state`) reruns in a test, on tensors with a leading dimension of trials
and heads picked by slice or index: each head's q, k or v from its own input, its
attention and `W_O`, the heads' shares of a norm after the attention (Gemma 2 and 3), the
MLP, and the logits at each example's read position. The rows are every position up to
the last one read, or, in the last block, the read positions only (its queries, MLP and
logits). The arithmetic is `EdgePatcher`'s (`circuits.edge_patching`), made of
`interp.functional`'s pieces, so a test's damage equals a full pass's to float rounding;
what every test reads unchanged (weights per head, additive causal masks, rotary tables)
is made once, here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from circuits.edge_patching import EdgePatcher
from circuits.graph import HEAD_INPUTS
from circuits.pruning_trials import Heads
from interp import functional


def _matmul(
    a: Float[Tensor, "*trial *batch m k"], b: Float[Tensor, "*batch k n"]
) -> Float[Tensor, "*trial *batch m n"]:
    """`torch.matmul(a, b)`, called as the `bmm` it ends in (the same kernel, without its
    dozen reshaping dispatches) when the batch dimensions match and `a` has no trial
    dimension, or a single trial (or `b` has the single trial)."""
    if a.dim() == b.dim() == 3 and a.shape[0] == b.shape[0]:
        return torch.bmm(a, b)
    if b.dim() == a.dim() + 1 and b.shape[0] == 1:  # the single trial is b's
        return _matmul(a, b[0])[None]
    n_trial = a.dim() - b.dim()
    if (
        b.dim() >= 3
        and n_trial in (0, 1)
        and (n_trial == 0 or a.shape[0] == 1)
        and a.shape[n_trial:-2] == b.shape[:-2]
    ):
        product = torch.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))
        return product.view(*a.shape[:-1], b.shape[-1])
    return torch.matmul(a, b)


class BlockPieces:
    """The pieces of the forward pass of `patcher`'s model at rows `positions` (0 .. the
    last read position), the last block at `reads` (the sorted read positions; example i
    reads row `row_of_example[i]` of them)."""

    def __init__(
        self, patcher: EdgePatcher, positions: Tensor, reads: Tensor, row_of_example: Tensor
    ) -> None:
        """Made once, what every test reads unchanged: per block, the q / k / v weights
        `[head, d_model, d_head]` and biases `[head, 1, 1, d_head]`, `W_O` as `[head,
        d_head, d_model]`, and the causal mask (with the block's sliding window) as an
        additive `[query, key]` tensor (0 or -inf; None without a causal mask); rotary
        models' cos and sin of each block at every row and at the read positions (None
        without rotary); ALiBi's bias of each head (BLOOM), `[head, 1, 1, key]` (the
        same for every query row, the read positions' too; None without ALiBi)."""
        self.patcher, self.arch, self.params = patcher, patcher.arch, patcher.params
        self.positions, self.reads, self.row_of_example = positions, reads, row_of_example
        self.examples = torch.arange(len(row_of_example), device=positions.device)
        self.last = patcher.arch.n_layers - 1
        arch, params = self.arch, self.params
        self.rope: list[tuple[Tensor, Tensor] | None] = []
        self.rope_at_reads: list[tuple[Tensor, Tensor] | None] = []
        for layer in range(arch.n_layers):
            rope = functional.rope_of(arch, layer, len(self.positions), self.patcher.device)
            self.rope.append(rope)
            self.rope_at_reads.append(None if rope is None else (rope[0][self.reads],
                                                                 rope[1][self.reads]))
        self.w_in: list[dict[str, Tensor]] = []
        self.b_in: list[dict[str, Tensor]] = []
        self.w_out: list[Tensor] = []
        self.future: list[Tensor | None] = []
        alibi = functional.alibi_bias(arch, len(self.positions), self.patcher.device,
                                      params["embed.weight"].dtype)
        self.alibi = None if alibi is None else alibi[:, :, None]  # [head, 1, 1, key]
        for layer in range(arch.n_layers):
            block = f"blocks.{layer}.attn"
            self.w_in.append({
                part: params[f"{block}.{part}.weight"]
                .view(arch.n_heads, arch.d_head, -1)
                .transpose(-1, -2)
                for part in HEAD_INPUTS
            })
            self.b_in.append({
                part: params[f"{block}.{part}.bias"].view(arch.n_heads, 1, 1, arch.d_head)
                for part in HEAD_INPUTS
            })
            self.w_out.append(self.patcher._w_out(f"blocks.{layer}").transpose(-1, -2))
            if not arch.causal:
                self.future.append(None)
                continue
            queries = self.reads if layer == self.last else self.positions
            future = self.positions[None, :] > queries[:, None]
            window = arch.window(layer)
            if window is not None:  # keys i - window < j <= i only
                future |= self.positions[None, :] <= queries[:, None] - window
            mask = torch.zeros(future.shape, dtype=params["embed.weight"].dtype)
            self.future.append(mask.to(future.device).masked_fill(future, float("-inf")))

    def project(
        self,
        layer: int,
        part: str,
        x: Float[Tensor, "*trial head batch row d_model"],
        heads: Heads,
    ) -> Float[Tensor, "*trial head batch row d_head"]:
        """Heads `heads`' `part` (q, k or v) from their own inputs."""
        normed = self.patcher._norm(f"blocks.{layer}.ln1", x)
        weight = self.w_in[layer][part][heads]
        if normed.dim() == 4 or normed.shape[0] == 1:  # one bmm over heads, batch and row flat
            flat = normed.reshape(weight.shape[0], -1, normed.shape[-1])
            projected = torch.bmm(flat, weight).view(*x.shape[:-1], weight.shape[-1])
        else:
            projected = _matmul(normed.flatten(-3, -2), weight).unflatten(-2, x.shape[-3:-1])
        projected = projected + self.b_in[layer][part][heads]
        if self.arch.qk_norm and part != "v":  # Qwen3: per-head RMSNorm before the rotary
            prefix = f"blocks.{layer}.attn.{part}_norm"
            projected = functional.normalize(self.params, prefix, projected,
                                             self.arch.normalization, self.arch.eps)
        if self.rope[layer] is None or part == "v":
            return projected
        # queries and keys rotated by their positions (the last block's queries: the reads)
        at_reads = layer == self.last and part == "q"
        rope = self.rope_at_reads[layer] if at_reads else self.rope[layer]
        return functional.apply_rotary(projected, rope, self.arch)  # type: ignore[arg-type]

    def attend(
        self, layer: int, heads: Heads, proj: dict[str, Tensor]
    ) -> Float[Tensor, "*trial head batch row d_model"]:
        """Heads `heads`' outputs (through their own `W_O`) from their q, k and v (each
        `[head, batch, row, d_head]`, or with a leading dimension of trials, broadcast);
        queries at the read positions in the last block, at every position before it."""
        q, k, v = proj["q"], proj["k"], proj["v"]
        scores = _matmul(q, k.transpose(-2, -1)).div_(self.arch.attn_scale)
        cap = self.arch.attn_softcap
        if cap is not None:  # Gemma 2
            scores = torch.tanh(scores / cap) * cap
        if self.alibi is not None:  # BLOOM: slope_h * key position, as `mix_heads` adds it
            scores += self.alibi[heads]
        future = self.future[layer]
        if future is not None:  # + -inf where masked: masked_fill's values, one kernel
            scores += future
        z = _matmul(F.softmax(scores, dim=-1), v)
        out = _matmul(z.flatten(-3, -2), self.w_out[layer][heads])  # batch and row
        return out.unflatten(-2, z.shape[-3:-1])

    def shares(
        self, layer: int, raw: Float[Tensor, "trial head batch row d_model"]
    ) -> Float[Tensor, "trial head batch row d_model"]:
        """Every head's output from its output before the block's norm after the attention
        (`ln1_post`, Gemma 2 and 3): its share of the normalised block output (the bias's
        share is zero, `not_covered`); `raw` itself without such a norm."""
        if not self.arch.post_norms:
            return raw
        parts = raw.movedim(1, -2)  # [trial, batch, row, head, d_model]
        shares, _ = functional.normalized_parts(
            self.params, f"blocks.{layer}.ln1_post", parts, parts.new_zeros(()).expand(
                *parts.shape[:-2], parts.shape[-1]), self.arch.normalization, self.arch.eps,
        )
        return shares.movedim(-2, 1)

    def mlp(self, layer: int, x: Tensor) -> Tensor:
        return functional.block_mlp(self.params, layer, x, self.arch)

    def read(
        self, logit_in: Float[Tensor, "*trial batch read d_model"]
    ) -> Float[Tensor, "*trial batch vocab"]:
        """Each example's logits at its own read position (the row taken before the
        unembedding, so that only those rows are unembedded)."""
        if len(self.reads) == 1:
            rows = logit_in[..., 0, :]
        else:
            rows = logit_in[..., self.examples, self.row_of_example, :]
        return functional.unembed(self.params, rows, self.arch)
