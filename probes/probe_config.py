"""The config of experiment kind `probe` (`probes.probe_experiment`): the study, the
snapshots, and the settings of the probes, controls and interventions, with the checks
`interp validate` runs on them. Nothing here imports TransformerLens or builds a model."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from interp.experiments import ExperimentConfig
from interp.model_checks import check_metric, check_model_and_task
from interp.model_refs import CheckpointRef, ModelRef
from interp.tasks.induction import InductionConfig
from interp.tasks.modular import ModularConfig
from interp.validation import Seed

FINAL = "final"
RANDOM_INIT = "random_init"


class ModularStudy(BaseModel):
    """The grokking model at the `=` position; key frequencies read off the final model's
    neuron-to-logit map when not given (the rule of `interp.grokking.fourier`)."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["modular"]
    task: ModularConfig
    key_frequencies: list[int] | None = None


class InductionStudy(BaseModel):
    """Token-level occurrence probes on the clean prompts of an induction task."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["induction"]
    task: InductionConfig


class TokenPropertiesStudy(BaseModel):
    """Token properties of English sentences (default: `interp.heads.sentences`); `pos`
    adds universal part-of-speech tags (`probes.pos_tagging`, extra `text`)."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["token_properties"]
    sentences: list[str] | None = None
    pos: bool = True


Study = Annotated[ModularStudy | InductionStudy | TokenPropertiesStudy, Field(discriminator="name")]


class ProbeSettings(BaseModel):
    """How each probe is fitted (see `probes.linear.fit_probes`)."""

    model_config = ConfigDict(extra="forbid")
    backend: Literal["torch", "sklearn"] = "torch"
    l2: float = Field(default=1e-3, ge=0)
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    epochs: int = Field(default=200, ge=1)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        """A repeated seed repeats a split, which narrows the interval over seeds for
        nothing."""
        _refuse_repeats(seeds)
        return seeds


def _refuse_repeats(values: list[Any], key: str = "") -> None:
    """A one-line ValueError naming the values `values` repeats (`key`: the config key,
    named first where the error's location does not already name it)."""
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        where = f"{key}: " if key else ""
        raise ValueError(f"{where}{values} repeats {', '.join(repeated)}; give each once")


class ControlSettings(BaseModel):
    """Which controls run beside the probes (classification targets only, except
    `random_init`, which probes every target on a randomly initialised copy)."""

    model_config = ConfigDict(extra="forbid")
    selectivity: bool = True
    mdl: bool = True
    random_init: bool = True


class InterventionSettings(BaseModel):
    """The causal test at `hook` (default: the last residual stream), for each target:
    `project_out` removes the span of its activation patterns (the directions the concept is
    written along, `probes.causal.activation_patterns`), `project_out_weights` the span of
    the probe's weights (the directions a probe reads), `erase` applies a LEACE eraser; the
    task metric is compared with the same edit along `n_random` random directions."""

    model_config = ConfigDict(extra="forbid")
    targets: list[str] = Field(min_length=1)
    hook: str | None = None
    kinds: list[Literal["project_out", "project_out_weights", "erase"]] = Field(
        default_factory=lambda: ["project_out"]
    )
    metric: str = "accuracy"
    n_random: int = Field(default=5, ge=1)


class Snapshot(BaseModel):
    """An earlier state of the model's run: a tensor artifact of that run holding
    `seed_<seed>/<param>` keys (a grokking checkpoint)."""

    model_config = ConfigDict(extra="forbid")
    label: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    artifact: str
    seed: int = 0


class ProbeConfig(ExperimentConfig):
    """A `probe` experiment."""

    kind: Literal["probe"] = "probe"
    model: ModelRef
    study: Study
    hooks: list[str] | None = Field(default=None, min_length=1)
    checkpoints: list[Snapshot] = Field(default_factory=list)
    probe: ProbeSettings = Field(default_factory=ProbeSettings)
    controls: ControlSettings = Field(default_factory=ControlSettings)
    interventions: InterventionSettings | None = None
    batch_size: int = Field(default=64, ge=1)

    @model_validator(mode="after")
    def _model_fits_study(self, info: ValidationInfo) -> ProbeConfig:
        """The model fits the study's task; the causal test has a task to be scored on, a
        known metric, and reads a hook that is probed (the default hooks are known when
        the model's number of layers is)."""
        task = getattr(self.study, "task", None)
        facts = check_model_and_task(self.model, task, info)
        n_layers = (facts.spec or {}).get("n_layers")
        _check_hook_names(self.hooks or [], n_layers if isinstance(n_layers, int) else None)
        _refuse_repeats(self.hooks or [], "hooks")
        _check_snapshots(self.checkpoints, self.model)
        settings = self.interventions
        if settings is None:
            return self
        if task is None:
            raise ValueError("interventions: this study has no task to score them on")
        check_metric(settings.metric, None, "interventions.metric")
        hooks = self.hooks
        if hooks is None and isinstance(n_layers, int) and n_layers > 0:
            hooks = _default_hook_names(n_layers)
        if hooks is not None and hooks and (settings.hook or hooks[-1]) not in hooks:
            raise ValueError(
                f"interventions.hook {settings.hook!r} is not among the probed hooks {hooks}"
            )
        return self


_PROBED_HOOK = re.compile(
    r"hook_embed|hook_pos_embed|ln_final\.hook_normalized|blocks\.(\d+)\.(hook_resid_pre|"
    r"hook_resid_mid|hook_resid_post|hook_attn_out|hook_mlp_out|ln[12]\.hook_normalized|"
    r"mlp\.hook_pre|mlp\.hook_post|mlp\.hook_pre_linear)"
)
"""The TransformerLens hooks that give one vector per token, which probes read."""


def _check_hook_names(hooks: list[str], n_layers: int | None) -> None:
    """A one-line ValueError for a hook no model has, or one with extra axes (a head's
    q, k, v, z or pattern), or a block past the model's last (when `n_layers` is known)."""
    for name in hooks:
        match = _PROBED_HOOK.fullmatch(name)
        if match is None:
            raise ValueError(
                f"hooks: {name!r} is not a hook probes can read (one vector per token: "
                "blocks.L.hook_resid_pre / _mid / _post, hook_attn_out, hook_mlp_out, "
                "mlp.hook_pre / hook_post, hook_embed, ...)"
            )
        if n_layers is not None and match.group(1) is not None and int(match.group(1)) >= n_layers:
            raise ValueError(f"hooks: {name!r} is past the model's {n_layers} blocks")


def _check_snapshots(snapshots: list[Snapshot], model: ModelRef) -> None:
    """A one-line ValueError unless the snapshots come from the model's run and each has a
    label of its own (the variants' rows and artifacts are keyed by it)."""
    if snapshots and not isinstance(model, CheckpointRef):
        raise ValueError("checkpoints: need `model: {run: ...}` (a run that saved snapshots)")
    labels = [snapshot.label for snapshot in snapshots]
    _refuse_repeats(labels, "checkpoints labels")
    reserved = sorted({FINAL, RANDOM_INIT} & set(labels))
    if reserved:
        raise ValueError(
            f"checkpoints: label {reserved[0]!r} is the name of a variant every run has; "
            "choose another"
        )


def _default_hook_names(n_layers: int) -> list[str]:
    """The names `default_hooks` gives a model of `n_layers` blocks."""
    return [f"blocks.{i}.hook_resid_pre" for i in range(n_layers)] + [
        f"blocks.{n_layers - 1}.hook_resid_post"
    ]
