"""AtP*'s fix for queries and keys: attribution patching that keeps the attention softmax exact.

Attribution patching (`circuits.attribution`) linearises the metric in the patched
activation. For a head's queries and keys the first thing downstream is a softmax, and
where attention is saturated the linearisation misses large effects: a key that, patched,
would take all of a query's attention has a gradient near zero at the base run. Kramár,
Lieberum, Shah and Nanda 2024 ("AtP*: An efficient and scalable method for localizing LLM
behaviour to components", section 3.1.1) compute the patched attention pattern exactly
and linearise only from the pattern on:

    estimate = sum over (query t, key s) of (pattern' - pattern)[t, s] * d metric / d pattern[t, s]

where pattern' is the pattern with the patched queries or keys, every other input held at
its base value. For one key s patched, only score column s changes, by delta[t] for each
query t, and the softmax has a closed form: key s's share of query t's attention goes
from p_s to p_s e^delta / (1 - p_s + p_s e^delta), the other keys keep their proportions
(`_pattern_change_of_one_key`), so every key of every query costs a few elementwise
operations. For one query t patched, row t is recomputed whole. A head's queries or keys
at every position at once form the whole patched pattern. All of it costs two
attention-score computations per layer (base and patched) beyond attribution patching's
passes (one on the source run, one with gradients on the base run, one backward pass),
here through `interp.functional`'s forward pass, which forms the scores the model forms:
rotary, per-head norms, soft caps, ALiBi, sliding windows, grouped-query keys.

Where the metric is linear in the pattern (one attention layer without norms) the
estimate equals activation patching exactly; elsewhere it is first order in what the
pattern change does downstream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from circuits.patching.engine import Direction, build_result
from circuits.patching.metric import PatchMetric, scalar_metric
from circuits.patching.result import PatchingResult
from circuits.patching.targets import check_patchable, index_space
from interp import functional
from interp.readout import functional_architecture
from interp.tasks.base import TaskBatch

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

METHOD = "attribution_qk_fix"
"""The `PatchingResult.method` of attribution patching with AtP*'s fix for queries and keys."""

QK_TARGETS = ("q", "k", "q_by_pos", "k_by_pos")
"""The targets the fix applies to: a head's queries or keys, over all positions or by one."""


def _pattern_change_of_one_key(
    scores: Tensor, scores_patched: Tensor, grad: Tensor
) -> Tensor:
    """`[batch, head, query, key]`: the first-order metric change, per query, of patching
    that key alone. Only key s's score moves (by delta), so its share of the query's
    attention goes from sigmoid(x) to sigmoid(x + delta), x its log-odds against the other
    keys, and the other keys keep their proportions: the change is
    (sigmoid(x + delta) - sigmoid(x)) (g_s - mean of g over the other keys, weighted by
    their shares), the module docstring's closed form written so that it stays exact
    where one key holds nearly all of the attention (its odds come from the other keys'
    log-shares, not from 1 - p). Masked keys, and queries that see one key, change
    nothing."""
    seen = torch.isfinite(scores)
    log_p = torch.log_softmax(scores, dim=-1)
    p = log_p.exp()
    is_top = torch.zeros_like(seen).scatter_(-1, scores.argmax(-1, keepdim=True), True)
    # log(1 - p_s): the others' log-shares summed for the top key (whose p_s may round to
    # 1), log1p elsewhere (every other key has p_s <= 1/2)
    top_rest = torch.logsumexp(log_p.masked_fill(is_top, float("-inf")), -1, keepdim=True)
    log_odds = log_p - torch.where(is_top, top_rest, torch.log1p(-p))
    delta = torch.where(seen, scores_patched - scores, 0.0)
    share_change = torch.sigmoid(log_odds + delta) - torch.sigmoid(log_odds)
    p_dot_g = (p * grad).sum(-1, keepdim=True)
    top_rest_mean = (torch.softmax(scores.masked_fill(is_top, float("-inf")), -1) * grad).sum(
        -1, keepdim=True
    )
    rest_mean = torch.where(is_top, top_rest_mean, (p_dot_g - p * grad) / (1.0 - p))
    sees_others = seen.sum(-1, keepdim=True) > 1
    return torch.where(seen & sees_others, share_change * (grad - rest_mean), 0.0)


def _fold_groups(values: Tensor, n_kv_heads: int) -> Tensor:
    """`values` `[head, ...]` with the query heads summed into the key head of their group
    (grouped-query attention): heads j * group ... j * group + group - 1 into head j."""
    if len(values) == n_kv_heads:
        return values
    return values.unflatten(0, (n_kv_heads, -1)).sum(1)


def _layer_estimate(
    target: str, scores: Tensor, scores_patched: Tensor, grad: Tensor, n_kv_heads: int
) -> Tensor:
    """One layer's row of the result: `[head]` (`q`, `k`) or `[pos, head]` (`_by_pos`);
    scores `[batch, head, query, key]` in float64, the patched ones with the source's
    queries (`q` targets) or keys (`k` targets)."""
    if target == "k_by_pos":
        per_key = _pattern_change_of_one_key(scores, scores_patched, grad).sum((0, 2))
        return _fold_groups(per_key, n_kv_heads).T  # [key pos, kv head]
    change = (torch.softmax(scores_patched, -1) - torch.softmax(scores, -1)) * grad
    if target == "q_by_pos":
        return change.sum((0, 3)).T  # [query pos, head]
    per_head = change.sum((0, 2, 3))
    return _fold_groups(per_head, n_kv_heads) if target == "k" else per_head


def attribute_qk_fixed(
    model: TransformerBridge,
    batch: TaskBatch,
    target: str,
    metric: PatchMetric,
    *,
    direction: Direction = "denoise",
    normalise: bool = False,
    tokenizer: Any | None = None,
) -> PatchingResult:
    """Estimate activation patching of every index of a query or key target (`q`, `k`,
    `q_by_pos`, `k_by_pos`) with AtP*'s fix: the attention pattern under the patch is
    computed exactly, the metric linearised in the pattern (module docstring).

    Args:
        model: A `TransformerBridge` that `interp.functional` covers, with no hooks
            attached (its forward pass computed by `interp.functional`, which has no dropout
            to switch off). Its weights, their gradients and its mode are untouched.
        batch: Clean and corrupted prompts `[batch, pos]` with the fields the metric reads.
        target: One of `QK_TARGETS`.
        metric: `(logits [batch, pos, vocab], batch) -> scalar` (or `[batch]`, averaged),
            differentiable.
        direction: `"denoise"`: base = corrupted run, source = clean activations;
            `"noise"`: base = clean run, source = corrupted activations.
        normalise: Rescale to `(value - corrupted) / (clean - corrupted)`.
        tokenizer: Labels positions with token strings of the first clean prompt.

    Returns:
        A `PatchingResult` laid out as `circuits.patching.patch` lays out `target`, with
        `method="attribution_qk_fix"`.
    """
    if target not in QK_TARGETS:
        raise ValueError(
            f"the query-key fix applies to the targets {list(QK_TARGETS)}, not {target!r}"
        )
    space = index_space(target)
    check_patchable(space, model)
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    arch = functional_architecture(model, "attribution patching with the query-key fix")
    params = functional.live_params(model)
    batch = TaskBatch.checked(batch, model).to(next(iter(params.values())).device)
    grad_batch = batch.for_autograd()
    source_tokens, base_tokens = (
        (batch.clean, grad_batch.corrupted) if direction == "denoise"
        else (batch.corrupted, grad_batch.clean)
    )
    n_layers, seq = arch.n_layers, batch.clean.shape[1]
    prefixes = [f"blocks.{layer}.attn" for layer in range(n_layers)]

    source: dict[str, Tensor] = {}  # (the functional pass runs no module: no mode to set)
    with torch.inference_mode():
        source_logits = functional.forward(params, source_tokens, arch, cache=source)
        source_value = scalar_metric(metric, source_logits, batch).detach().float()
    base: dict[str, Tensor] = {}
    with torch.inference_mode(False), torch.enable_grad():
        tracked = {name: weight.detach().requires_grad_(weight.is_floating_point())
                   for name, weight in params.items()}  # (fresh leaves: a graph to the
        logits = functional.forward(tracked, base_tokens, arch, cache=base)  # patterns)
        base_value = scalar_metric(metric, logits, grad_batch)
        if not base_value.requires_grad:
            raise ValueError("the metric is not differentiable in the model's logits")
        grads = torch.autograd.grad(
            base_value, [base[f"{prefix}.hook_pattern"] for prefix in prefixes],
            allow_unused=True,
        )
    rows = []
    with torch.no_grad():
        positions = torch.arange(seq, device=source_tokens.device)
        for layer, (prefix, grad) in enumerate(zip(prefixes, grads, strict=True)):
            q, k = (base[f"{prefix}.hook_{name}"].detach() for name in "qk")
            q_source, k_source = (source[f"{prefix}.hook_{name}"] for name in "qk")
            patched_qk = (q_source, k) if target.startswith("q") else (q, k_source)
            settings = dict(rope=functional.rope_of(arch, layer, seq, positions.device),
                            qk_norm=functional.qk_norm_of(params, prefix, arch),
                            window=arch.window(layer))
            scores = functional.attention_scores(q, k, positions, arch, **settings)
            scores_patched = functional.attention_scores(*patched_qk, positions, arch,
                                                          **settings)
            if grad is None:  # a layer whose pattern the metric does not read
                grad = torch.zeros_like(scores)
            rows.append(_layer_estimate(
                target, scores.double(), scores_patched.double(), grad.double(),
                arch.kv_heads,
            ).float().cpu())
    base_value = base_value.detach().float()

    grid = torch.stack(rows) + base_value.cpu()
    return build_result(
        grid, space, batch, tokenizer, target, direction,
        base_value=base_value, source_value=source_value, normalise=normalise, method=METHOD,
    )
