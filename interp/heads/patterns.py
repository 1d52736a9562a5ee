"""Per-head scores read off attention patterns, for every (layer, head) at once.

Scores, one value per head (means over the queries that have a valid target; a query with
no valid target, e.g. position 0 for `previous_token`, is left out, not counted as zero;
padding queries and keys are left out):

    previous_token    attention from position i to i-1
    next_token        attention from i to i+1 (bidirectional encoders; NaN for causal models)
    duplicate_token   attention to earlier positions holding the same token as i
    induction         attention to the position right after an earlier occurrence of the
                      token at i (prefix matching on repeated random tokens, Olsson et al.
                      2022, "In-context Learning and Induction Heads")
    first_token       attention to the first (non-padding) position: the "sink" mass
    special_token     attention to positions whose token id is in a given set ([CLS], [SEP])
                      (Clark et al. 2019, "What Does BERT Look At?")
    entropy           entropy of each query's attention row in nats (Clark et al. 2019)
    confidence        the largest attention weight of each query (Voita et al. 2019,
                      "Analyzing Multi-Head Self-Attention")
    positional_prev   share of queries whose argmax key is at relative offset -1; Voita et
    positional_next   al. call a head positional at offset d when this share is >= 0.9
    tl_previous_token, tl_duplicate_token, tl_induction
                      TransformerLens `head_detector` scores (see `_detector_sums`)

plus `offset_profile[layer, head, j]`: the mean attention at relative offset
`offsets[j]` (key - query), over the queries whose key at that offset exists.

Causal models: a key after the query is not a valid target, so `next_token` and positive
offsets are NaN. Whether patterns are causal is read from the model config, or inferred
from the patterns (every entry above the diagonal exactly zero) when only patterns are
given. Every sum is accumulated batch by batch, so a run in batches gives the same numbers
as one big batch. Nothing given in (patterns, cache, model) is ever modified.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from interp.runs import Run

MASS_SCORES: tuple[str, ...] = (
    "previous_token",
    "next_token",
    "duplicate_token",
    "induction",
    "first_token",
    "special_token",
)
"""Scores that are the attention mass a query puts on its target keys."""

DETECTOR_SCORES: tuple[str, ...] = ("tl_previous_token", "tl_duplicate_token", "tl_induction")
"""TransformerLens `detect_head` scores, by its formula."""

SCORE_NAMES: tuple[str, ...] = (
    *MASS_SCORES,
    "entropy",
    "confidence",
    "positional_prev",
    "positional_next",
    *DETECTOR_SCORES,
)
"""Every score in `HeadScores.values`, in column order."""

DEFAULT_OFFSETS: tuple[int, ...] = tuple(range(-8, 9))
"""Relative offsets (key - query) of the default offset profile."""

_DETECTOR_TARGETS = {
    "tl_previous_token": "previous_token",
    "tl_duplicate_token": "duplicate_token",
    "tl_induction": "induction",
}
_PROFILE_KEY = "offset_profile"
_SCORE_PREFIX = "score."

ErrorMeasure = Literal["mul", "abs"]


@dataclass(frozen=True)
class HeadScores:
    """Attention-pattern scores of every head.

    Attributes:
        values: Score name -> `Float[Tensor, "layer head"]` (names in `SCORE_NAMES`; NaN
            where no query had a valid target).
        offsets: Relative offsets (key - query) of the profile's last axis.
        offset_profile: `Float[Tensor, "layer head offset"]`, mean attention at each offset.
        settings: How the scores were computed (causal, special token ids, detector options,
            number of sequences), saved with them.
    """

    values: dict[str, Tensor]
    offsets: tuple[int, ...]
    offset_profile: Tensor
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("HeadScores: values is empty")
        shapes = {tuple(v.shape) for v in self.values.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"HeadScores: every score must be [layer, head]; got {shapes}")
        expected = (*next(iter(shapes)), len(self.offsets))
        if tuple(self.offset_profile.shape) != expected:
            raise ValueError(
                f"HeadScores: offset_profile is {tuple(self.offset_profile.shape)}, "
                f"expected {expected} (layer, head, offset)"
            )

    @property
    def n_layers(self) -> int:
        return int(next(iter(self.values.values())).shape[0])

    @property
    def n_heads(self) -> int:
        return int(next(iter(self.values.values())).shape[1])

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.values:
            raise KeyError(f"no score {name!r}; have {sorted(self.values)}")
        return self.values[name]

    def to_frame(self, *, profile: bool = False) -> pd.DataFrame:
        """One row per head: columns `layer`, `head`, one column per score; with `profile`,
        also `offset_{d:+d}` columns holding the offset profile."""
        layers, heads = torch.meshgrid(
            torch.arange(self.n_layers), torch.arange(self.n_heads), indexing="ij"
        )
        columns: dict[str, Any] = {
            "layer": layers.reshape(-1).tolist(),
            "head": heads.reshape(-1).tolist(),
        }
        ordered = [n for n in SCORE_NAMES if n in self.values]
        ordered += [n for n in self.values if n not in ordered]
        for name in ordered:
            columns[name] = self.values[name].detach().cpu().double().reshape(-1).tolist()
        if profile:
            flat = self.offset_profile.detach().cpu().double().reshape(-1, len(self.offsets))
            for j, offset in enumerate(self.offsets):
                columns[f"offset_{offset:+d}"] = flat[:, j].tolist()
        return pd.DataFrame(columns)

    def save(self, run: Run | str | os.PathLike[str], name: str = "head_scores") -> None:
        """Write `artifacts/<name>.safetensors` (tensors) and `artifacts/<name>.json`."""
        run = run if isinstance(run, Run) else Run.open(run)
        tensors = {_SCORE_PREFIX + key: value for key, value in self.values.items()}
        tensors[_PROFILE_KEY] = self.offset_profile
        run.save_tensors(name, tensors)
        run.save_json(
            name,
            {"scores": list(self.values), "offsets": list(self.offsets), "settings": self.settings},
        )

    @classmethod
    def load(cls, run: Run | str | os.PathLike[str], name: str = "head_scores") -> HeadScores:
        """The scores written by `save(run, name)`."""
        run = run if isinstance(run, Run) else Run.open(run)
        meta = run.load_json(name)
        tensors = run.load_tensors(name)
        return cls(
            values={key: tensors[_SCORE_PREFIX + key] for key in meta["scores"]},
            offsets=tuple(int(d) for d in meta["offsets"]),
            offset_profile=tensors[_PROFILE_KEY],
            settings=dict(meta.get("settings", {})),
        )


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
    attn = pattern.to(torch.float64)
    qv = targets.query_valid
    n_valid = qv.sum().to(torch.float64).expand(n_heads)
    out: dict[str, tuple[Tensor, Tensor]] = {}
    # [b, h, column]: each sequence's attention mass on each mask, summed over queries
    per_sequence = torch.bmm(attn.flatten(2), matrix.weights)
    for name in targets.masks:
        mass = per_sequence[:, :, matrix.column[name]].sum(0)
        count = matrix.has_target[name].sum().to(torch.float64).expand(n_heads)
        out[name] = (mass, count)

    entropy = -torch.special.xlogy(attn, attn).sum(-1)  # [b, h, q]
    out["entropy"] = ((entropy * qv[:, None]).sum((0, 2)), n_valid)
    # Attention on visible pairs only, 0 elsewhere. A real query's row has a visible key
    # with positive attention, so its max and argmax are those of the visible keys.
    visible = attn * targets.visible[:, None]
    top, argmax = visible.max(dim=-1)  # [b, h, q]
    out["confidence"] = ((top * qv[:, None]).sum((0, 2)), n_valid)
    offset_of_max = argmax - torch.arange(attn.shape[2], device=attn.device)
    for name, target, d in (
        ("positional_prev", "previous_token", -1),
        ("positional_next", "next_token", 1),
    ):
        has = matrix.has_target[target]  # [b, q]
        hits = ((offset_of_max == d) & has[:, None]).sum((0, 2)).to(torch.float64)
        out[name] = (hits, has.sum().to(torch.float64).expand(n_heads))

    profile_sum = (visible.flatten(2) @ matrix.offset_weights).sum(0)  # [h, offset]
    out[_PROFILE_KEY] = (profile_sum, matrix.offset_counts.expand(n_heads, -1))
    if _KEEP in matrix.column:  # "mul": sum(A' * D) / sum(A') from the matrix product
        denominator = per_sequence[:, :, matrix.column[_KEEP]]
        for name in _DETECTOR_TARGETS:
            ratio = per_sequence[:, :, matrix.column[name]] / denominator  # [b, h]
            out[name] = _sequence_mean_sums(ratio)
    else:
        out.update(_detector_sums(attn, targets, *detector))
    return out


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
    """TransformerLens `head_detector` scores, one per sequence, summed over sequences.

    Per sequence and head, with A the attention pattern and D the 0/1 detection pattern
    (D[q, k] = 1 where k is q's target: k = q-1; k < q with the same token; k <= q with the
    token at k-1 equal to the token at q):

        "mul":  sum(A' * D) / sum(A')            in [0, 1]
        "abs":  1 - sum(|A - D|') / n            in (-1, 1]

    where ' zeroes key column 0 (`exclude_bos`) and the diagonal (`exclude_current_token`)
    and n is the sequence length; TransformerLens rounds "abs" to 3 decimals, this does
    not. Every query counts, those without a target too (unlike the mass scores). `detect_head`
    on a list of prompts averages the per-prompt scores; so does this, over the batch. With
    padding, sums run over real positions only and "BOS" is the first real position.
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


class _ScoreAccumulator:
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
        if self.causal is None:
            self.causal = all(_is_causal(p) for p in layers)
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
        profile = means.pop(_PROFILE_KEY)
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


def _is_causal(pattern: Float[Tensor, "batch head query key"]) -> bool:
    return bool((torch.triu(pattern, diagonal=1) == 0).all())


# -- inputs


def _pattern_layers(patterns: Any) -> list[Float[Tensor, "batch head query key"]]:
    """[batch layer head q k] tensor, or a dict/cache of `blocks.{l}.attn.hook_pattern`."""
    if isinstance(patterns, Tensor):
        if patterns.ndim != 5:
            raise ValueError(
                "patterns must be [batch, layer, head, query, key]; "
                f"got a {patterns.ndim}-d tensor {tuple(patterns.shape)}"
            )
        return list(patterns.unbind(1))
    if not (hasattr(patterns, "keys") and hasattr(patterns, "__getitem__")):
        raise ValueError(
            "patterns must be a tensor [batch, layer, head, query, key] or a dict/cache of "
            f"blocks.{{l}}.attn.hook_pattern; got {type(patterns).__name__}"
        )
    names = set(patterns.keys())
    layers = []
    while f"blocks.{len(layers)}.attn.hook_pattern" in names:
        layers.append(patterns[f"blocks.{len(layers)}.attn.hook_pattern"])
    if not layers:
        raise ValueError("patterns has no 'blocks.0.attn.hook_pattern' entry")
    shapes = {tuple(p.shape) for p in layers}
    if len(shapes) != 1 or len(next(iter(shapes))) != 4:
        raise ValueError(f"hook_pattern entries must all be [batch, head, q, k]; got {shapes}")
    return layers


def _check_inputs(layers: Sequence[Tensor], tokens: Tensor, padding_mask: Tensor | None) -> None:
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.is_floating_point():
        raise ValueError("tokens must be an integer tensor [batch, pos]")
    batch, _, n_query, n_key = layers[0].shape
    if n_query != n_key or (batch, n_query) != tuple(tokens.shape):
        raise ValueError(
            f"patterns are [batch={batch}, head, {n_query}, {n_key}] but tokens are "
            f"{tuple(tokens.shape)}; they must agree on batch and positions"
        )
    if padding_mask is not None and tuple(padding_mask.shape) != tuple(tokens.shape):
        raise ValueError(
            f"padding_mask is {tuple(padding_mask.shape)}, tokens {tuple(tokens.shape)}"
        )


def _check_options(offsets: Sequence[int], error_measure: str) -> None:
    if len(offsets) == 0:
        raise ValueError("offsets must name at least one relative offset")
    if error_measure not in ("mul", "abs"):
        raise ValueError(f"tl_error_measure must be 'mul' or 'abs', got {error_measure!r}")


def pattern_scores(
    patterns: Float[Tensor, "batch layer head query key"] | Mapping[str, Tensor] | Any,
    tokens: Int[Tensor, "batch pos"],
    *,
    padding_mask: Int[Tensor, "batch pos"] | None = None,
    special_token_ids: Sequence[int] = (),
    offsets: Sequence[int] = DEFAULT_OFFSETS,
    causal: bool | None = None,
    tl_exclude_bos: bool = False,
    tl_exclude_current_token: bool = False,
    tl_error_measure: ErrorMeasure = "mul",
) -> HeadScores:
    """Every pattern score of every head (see the module docstring).

    Args:
        patterns: `[batch, layer, head, query, key]`, or a dict / `ActivationCache` holding
            `blocks.{l}.attn.hook_pattern` `[batch, head, query, key]`. Read only.
        tokens: The token ids the patterns were computed on.
        padding_mask: 1 (or True) for real tokens, 0 for padding; None = all real.
        special_token_ids: Token ids counted by `special_token` (e.g. [CLS], [SEP]).
        offsets: Relative offsets (key - query) of the offset profile.
        causal: Whether keys after the query are out of reach; None infers it from the
            patterns (all entries above the diagonal exactly zero).
        tl_exclude_bos, tl_exclude_current_token, tl_error_measure: The options of
            TransformerLens `detect_head` for the `tl_*` scores.
    """
    layers = _pattern_layers(patterns)
    _check_inputs(layers, tokens, padding_mask)
    _check_options(offsets, tl_error_measure)
    detector = (tl_exclude_bos, tl_exclude_current_token, tl_error_measure)
    accumulator = _ScoreAccumulator(special_token_ids, offsets, causal, detector)
    with torch.no_grad():
        accumulator.add(layers, tokens, padding_mask)
    return accumulator.result()


# -- running a model


@contextmanager
def eval_mode(model: TransformerBridge) -> Iterator[None]:
    """Eval mode for the block; every module's own training flag is restored afterwards."""
    modules = list(model.modules())
    original = getattr(model, "original_model", None)
    if isinstance(original, torch.nn.Module):
        modules.extend(original.modules())
    flags = [(module, module.training) for module in modules]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def _model_causal(model: TransformerBridge) -> bool | None:
    direction = getattr(model.cfg, "attention_dir", None)
    if direction == "causal":
        return True
    if direction == "bidirectional":
        return False
    return None


def _is_pattern_hook(name: str) -> bool:
    return name.endswith("attn.hook_pattern")


def model_pattern_scores(
    model: TransformerBridge,
    tokens: Int[Tensor, "batch pos"],
    *,
    padding_mask: Int[Tensor, "batch pos"] | None = None,
    batch_size: int = 32,
    special_token_ids: Sequence[int] | None = None,
    offsets: Sequence[int] = DEFAULT_OFFSETS,
    tl_exclude_bos: bool = False,
    tl_exclude_current_token: bool = False,
    tl_error_measure: ErrorMeasure = "mul",
) -> HeadScores:
    """Run `model` on `tokens` in batches and score every head's attention patterns.

    Only `hook_pattern` is cached (`run_with_cache(..., names_filter=...)`) under
    `torch.inference_mode()`, with the model in eval mode; every module's training flag is
    restored afterwards, and weights and hooks are left as they were. With a
    `padding_mask`, it is passed to the model as `attention_mask`.

    Args:
        model: Any `TransformerBridge`.
        tokens: Token ids `[batch, pos]`.
        padding_mask: 1 for real tokens, 0 for padding; None = all real.
        batch_size: Sequences per forward pass.
        special_token_ids: Ids counted by `special_token`; None = the tokenizer's special
            ids when the model has a tokenizer, else none.
        offsets, tl_exclude_bos, tl_exclude_current_token, tl_error_measure: As in
            `pattern_scores`.
    """
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.is_floating_point():
        raise ValueError("tokens must be an integer tensor [batch, pos]")
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"tokens is empty: {tuple(tokens.shape)}")
    if padding_mask is not None and tuple(padding_mask.shape) != tuple(tokens.shape):
        raise ValueError(
            f"padding_mask is {tuple(padding_mask.shape)}, tokens {tuple(tokens.shape)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _check_options(offsets, tl_error_measure)
    if special_token_ids is None:
        tokenizer = getattr(model, "tokenizer", None)
        special_token_ids = sorted(set(getattr(tokenizer, "all_special_ids", None) or ()))
    accumulator = _ScoreAccumulator(
        special_token_ids,
        offsets,
        _model_causal(model),
        (tl_exclude_bos, tl_exclude_current_token, tl_error_measure),
    )
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    with eval_mode(model), torch.inference_mode():
        for start in range(0, tokens.shape[0], batch_size):
            batch = tokens[start : start + batch_size].to(device)
            extra: dict[str, Tensor] = {}
            mask = None
            if padding_mask is not None:
                mask = padding_mask[start : start + batch_size].to(device)
                extra["attention_mask"] = mask
            _, cache = model.run_with_cache(batch, names_filter=_is_pattern_hook, **extra)
            accumulator.add(_pattern_layers(cache), batch, mask)
            del cache
    return accumulator.result()


# -- the standard probe


def repeated_random_tokens(
    n_sequences: int,
    length: int,
    vocab: int | tuple[int, int],
    *,
    bos_token_id: int | None = None,
    seed: int = 0,
) -> Int[Tensor, "batch pos"]:
    """`[BOS] + r + r` for random token sequences r: the induction / duplicate-token probe
    of Olsson et al. 2022 (prefix matching on repeated random tokens).

    Args:
        n_sequences: Number of sequences.
        length: Length of r; the result has `2 * length` positions (+1 with a BOS).
        vocab: Draw ids from `range(vocab)`, or from `range(low, high)` for a pair.
        bos_token_id: Token put first, or None for none.
        seed: Seed of the generator (the same seed gives the same tokens).
    """
    low, high = (0, vocab) if isinstance(vocab, int) else vocab
    if n_sequences < 1 or length < 1:
        raise ValueError(f"n_sequences and length must be >= 1, got {n_sequences}, {length}")
    if not 0 <= low < high:
        raise ValueError(f"vocab range must be 0 <= low < high, got ({low}, {high})")
    generator = torch.Generator().manual_seed(seed)
    half = torch.randint(low, high, (n_sequences, length), generator=generator)
    parts = [half, half]
    if bos_token_id is not None:
        parts.insert(0, torch.full((n_sequences, 1), int(bos_token_id), dtype=half.dtype))
    return torch.cat(parts, dim=1)


def induction_probe_scores(
    model: TransformerBridge,
    *,
    n_sequences: int = 16,
    length: int | None = None,
    vocab: int | tuple[int, int] | None = None,
    bos_token_id: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    special_token_ids: Sequence[int] | None = None,
) -> HeadScores:
    """`model_pattern_scores` on `repeated_random_tokens`: induction and duplicate-token
    scores as in Olsson et al. 2022.

    `length` defaults to min(32, the longest that fits `n_ctx`); `vocab` to the model's
    whole vocabulary (pass a range to skip special tokens of a pretrained tokenizer).
    """
    n_ctx = int(model.cfg.n_ctx)
    room = n_ctx - (1 if bos_token_id is not None else 0)
    length = min(32, room // 2) if length is None else length
    if length < 1 or 2 * length > room:
        raise ValueError(f"2 * length (+ BOS) must fit n_ctx={n_ctx}; got length={length}")
    tokens = repeated_random_tokens(
        n_sequences,
        length,
        int(model.cfg.d_vocab) if vocab is None else vocab,
        bos_token_id=bos_token_id,
        seed=seed,
    )
    return model_pattern_scores(
        model, tokens, batch_size=batch_size, special_token_ids=special_token_ids
    )
