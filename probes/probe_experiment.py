"""Experiment kind `probe`: probe a model for a study's properties at every layer, with the
controls and the causal test beside every probe.

    kind: probe
    model: {run: grokking_cpu, artifact: models/seed_0}   # a checkpoint, spec or hub name
    study: {name: modular, task: {name: modular, p: 37, frac_train: 0.5}}
    checkpoints:                                            # earlier snapshots of that run
      - {label: epoch_500, artifact: checkpoints/epoch_000500, seed: 0}
    probe: {seeds: [0, 1, 2], l2: 0.001}
    controls: {selectivity: true, mdl: true, random_init: true}
    interventions: {targets: [fourier_key], hook: blocks.0.hook_resid_post}

Every variant of the model (`final`, each checkpoint, and `random_init`: the same shape with
fresh weights) is probed for every target of the study at every hook (default: the residual
stream before each block and after the last), over several split seeds. Saved:

- `tables/probe_layers`: one row per (variant, target, layer): mean score with its 95%
  interval over seeds; for classification targets `majority`, the chance accuracy as
  `ProbeResult.majority_baseline` defines it (always answering the training split's most
  common class, scored on the test split), averaged over the same seeds and splits as the
  mean score; and where computed the control-task accuracy and selectivity
  (Hewitt & Liang 2019) and the MDL online codelength and compression (Voita & Titov 2020).
- `tables/probe_interventions`: per (variant, target, intervention): the task metric before,
  after, and after the same intervention along random directions of equal rank and norm.
- `artifacts/probes_<variant>_<target>`: the seed-`seed` probes with their directions.

The config and its checks are `probes.probe_config`'s.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import Tensor

from interp import functional
from interp.activations import collect
from interp.experiments import ExperimentKind, RunContext, saves_no_model
from interp.heads.sentences import ENGLISH_SENTENCES
from interp.metrics import METRICS, mean_metric
from interp.model_refs import (
    CheckpointRef,
    ModelRef,
    check_next_token_model,
    resolve_model,
)
from interp.runs import Run, RunStore
from interp.tasks import make_task
from interp.tasks.base import TaskBatch
from interp.tasks.modular import ModularArithmetic
from probes.causal import Intervention, LeaceEraser, activation_patterns, intervention_effect
from probes.controls import online_codelength, randomly_initialised, selectivity
from probes.data import IGNORE
from probes.linear import fit_probes, fit_probes_over_seeds, majority_baseline, split_examples
from probes.probe_config import (
    FINAL,
    RANDOM_INIT,
    InductionStudy,
    ModularStudy,
    ProbeConfig,
    Snapshot,
)
from probes.results import confidence_interval, score_bounds
from probes.studies import (
    ProbeTarget,
    StudyData,
    induction_study,
    modular_study,
    token_properties_study,
)

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


# -- the model's variants


def default_hooks(model: TransformerBridge) -> list[str]:
    """The residual stream before every block and after the last: "layers" 0..n_layers."""
    n_layers = model.cfg.n_layers
    return [f"blocks.{i}.hook_resid_pre" for i in range(n_layers)] + [
        f"blocks.{n_layers - 1}.hook_resid_post"
    ]


def snapshot_model(
    model: TransformerBridge, ref: ModelRef, snapshot: Snapshot, store: RunStore
) -> TransformerBridge:
    """A copy of `model` with the weights of `snapshot`, an artifact of the model's run."""
    if not isinstance(ref, CheckpointRef):
        raise ValueError("checkpoints: need `model: {run: ...}` (a run that saved snapshots)")
    run = store.load(ref.run) if "/" in ref.run else store.latest(ref.run)
    if run is None:
        raise ValueError(f"checkpoints: no finished run of {ref.run!r} in {store.root}")
    try:
        tensors = run.load_tensors(snapshot.artifact)
    except FileNotFoundError as error:
        raise ValueError(f"checkpoints: {error}") from None
    prefix = f"seed_{snapshot.seed}/"
    params = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
    if not params:
        raise ValueError(f"checkpoints: {snapshot.artifact!r} holds no {prefix}* tensors")
    variant = copy.deepcopy(model)
    functional.load_params(variant, params)
    return variant


# -- the study's data


def build_study(
    config: ProbeConfig, model: TransformerBridge
) -> tuple[StudyData, TaskBatch | None]:
    """The study's prompts and targets, and the batch the interventions are scored on
    (the held-out pairs for modular arithmetic, the prompts for induction, else None)."""
    study = config.study
    if isinstance(study, ModularStudy):
        task = ModularArithmetic(study.task)
        batch = task.batch()
        freqs = study.key_frequencies or list(final_key_frequencies(model, task.p))
        data = modular_study(batch.clean, task.p, freqs)
        held_out = task.train_test()[1] if study.task.frac_train is not None else batch
        return data, held_out
    if isinstance(study, InductionStudy):
        batch = make_task(study.task).batch()
        return induction_study(batch.clean, first_position=int(study.task.bos)), batch
    sentences = study.sentences or list(ENGLISH_SENTENCES)
    tokenizer = getattr(model, "tokenizer", None)
    return token_properties_study(tokenizer, sentences, pos=study.pos), None


def final_key_frequencies(model: TransformerBridge, p: int) -> tuple[int, ...]:
    """Key frequencies of the neuron-to-logit map (as `interp.grokking.progress` picks them)."""
    from interp.grokking.fourier import frequency_norms, key_frequencies
    from interp.grokking.progress import neuron_logit_map

    return key_frequencies(frequency_norms(neuron_logit_map(model, p), p, axis=1))


def study_features(
    model: TransformerBridge, data: StudyData, hooks: list[str], batch_size: int, progress: bool
) -> list[Tensor]:
    """Per hook: `[n, d]` (sequence level, at each example's position) or `[n, pos, d]`."""
    acts = collect(
        model, data.tokens, hooks, positions=data.position, attention_mask=data.attention_mask,
        batch_size=batch_size, progress=progress,
    )
    return [acts[name].float() for name in hooks]


def same_width_groups(features: list[Tensor]) -> list[tuple[list[int], Tensor]]:
    """Hooks of equal width stacked `[layer, ...]`, with their indices in `features`: the
    probes of one group are fitted together (e.g. residual streams apart from MLP neurons)."""
    groups: dict[int, list[int]] = {}
    for index, tensor in enumerate(features):
        groups.setdefault(tensor.shape[-1], []).append(index)
    return [(indices, torch.stack([features[i] for i in indices])) for indices in groups.values()]


def target_rows(
    data: StudyData, target: ProbeTarget, features: Tensor
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """(features `[layer, m, d]`, labels, groups, types) over the rows `target` labels;
    `features` is `[layer, n, d]` or, token level, `[layer, n, pos, d]`."""
    if not data.token_level:
        return features, target.labels, None, None
    keep = target.labels != IGNORE
    if data.attention_mask is not None:
        keep &= data.attention_mask.bool()
    rows, columns = keep.nonzero(as_tuple=True)
    labels = target.labels[rows, columns]
    labels = labels.float() if target.kind == "ridge" else labels
    types = None if target.types is None else target.types[rows, columns]
    return features[:, rows, columns], labels, rows, types


# -- the run


def probe_variant(
    config: ProbeConfig, variant: str, data: StudyData, features: list[Tensor],
    hooks: list[str], run: Run,
) -> list[dict[str, Any]]:
    """Probe every target on one variant's features; one table row per (target, hook)."""
    groups = same_width_groups(features)
    rows: list[dict[str, Any]] = []
    for target in data.targets:
        frames = [
            probe_group(config, variant, data, target, stacked, [hooks[i] for i in indices],
                        run, suffix="" if len(groups) == 1 else f"_d{stacked.shape[-1]}")
            .assign(layer=indices)
            for indices, stacked in groups
        ]
        rows.extend(pd.concat(frames).sort_values("layer").to_dict("records"))
    return rows


def probe_group(
    config: ProbeConfig, variant: str, data: StudyData, target: ProbeTarget, stacked: Tensor,
    hooks: list[str], run: Run, suffix: str,
) -> pd.DataFrame:
    """One target's probes, controls and MDL on hooks of one width; a row per hook."""
    settings, controls = config.probe, config.controls
    x, labels, groups, types = target_rows(data, target, stacked)
    kwargs = {"backend": settings.backend, "l2": settings.l2, "epochs": settings.epochs,
              "test_fraction": settings.test_fraction, "kind": target.kind, "groups": groups}
    logistic = target.kind == "logistic"
    control = None
    if variant != RANDOM_INIT and logistic and controls.selectivity and types is not None:
        control = selectivity(x, labels, types, seeds=settings.seeds, **kwargs)
    # selectivity fits the task's probes on the same seeds and splits: reuse its scores
    scores = (
        control.task_scores if control is not None
        else fit_probes_over_seeds(x, labels, seeds=settings.seeds, **kwargs).scores
    )
    mean, low, high = confidence_interval(scores, bounds=score_bounds(target.kind))
    frame = pd.DataFrame({
        "variant": variant, "target": target.name, "hook": hooks, "layer": range(len(hooks)),
        "mean": mean.tolist(), "low": low.tolist(), "high": high.tolist(),
        "n_seeds": len(settings.seeds), "metric": "accuracy" if logistic else "r2",
    })
    if logistic:  # chance level on the probes' own splits
        frame["majority"] = split_majority(labels, groups, settings.seeds, settings.test_fraction)
    if control is not None:
        frame["control_mean"] = control.control_mean.tolist()
        frame["selectivity"] = control.selectivity.tolist()
    if variant != RANDOM_INIT and logistic and controls.mdl:
        mdl = online_codelength(
            x, labels, seed=config.seed, l2=settings.l2, epochs=settings.epochs
        )
        frame["mdl_bits"] = mdl.online_bits.tolist()
        frame["compression"] = mdl.compression.tolist()
    if variant != RANDOM_INIT:
        fit_probes(x, labels, seed=config.seed, **kwargs).save(
            run, name=f"probes_{variant}_{target.name}{suffix}"
        )
    return frame


def split_majority(
    labels: Tensor, groups: Tensor | None, seeds: list[int], test_fraction: float
) -> float:
    """`ProbeResult.majority_baseline` averaged over `seeds`: on each seed's split (the one
    `fit_probes` and `selectivity` make: by `groups`, else stratified by class), the test
    accuracy of always answering the most common training label."""
    n = len(labels)
    strata = labels if groups is None else None
    rates = []
    for seed in seeds:
        train, test = split_examples(
            n, test_fraction=test_fraction, seed=seed, groups=groups, labels=strata
        )
        rates.append(majority_baseline(labels, train, test))
    return sum(rates) / len(rates)


def intervene(
    config: ProbeConfig, variant: str, model: TransformerBridge, data: StudyData,
    features: list[Tensor], hooks: list[str], batch: TaskBatch,
) -> list[dict[str, Any]]:
    """The causal test of `config.interventions` on one variant."""
    settings = config.interventions
    assert settings is not None
    hook = settings.hook or hooks[-1]
    layer = hooks.index(hook)
    metric = mean_metric(METRICS[settings.metric])
    rows = []
    for name in settings.targets:
        target = data.target(name)
        x, labels, groups, _ = target_rows(data, target, features[layer][None])
        for kind in settings.kinds:
            if kind == "project_out":
                basis = activation_patterns(x[0], labels)
                intervention = Intervention(kind="project_out", basis=basis)
            elif kind == "project_out_weights":
                probe = fit_probes(
                    x, labels, kind=target.kind, seed=config.seed,
                    backend="torch", l2=config.probe.l2, epochs=config.probe.epochs,
                    groups=groups,
                )
                intervention = Intervention(kind="project_out", basis=probe.directions[0])
            else:
                eraser = LeaceEraser.fit(x[0], labels)
                intervention = Intervention(kind="erase", eraser=eraser)
            effect = intervention_effect(
                model, batch, hook, intervention, metric, n_random=settings.n_random,
                seed=config.seed,
            )
            row = {k: v for k, v in effect.to_dict().items() if k not in ("random_values", "kind")}
            rows.append({**row, "variant": variant, "target": name, "intervention": kind,
                         "metric": settings.metric})
    return rows


def run_probe(config: ProbeConfig, run: Run, context: RunContext) -> dict[str, Any]:
    """Probe each variant of the model, save the tables, return the headline numbers."""
    torch.manual_seed(config.seed)
    model = resolve_model(config.model, context.store, config.device, context.config_dir)
    model.eval()
    data, batch = build_study(config, model)
    if config.interventions is not None and batch is None:
        raise ValueError("interventions: this study has no task to score them on")
    hooks = config.hooks or default_hooks(model)
    if config.interventions is not None:  # fail before any work, not after it
        check_next_token_model(model, config.study.name, config.model)
        for name in config.interventions.targets:
            data.target(name)
        hook = config.interventions.hook or hooks[-1]
        if hook not in hooks:
            raise ValueError(f"interventions.hook {hook!r} is not among the probed hooks {hooks}")
    variants = [(FINAL, model)] + [
        (snap.label, snapshot_model(model, config.model, snap, context.store))
        for snap in config.checkpoints
    ]
    if config.controls.random_init:
        variants.append((RANDOM_INIT, randomly_initialised(model, seed=config.seed)))
    layer_rows, intervention_rows = [], []
    for variant, variant_model in variants:
        variant_model.eval()
        features = study_features(variant_model, data, hooks, config.batch_size, context.progress)
        layer_rows += probe_variant(config, variant, data, features, hooks, run)
        if config.interventions is not None and variant != RANDOM_INIT:
            intervention_rows += intervene(
                config, variant, variant_model, data, features, hooks, batch
            )
    layers = pd.DataFrame(layer_rows)
    run.save_table("probe_layers", layers)
    if intervention_rows:
        run.save_table("probe_interventions", pd.DataFrame(intervention_rows))
    return summarise(layers, pd.DataFrame(intervention_rows), data)


def summarise(layers: pd.DataFrame, interventions: pd.DataFrame, data: StudyData) -> dict[str, Any]:
    """Per variant and target: the best layer and its mean score; the interventions."""
    summary: dict[str, Any] = {"targets": [t.name for t in data.targets]}
    for (variant, target), rows in layers.groupby(["variant", "target"], sort=False):
        best = rows.loc[rows["mean"].idxmax()]
        summary[f"{variant}/{target}/best_layer"] = int(best["layer"])
        summary[f"{variant}/{target}/best_{best['metric']}"] = _number(best["mean"])
    for row in interventions.to_dict("records"):
        key = f"{row['variant']}/{row['target']}/{row['intervention']}"
        for field in ("before", "after", "random_mean"):
            summary[f"{key}/{field}"] = _number(row[field])
    return summary


def _number(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


PROBE = ExperimentKind(
    name="probe",
    config_model=ProbeConfig,
    run=run_probe,
    description="linear probes at every layer with controls, MDL and causal interventions",
    model_artifacts=saves_no_model,
)
