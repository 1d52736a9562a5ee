"""Experiment kind `patching`: activation patching of a task on a model, saved to the run store.

    kind: patching
    model: {run: induction_2l}          # a checkpoint, a native spec, or a hub name / folder
    task: {name: induction, d_vocab: 64, half_len: 16, n_examples: 32, seed: 1}
    targets: [resid_pre, z, z_by_pos]
    direction: denoise
    metric: logit_diff
    normalise: true
    direct_effects: true                # also the direct logit attribution and logit lens
    attribution: true                   # also attribution patching of each target
    attribution_ig_steps: 16            # ... with integrated gradients (not q / k targets)
    verify_top: 40                      # patch exactly only each estimate's 40 strongest

Each target's result is saved as `artifacts/patching_<target>.safetensors` (+ `.json`) and
as a long table `artifacts/patching_<target>.parquet` for the dashboard, and the prompts
patched (token ids and token strings, clean and corrupted) as `artifacts/prompts.json`; the
summary holds the metric on the clean and corrupted prompts and, per target, the index with
the largest effect. With `direct_effects` (the default) the run also saves, for the clean
prompts, each component's direct logit attribution (`circuits.logit_attribution`:
`artifacts/logit_attribution.*`, each head's also split by the key position it attends to,
tensor `sources` `[example, layer, head, pos]`) and the logit lens (`interp.logit_lens`:
`artifacts/logit_lens.*`), and the summary names the components with the largest direct
effect; a model those cannot read (one `interp.functional` does not cover) is noted in the
summary instead. With `attribution` (off by default) each target is also estimated by
attribution patching (`circuits.attribution.attribute`; the query and key targets with
AtP*'s fix, `circuits.attribution_qk`, where the model allows it; the others with
integrated gradients when `attribution_ig_steps` is set), saved as
`artifacts/attribution_<target>.*` in the same layout, and the summary's
`attribution_correlation` holds each target's Pearson correlation with the exact result.
With `verify_top: k` as well, exact patching runs on each estimate's k strongest indices
only (AtP*'s workflow, Kramár et al. 2024: `circuits.attribution.top_indices`), the others
NaN in the saved result, the correlation taken over those k, and `verified_indices` in the
summary counts them: for a model or prompt too large to patch every index exactly.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator

from circuits.attribution import attribute, correlation, top_indices
from circuits.attribution_qk import QK_TARGETS
from circuits.logit_attribution import direct_logit_attribution
from circuits.patching import TARGETS, PatchingResult, patch
from circuits.patching.targets import ATTENTION_ONLY_MISSING, check_patchable
from interp import functional, models
from interp.experiments import ExperimentConfig, ExperimentKind, RunContext, saves_no_model
from interp.logit_lens import logit_lens
from interp.metrics import mean_metric
from interp.model_checks import check_metric, check_model_and_task
from interp.model_refs import ModelRef, resolve_model_and_task
from interp.runs import Run
from interp.tasks import AnyTaskConfig
from interp.tasks.base import TaskBatch

PROMPTS_ARTIFACT = "prompts"


class PatchingConfig(ExperimentConfig):
    """A `patching` experiment: which model, task, targets and metric."""

    kind: Literal["patching"] = "patching"
    model: ModelRef
    task: AnyTaskConfig
    targets: list[str] = Field(default_factory=lambda: ["resid_pre", "z"], min_length=1)
    direction: Literal["denoise", "noise"] = "denoise"
    metric: str | None = None
    normalise: bool = True
    max_batch: int = Field(default=256, ge=1)
    direct_effects: bool = True
    attribution: bool = False
    attribution_ig_steps: int | None = Field(default=None, ge=1)
    verify_top: int | None = Field(default=None, ge=1)

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, targets: list[str]) -> list[str]:
        unknown = [t for t in targets if t not in TARGETS]
        if unknown:
            raise ValueError(f"unknown target(s) {unknown}; choose from {sorted(TARGETS)}")
        return targets

    @model_validator(mode="after")
    def _attribution_options_need_attribution(self) -> PatchingConfig:
        for name in ("attribution_ig_steps", "verify_top"):
            if getattr(self, name) is not None and not self.attribution:
                raise ValueError(f"{name} is set but attribution is false")
        return self

    @model_validator(mode="after")
    def _model_fits_task(self, info: ValidationInfo) -> PatchingConfig:
        facts = check_model_and_task(self.model, self.task, info)
        check_metric(self.metric, self.task)
        if facts.spec is not None and facts.spec.get("attn_only"):
            missing = [t for t in self.targets if t in ATTENTION_ONLY_MISSING]
            if missing:
                raise ValueError(
                    f"targets {missing} do not exist in an attention-only model"
                    + (f"; {facts.origin}" if facts.origin else "")
                )
        return self


def strongest_index(result: PatchingResult) -> dict[str, Any]:
    """The index whose patch moves the metric most (largest |value - baseline|: the value
    itself only for normalised denoising; indices not patched, NaN, never), with its axis
    labels, value and effect."""
    index = top_indices(result, 1)[0]
    labels = {
        axis: result.labels[dim][i]
        for dim, (axis, i) in enumerate(zip(result.axes, index, strict=True))
    }
    value = float(result.values[index])
    return {**labels, "value": value, "effect": value - result.baseline}


def token_strings(ids: list[int], tokenizer: Any | None) -> list[str]:
    """The tokens of `ids` as text: the tokenizer's tokens, or the ids themselves when the
    model has no tokenizer (native models)."""
    if tokenizer is None:
        return [str(i) for i in ids]
    return [str(token) for token in tokenizer.convert_ids_to_tokens(ids)]


def prompts_record(batch: TaskBatch, tokenizer: Any | None) -> dict[str, Any]:
    """The patched prompts as JSON data: per example the clean and corrupted token ids
    (`[batch][pos]`) and strings, the answer and wrong tokens (ids and strings) and the
    position the metric reads."""
    clean, corrupted = batch.clean.tolist(), batch.corrupted.tolist()
    answer, wrong = batch.answer.tolist(), batch.wrong.tolist()
    return {
        "clean": clean,
        "corrupted": corrupted,
        "clean_tokens": [token_strings(ids, tokenizer) for ids in clean],
        "corrupted_tokens": [token_strings(ids, tokenizer) for ids in corrupted],
        "answer": answer,
        "wrong": wrong,
        "answer_tokens": token_strings(answer, tokenizer),
        "wrong_tokens": token_strings(wrong, tokenizer),
        "position": batch.position.tolist(),
    }


def run_patching(config: PatchingConfig, run: Run, context: RunContext) -> dict[str, Any]:
    """Patch every target and save each result."""
    torch.manual_seed(config.seed)
    model, task = resolve_model_and_task(
        config.model, config.task, context.store, config.device, context.config_dir
    )
    tokenizer = getattr(model, "tokenizer", None)
    batch = task.batch().to(models.resolve_device(config.device))
    metric = mean_metric(task.metric(config.metric))
    summary: dict[str, Any] = {"metric": config.metric or task.default_metric}
    for target in config.targets:  # all of them, before any result is written
        check_patchable(TARGETS[target], model)
    run.save_json(PROMPTS_ARTIFACT, prompts_record(batch.to("cpu"), tokenizer))
    for target in config.targets:
        estimate = (estimate_attribution(model, batch, target, metric, config, tokenizer)
                    if config.attribution else None)
        verified = (top_indices(estimate, config.verify_top)
                    if estimate is not None and config.verify_top is not None else None)
        result = patch(
            model, batch, target, metric,
            direction=config.direction, max_batch=config.max_batch,
            normalise=config.normalise, tokenizer=tokenizer, progress=context.progress,
            indices=verified,
        )
        result.save(run, name=f"patching_{target}")
        run.save_table(f"patching_{target}", result.to_frame())
        summary["metric_clean"] = result.metric_clean
        summary["metric_corrupted"] = result.metric_corrupted
        summary[f"strongest_{target}"] = strongest_index(result)
        if estimate is not None:
            estimate.save(run, name=f"attribution_{target}")
            run.save_table(f"attribution_{target}", estimate.to_frame())
            correlations = summary.setdefault("attribution_correlation", {})
            correlations[target] = correlation_or_why(estimate, result)
        if verified is not None:
            summary.setdefault("verified_indices", {})[target] = len(verified)
    if config.direct_effects:
        summary.update(save_direct_effects(model, batch, run))
    return summary


def estimate_attribution(
    model: Any, batch: TaskBatch, target: str, metric: Any, config: PatchingConfig,
    tokenizer: Any | None,
) -> PatchingResult:
    """Attribution patching of `target`: with AtP*'s query-key fix on a query or key target
    where `interp.functional` covers the model; otherwise with integrated gradients when
    `config.attribution_ig_steps` is set, plain when not."""
    qk_fix = target in QK_TARGETS and functional.covers(model)
    return attribute(model, batch, target, metric, direction=config.direction,
                     normalise=config.normalise, tokenizer=tokenizer, qk_fix=qk_fix,
                     ig_steps=None if qk_fix else config.attribution_ig_steps,
                     max_batch=config.max_batch)


def correlation_or_why(estimate: PatchingResult, exact: PatchingResult) -> float | str:
    """The estimate's Pearson correlation with the exact result over the indices both
    have, or why there is none (a constant grid, fewer than two indices)."""
    try:
        return correlation(estimate, exact)
    except ValueError as error:
        return f"undefined: {error}"


def save_direct_effects(model: Any, batch: TaskBatch, run: Run) -> dict[str, Any]:
    """Save the direct logit attribution and the logit lens of the clean prompts; the
    summary's entries: the five components with the largest mean |direct effect| on the
    logit difference, or why neither could be computed."""
    try:
        attribution = direct_logit_attribution(model, batch, by_source=True)
        lens = logit_lens(model, batch)
    except ValueError as error:
        return {"direct_effects": f"not computed: {error}"}
    attribution.save(run)
    run.save_table("logit_attribution", attribution.to_frame())
    lens.save(run)
    run.save_table("logit_lens", lens.to_frame())
    return {"direct_effects": [
        {"component": name, "logit_diff": value} for name, value in attribution.top(5)
    ]}


PATCHING = ExperimentKind(
    name="patching",
    config_model=PatchingConfig,
    run=run_patching,
    description="activation patching of every index of chosen targets, saved per target",
    model_artifacts=saves_no_model,
)
