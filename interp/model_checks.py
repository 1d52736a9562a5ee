"""The checks every kind that pairs a model with a task shares at validation, without
building either (`check_model_and_task`, `check_metric`): a `{run: X}` reference must name a
run that exists (or a member that runs earlier in the same suite and saves that model), and
a model of known sizes must fit its task. A config validated with a run store in its
context (`interp validate` and `interp run` pass one) gets all of these; without one, only
what needs no store. (That a package model is installed is checked by
`interp.model_refs.PackageModelRef` itself.)"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationInfo

from interp import models
from interp.experiments import PENDING_KEY, STORE_KEY, KindLoadError, load_kinds
from interp.model_refs import CheckpointRef, checkpoint_run
from interp.tasks import TASKS, make_task
from interp.tasks.base import Task
from interp.tasks.text_task import TextTask


@dataclass(frozen=True)
class ModelFacts:
    """What validation knows of a config's model without building it.

    Attributes:
        spec: The native spec's fields (d_vocab, d_vocab_out, n_ctx, n_layers, ...), or None
            where the sizes are unknown (a hub model, no store to read a checkpoint from).
        origin: Where the sizes come from, for messages ("" for an inline spec).
    """

    spec: Mapping[str, Any] | None = None
    origin: str = ""


def model_facts(ref: Any, context: Mapping[str, Any] | None, label: str = "model") -> ModelFacts:
    """What is known of the model `ref` names. With a run store in `context`, a
    `{run: X}` reference must resolve (to a run of the store or an earlier suite member;
    a one-line ValueError otherwise) and its sizes are read from the checkpoint's
    `model_spec.json` (no torch)."""
    if isinstance(ref, models.ModelSpec):
        return ModelFacts(ref.model_dump())
    if isinstance(ref, CheckpointRef):
        return _checkpoint_facts(ref, context or {}, label, depth=0)
    return ModelFacts()


def _checkpoint_facts(
    ref: CheckpointRef, context: Mapping[str, Any], label: str, depth: int
) -> ModelFacts:
    pending = context.get(PENDING_KEY) or {}
    if "/" not in ref.run and ref.run in pending:
        _check_member_saves(ref, pending[ref.run], label)
        origin = f"the model is the one suite member {ref.run!r} makes"
        model = pending[ref.run].get("model") if isinstance(pending[ref.run], Mapping) else None
        if isinstance(model, Mapping) and "run" in model and depth < 8:
            try:
                inner = CheckpointRef.model_validate(model)
            except ValueError:
                return ModelFacts(origin=origin)
            return ModelFacts(_checkpoint_facts(inner, context, label, depth + 1).spec, origin)
        if isinstance(model, Mapping) and "d_vocab" in model:
            return ModelFacts(model, origin)
        return ModelFacts(origin=origin)
    store = context.get(STORE_KEY)
    if store is None:
        return ModelFacts()
    try:
        run = checkpoint_run(ref, store)
    except models.ModelLoadError as error:
        raise ValueError(f"{label}: {error}") from None
    origin = f"the model is the checkpoint of run {run.ref}"
    return ModelFacts(_saved_spec(run.artifacts_dir / ref.artifact), origin)


def _check_member_saves(ref: CheckpointRef, member: Any, label: str) -> None:
    """A one-line ValueError when the earlier suite member `ref` names will save no model
    at `ref.artifact` (as its kind's `model_artifacts` says; an unknown kind checks
    nothing)."""
    kinds = load_kinds()
    name = member.get("kind") if isinstance(member, Mapping) else None
    if not isinstance(name, str) or name not in kinds:
        return
    try:
        saved = kinds[name].model_artifacts
    except KindLoadError:
        return
    artifacts = saved(member) if saved is not None else None
    if artifacts is None or ref.artifact in artifacts:
        return
    where = f"saves its models at {', '.join(artifacts)}" if artifacts else "saves no model"
    raise ValueError(
        f"{label}: suite member {ref.run!r} is a {name} run, which {where}, not at "
        f"artifact {ref.artifact!r}"
    )


def _saved_spec(folder: Path) -> Mapping[str, Any] | None:
    """The native spec a checkpoint folder's `model_spec.json` records (None for a
    pretrained model, or where the file cannot be read: loading it will say why)."""
    try:
        meta = json.loads((folder / models.SPEC_FILE).read_text())
    except (OSError, ValueError):
        return None
    spec = meta.get("spec") if isinstance(meta, dict) and meta.get("source") == "native" else None
    return spec if isinstance(spec, dict) and "d_vocab" in spec else None


def spec_sizes(spec: Mapping[str, Any]) -> tuple[int, int, int | None]:
    """`(d_vocab, d_vocab_out, n_ctx)` of a spec's fields (as `models.model_sizes`)."""
    return models.model_sizes(_Fields(spec))


class _Fields:
    def __init__(self, fields: Mapping[str, Any]) -> None:
        self.__dict__.update(fields)


def task_misfit(
    d_vocab: int, d_vocab_out: int, n_ctx: int | None, task: Task, label: str = "model"
) -> str | None:
    """Why a model of these sizes (`models.model_sizes`; `n_ctx` None for no limit) cannot
    run `task` (one line; `label` names the model's key), or None when it can."""
    if task.d_vocab is not None and d_vocab < task.d_vocab:
        return (
            f"{label}.d_vocab={d_vocab} is smaller than task {task.name!r}'s vocabulary "
            f"({task.d_vocab})"
        )
    if task.d_vocab_out is not None and d_vocab_out < task.d_vocab_out:
        return (
            f"{label}.d_vocab_out={d_vocab_out} is smaller than task {task.name!r}'s output "
            f"vocabulary ({task.d_vocab_out})"
        )
    if task.n_ctx is not None and n_ctx is not None and n_ctx < task.n_ctx:
        return (
            f"{label}.n_ctx={n_ctx} is shorter than task {task.name!r}'s sequences "
            f"({task.n_ctx})"
        )
    return None


def _native_task(task_config: Any) -> Task | None:
    """The task, built when it needs no tokenizer (building reads only its config)."""
    name = getattr(task_config, "name", None)
    if name not in TASKS or issubclass(TASKS[name], TextTask):
        return None
    return make_task(task_config)


def check_model_and_task(
    model: Any, task_config: Any, info: ValidationInfo | None, label: str = "model"
) -> ModelFacts:
    """The shared validator of kinds that pair a model with a task: the model reference
    resolves (see `model_facts`) and a model of known sizes fits the task (`task_config`
    may be None: no task). Raises a one-line ValueError; returns what is known."""
    facts = model_facts(model, info.context if info is not None else None, label)
    task = _native_task(task_config) if task_config is not None else None
    if facts.spec is not None and task is not None:
        misfit = task_misfit(*spec_sizes(facts.spec), task, label=label)
        if misfit:
            raise ValueError(f"{misfit}; {facts.origin}" if facts.origin else misfit)
    return facts


def task_metric_names(task_config: Any) -> set[str]:
    """Names of the metrics a task offers, known without a tokenizer: a native task's
    own list; for a text task the common metrics and its default one."""
    from interp.metrics import METRICS

    names = set(METRICS)
    task_class = TASKS.get(getattr(task_config, "name", None) or "")
    if task_class is not None:
        names.add(task_class.default_metric)
    task = _native_task(task_config) if task_class is not None else None
    if task is not None:
        names |= set(task.metrics())
    return names


def check_metric(metric: str | None, task_config: Any, label: str = "metric") -> None:
    """A one-line ValueError unless `metric` (None: the task's default) is a metric of the
    task (`task_config`; None: the common metrics of `interp.metrics.METRICS`)."""
    from interp.metrics import METRICS

    if metric is None:
        return
    names = set(METRICS) if task_config is None else task_metric_names(task_config)
    if metric not in names:
        where = f" of task {task_config.name!r}" if task_config is not None else ""
        raise ValueError(f"{label}: unknown metric {metric!r}{where}; choose from {sorted(names)}")
