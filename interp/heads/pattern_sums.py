"""The engine behind `interp.heads.patterns`: attention patterns -> per-head sums and counts.

Each score is a mean over queries, kept as a sum and a count per (layer, head) so that
batches add up: `ScoreAccumulator.add` adds each batch's sums and counts, `result()`
divides them, so a run in batches gives the same numbers as one big batch. A query
with no valid target (e.g. position 0 for `previous_token`) adds to neither, so it is
left out, not counted as zero; padding queries and keys are left out. Entries outside the
real (query, key) pairs are never read (`torch.where`, not a product), so whatever a model
writes in padded rows and columns, NaN included, changes no score. Entropy and confidence
read each real query's row over its visible real keys, renormalised to sum to 1 (the row
itself when the model gave padding and future keys no attention).

Patterns must be probabilities: on every real query, entries >= 0 and the row summing to
1 (within the dtype's rounding); anything else (raw scores, NaN rows) raises ValueError.
When causality is not given, it is inferred from the real (query, key) pairs: causal when
every real key after a real query gets exactly zero attention (padded query rows, which
Hugging Face models fill uniformly, are not read).

For one batch, `_targets` builds the target keys of every score from the tokens alone
(independent of layer and head). In causal models a key after the query is not a valid
target, so `next_token` and positive offsets get no count and come out NaN. `_target_matrix`
stacks the masks as columns of one matrix, so `_layer_sums` reads each layer's pattern
once, with one batched matrix product, for all mass scores (and the "mul" detector
scores); entropy, confidence, positional shares and the offset profile are read off
the same pattern. Sums are float64; nothing given in is modified.

The `tl_*` scores follow TransformerLens `head_detector`. Per sequence and head, with A
the attention pattern and D the 0/1 detection pattern (D[q, k] = 1 where k is q's
target: k = q-1; k < q with the same token; k <= q with the token at k-1 equal to the
token at q):

    "mul":  sum(A' * D) / sum(A')            in [0, 1]
    "abs":  1 - sum(|A - D|') / n            in (-1, 1]

where ' zeroes key column 0 (`exclude_bos`) and the diagonal (`exclude_current_token`)
and n is the sequence length; TransformerLens rounds "abs" to 3 decimals, this does
not. Every query counts, those without a target too (unlike the mass scores). `detect_head`
on a list of prompts averages the per-prompt scores; so does this, over the batch. With
padding, sums run over real positions only and "BOS" is the first real position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp.heads.head_scores import PROFILE_KEY, SCORE_NAMES, HeadScores

_DETECTOR_TARGETS = {
    "tl_previous_token": "previous_token",
    "tl_duplicate_token": "duplicate_token",
    "tl_induction": "induction",
}

ErrorMeasure = Literal["mul", "abs"]


# -- what each query may attend to


@dataclass(frozen=True)
class _Targets:
    """Target keys of every score for one batch of tokens (independent of layer and head).

    Attributes:
        query_valid: Real (non-padding) queries.
        visible: Real (query, key) pairs, and key <= query when causal.
        masks: Mass score -> its target keys (within `visible`).
        pair_valid: Real (query, key) pairs, ignoring causality (detector scores).
        first: Index of the first real position of each sequence.
    """

    query_valid: Bool[Tensor, "batch query"]
    visible: Bool[Tensor, "batch query key"]
    masks: dict[str, Bool[Tensor, "batch query key"]]
    pair_valid: Bool[Tensor, "batch query key"]
    first: Int[Tensor, " batch"]


def _targets(
    tokens: Int[Tensor, "batch pos"],
    valid: Bool[Tensor, "batch pos"],
    special_ids: Int[Tensor, " n_special"],
    causal: bool,
) -> _Targets:
    n = tokens.shape[1]
    pos = torch.arange(n, device=tokens.device)
    query, key = pos[:, None], pos[None, :]
    pair_valid = valid[:, :, None] & valid[:, None, :]
    visible = pair_valid & (key <= query) if causal else pair_valid
    same = tokens[:, :, None] == tokens[:, None, :]  # [b, q, k]: token at q == token at k
    no_column = torch.zeros_like(same[:, :, :1])
    # after_same[b, q, k]: the token at k-1 (a real position) equals the token at q
    after_same = torch.cat([no_column, same[:, :, :-1] & valid[:, None, :-1]], dim=2)
    first = valid.int().argmax(dim=1)
    special = torch.isin(tokens, special_ids)
    masks = {
        "previous_token": (key == query - 1).expand_as(same),
        "next_token": (key == query + 1).expand_as(same),
        "duplicate_token": same & (key < query),
        "induction": after_same & (key <= query),
        "first_token": (key == first[:, None, None]).expand_as(same),
        "special_token": special[:, None, :].expand_as(same),
    }
    masks = {name: mask & visible for name, mask in masks.items()}
    return _Targets(
        query_valid=valid, visible=visible, masks=masks, pair_valid=pair_valid, first=first
    )


# -- sums and counts of one layer


@dataclass(frozen=True)
class _TargetMatrix:
    """Every target mask of one batch as the columns of one matrix, so that one batched
    matrix product per layer reads each attention pattern once for all of them.

    Attributes:
        weights: `Float[Tensor, "batch query*key column"]` (float64 0/1).
        column: Mask name -> its column: the mass scores' masks, and for the "mul"
            detector scores each detection pattern restricted to the kept pairs and the
            kept pairs themselves (`_KEEP`).
        offset_weights: `Float[Tensor, "query*key offset"]`, 1 where key - query is the
            offset (the same for every sequence; applied to visible attention only).
        offset_counts: `Float[Tensor, " offset"]`, visible (query, key) pairs at each offset.
        has_target: Mass score -> `Bool[Tensor, "batch query"]`, the queries with a target.
    """

    weights: Tensor
    column: dict[str, int]
    offset_weights: Tensor
    offset_counts: Tensor
    has_target: dict[str, Tensor]


_KEEP = "_detector_keep"


def _detector_keep(
    targets: _Targets, exclude_bos: bool, exclude_current_token: bool
) -> Bool[Tensor, "batch query key"]:
    """The (query, key) pairs the detector scores sum over (see `_detector_sums`)."""
    keep = targets.pair_valid.clone()
    n = keep.shape[1]
    if exclude_current_token:
        keep &= ~torch.eye(n, dtype=torch.bool, device=keep.device)
    if exclude_bos:
        column = torch.arange(n, device=keep.device)[None, None, :] == targets.first[:, None, None]
        keep &= ~column
    return keep


def _target_matrix(
    targets: _Targets, offsets: Sequence[int], detector: tuple[bool, bool, ErrorMeasure]
) -> _TargetMatrix:
    exclude_bos, exclude_current_token, error_measure = detector
    columns = dict(targets.masks)
    if error_measure == "mul":
        keep = _detector_keep(targets, exclude_bos, exclude_current_token)
        for name, target in _DETECTOR_TARGETS.items():
            columns[name] = targets.masks[target] & targets.pair_valid & keep
        columns[_KEEP] = keep
    weights = torch.stack(list(columns.values()), dim=-1).flatten(1, 2).to(torch.float64)
    n = targets.visible.shape[1]
    pos = torch.arange(n, device=weights.device)
    relative = (pos[None, :] - pos[:, None]).reshape(-1)  # [q*k]: key - query
    wanted = torch.tensor(list(offsets), device=weights.device)
    at_offset = relative[:, None] == wanted[None, :]  # [q*k, offset]
    counts = (targets.visible.flatten(1)[:, :, None] & at_offset).sum((0, 1))
    return _TargetMatrix(
        weights,
        {name: i for i, name in enumerate(columns)},
        offset_weights=at_offset.to(torch.float64),
        offset_counts=counts.to(torch.float64),
        has_target={name: mask.any(-1) for name, mask in targets.masks.items()},
    )


def _layer_sums(
    pattern: Float[Tensor, "batch head query key"],
    targets: _Targets,
    matrix: _TargetMatrix,
    detector: tuple[bool, bool, ErrorMeasure],
) -> dict[str, tuple[Tensor, Tensor]]:
    """Score name -> (sum over queries [head], number of queries counted [head])."""
    n_heads = pattern.shape[1]
    # Only real (query, key) pairs are read: 0 elsewhere, even where the pattern is NaN.
    attn = torch.where(targets.pair_valid[:, None], pattern.to(torch.float64), 0.0)
    qv = targets.query_valid
    n_valid = qv.sum().to(torch.float64).expand(n_heads)
    out: dict[str, tuple[Tensor, Tensor]] = {}
    # [b, h, column]: each sequence's attention mass on each mask, summed over queries
    per_sequence = torch.bmm(attn.flatten(2), matrix.weights)
    for name in targets.masks:
        mass = per_sequence[:, :, matrix.column[name]].sum(0)
        count = matrix.has_target[name].sum().to(torch.float64).expand(n_heads)
        out[name] = (mass, count)

    # Attention on visible pairs only, 0 elsewhere. A real query's row has a visible key
    # with positive attention, so its max and argmax are those of the visible keys.
    visible = torch.where(targets.visible[:, None], attn, 0.0)
    row = _renormalised(visible)
    entropy = -torch.special.xlogy(row, row).sum(-1)  # [b, h, q]; 0 on padding queries
    out["entropy"] = (entropy.sum((0, 2)), n_valid)
    out["confidence"] = (row.amax(dim=-1).sum((0, 2)), n_valid)
    argmax = visible.argmax(dim=-1)  # [b, h, q]
    offset_of_max = argmax - torch.arange(attn.shape[2], device=attn.device)
    for name, target, d in (
        ("positional_prev", "previous_token", -1),
        ("positional_next", "next_token", 1),
    ):
        has = matrix.has_target[target]  # [b, q]
        hits = ((offset_of_max == d) & has[:, None]).sum((0, 2)).to(torch.float64)
        out[name] = (hits, has.sum().to(torch.float64).expand(n_heads))

    profile_sum = (visible.flatten(2) @ matrix.offset_weights).sum(0)  # [h, offset]
    out[PROFILE_KEY] = (profile_sum, matrix.offset_counts.expand(n_heads, -1))
    if _KEEP in matrix.column:  # "mul": sum(A' * D) / sum(A') from the matrix product
        denominator = per_sequence[:, :, matrix.column[_KEEP]]
        for name in _DETECTOR_TARGETS:
            ratio = per_sequence[:, :, matrix.column[name]] / denominator  # [b, h]
            out[name] = _sequence_mean_sums(ratio)
    else:
        out.update(_detector_sums(attn, targets, *detector))
    return out


def _renormalised(visible: Float[Tensor, "batch head query key"]) -> Tensor:
    """Each row divided by its sum (rows summing to 0, padding queries, stay 0)."""
    total = visible.sum(-1, keepdim=True)
    return visible / torch.where(total > 0, total, torch.ones_like(total))


def _sequence_mean_sums(per_sequence: Float[Tensor, "batch head"]) -> tuple[Tensor, Tensor]:
    """(sum over sequences with a finite score, their number), per head."""
    counted = torch.isfinite(per_sequence)
    total = torch.where(counted, per_sequence, torch.zeros_like(per_sequence)).sum(0)
    return total, counted.sum(0).to(per_sequence.dtype)


def _detector_sums(
    attn: Float[Tensor, "batch head query key"],
    targets: _Targets,
    exclude_bos: bool,
    exclude_current_token: bool,
    error_measure: ErrorMeasure,
) -> dict[str, tuple[Tensor, Tensor]]:
    """TransformerLens `head_detector` scores, one per sequence, summed over sequences, by
    the formula in the module docstring.

    (`_layer_sums` computes "mul" from its matrix product; this is the direct form.)
    """
    keep_f = _detector_keep(targets, exclude_bos, exclude_current_token)[:, None].to(attn.dtype)
    out: dict[str, tuple[Tensor, Tensor]] = {}
    for name, target in _DETECTOR_TARGETS.items():
        detection = (targets.masks[target] & targets.pair_valid)[:, None].to(attn.dtype)
        if error_measure == "mul":
            numerator = (attn * keep_f * detection).sum((2, 3))
            denominator = (attn * keep_f).sum((2, 3))
            per_sequence = numerator / denominator  # [b, h]
        else:
            length = targets.query_valid.sum(-1).to(attn.dtype)[:, None]
            per_sequence = 1 - ((attn - detection).abs() * keep_f).sum((2, 3)) / length
        out[name] = _sequence_mean_sums(per_sequence)
    return out


class ScoreAccumulator:
    """Adds up per-head sums and counts batch after batch; `result()` divides them."""

    def __init__(
        self,
        special_token_ids: Sequence[int],
        offsets: Sequence[int],
        causal: bool | None,
        detector: tuple[bool, bool, ErrorMeasure],
    ) -> None:
        self.special_token_ids = tuple(int(i) for i in special_token_ids)
        self.offsets = tuple(int(d) for d in offsets)
        self.causal = causal
        self.detector = detector
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, Tensor] = {}
        self.n_sequences = 0

    def add(
        self,
        layers: Sequence[Float[Tensor, "batch head query key"]],
        tokens: Int[Tensor, "batch pos"],
        padding_mask: Tensor | None,
    ) -> None:
        device = layers[0].device
        tokens = tokens.to(device)
        valid = (
            torch.ones_like(tokens, dtype=torch.bool)
            if padding_mask is None
            else padding_mask.to(device).bool()
        )
        pair_valid = valid[:, :, None] & valid[:, None, :]
        _check_probabilities(layers, valid)
        if self.causal is None:
            self.causal = all(_is_causal(p, pair_valid) for p in layers)
        special = torch.tensor(self.special_token_ids, dtype=tokens.dtype, device=device)
        targets = _targets(tokens, valid, special, self.causal)
        matrix = _target_matrix(targets, self.offsets, self.detector)
        per_layer = [_layer_sums(p, targets, matrix, self.detector) for p in layers]
        for name in per_layer[0]:
            layer_sum = torch.stack([sums[name][0] for sums in per_layer]).cpu()
            layer_count = torch.stack([sums[name][1] for sums in per_layer]).cpu()
            if name in self.sums:
                self.sums[name] = self.sums[name] + layer_sum
                self.counts[name] = self.counts[name] + layer_count
            else:
                self.sums[name], self.counts[name] = layer_sum, layer_count
        self.n_sequences += int(tokens.shape[0])

    def result(self) -> HeadScores:
        if not self.sums:
            raise ValueError("no sequences were scored")
        means = {
            name: torch.where(
                self.counts[name] > 0,
                self.sums[name] / self.counts[name].clamp_min(1),
                torch.full_like(self.sums[name], float("nan")),
            ).to(torch.float32)
            for name in self.sums
        }
        profile = means.pop(PROFILE_KEY)
        exclude_bos, exclude_current, measure = self.detector
        settings = {
            "causal": bool(self.causal),
            "special_token_ids": list(self.special_token_ids),
            "n_sequences": self.n_sequences,
            "tl_exclude_bos": exclude_bos,
            "tl_exclude_current_token": exclude_current,
            "tl_error_measure": measure,
        }
        values = {name: means[name] for name in SCORE_NAMES}
        return HeadScores(values, self.offsets, profile, settings)


def _is_causal(
    pattern: Float[Tensor, "batch head query key"], pair_valid: Bool[Tensor, "batch query key"]
) -> bool:
    """Whether every real key after a real query gets exactly zero attention (padded rows
    and columns, whatever they hold, are not read)."""
    n = pattern.shape[-1]
    after = torch.ones(n, n, dtype=torch.bool, device=pattern.device).triu(1)
    read = (pair_valid & after)[:, None]
    return bool((torch.where(read, pattern, torch.zeros_like(pattern)) == 0).all())


def _row_tolerance(dtype: torch.dtype) -> float:
    """How far from 1 a probability row may sum after rounding to `dtype`."""
    return max(1e-3, 4 * torch.finfo(dtype).eps)


def _bad_rows(
    pattern: Float[Tensor, "batch head query key"], valid: Bool[Tensor, "batch pos"]
) -> Bool[Tensor, "batch head query"]:
    """Real queries whose row has a negative entry or does not sum to 1 (NaN: both)."""
    sums = pattern.sum(-1, dtype=torch.float64)
    wrong_sum = ~((sums - 1).abs() <= _row_tolerance(pattern.dtype))
    return (wrong_sum | (pattern.amin(dim=-1) < 0)) & valid[:, None, :]


def _check_probabilities(
    layers: Sequence[Float[Tensor, "batch head query key"]], valid: Bool[Tensor, "batch pos"]
) -> None:
    """Raise unless every real query's row is >= 0 and sums to 1, in every layer (one
    host sync when all is well)."""
    integer = [p.dtype for p in layers if not p.is_floating_point()]
    if integer:
        raise ValueError(f"patterns must be floating point, got {integer[0]}")
    bad = [_bad_rows(pattern, valid) for pattern in layers]
    if not bool(torch.stack([b.any() for b in bad]).any()):
        return
    layer = next(i for i, b in enumerate(bad) if bool(b.any()))
    batch, head, query = (int(i) for i in bad[layer].nonzero()[0])
    row = layers[layer][batch, head, query].double()
    raise ValueError(
        f"patterns must be attention probabilities (>= 0, rows summing to 1 on real "
        f"queries); layer {layer}, sequence {batch}, head {head}, query {query} sums to "
        f"{float(row.sum()):.4g} with min {float(row.min()):.4g}"
    )
