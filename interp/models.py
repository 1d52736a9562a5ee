"""Models: build a native `TransformerBridge` from a spec, load a pretrained one, save/load.

Every analysis in the toolkit takes a `TransformerBridge`. Three ways to get one:

- `build(spec)`: a randomly initialised TransformerLens-native model from a validated
  `ModelSpec` (same spec and seed, same weights), through `TransformerBridge.boot_native`.
- `load(name_or_path)`: a Hugging Face model by hub name or local directory, through
  `TransformerBridge.boot_transformers`.
- `load_checkpoint(dir)`: a model written by `save(model, dir)`: safetensors weights and a
  JSON spec (native), or a Hugging Face folder (pretrained). Nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from interp.atomic_io import atomic_write_json, atomic_write_with
from interp.model_errors import ModelLoadError
from interp.validation import Seed, parse_config

if TYPE_CHECKING:  # TransformerLens takes seconds to import: only where a model is made
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

SPEC_FILE = "model_spec.json"
WEIGHTS_FILE = "model.safetensors"

ActivationName = Literal["relu", "gelu", "gelu_new", "silu", "solu_ln"]
NormalizationName = Literal["LN", "LNPre", "RMS", "RMSPre"]


class ModelSpec(BaseModel):
    """The shape of a native model. Validated: unknown keys and impossible values raise.

    Attributes:
        n_layers: Number of transformer blocks.
        d_model: Width of the residual stream.
        n_heads: Attention heads per layer.
        d_head: Width of each head; when omitted, `d_model // n_heads`, and then
            `d_model` must be divisible by `n_heads`.
        d_mlp: Hidden width of each MLP (ignored and None when `attn_only`); default
            `4 * d_model`.
        d_vocab: Input vocabulary size.
        d_vocab_out: Output vocabulary size; default `d_vocab`.
        n_ctx: Longest sequence the positional embedding covers.
        act_fn: MLP activation.
        normalization: LayerNorm kind before each sublayer and the unembedding, or None.
        attn_only: Blocks without MLPs.
        positional_embedding: Learned absolute ("standard") or "rotary".
        attention: "causal" (each position attends to itself and earlier ones) or
            "bidirectional" (every position to every position, as in BERT or tracr's
            compiled programs).
        seed: Seed of the weight initialisation.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_layers: int = Field(ge=1)
    d_model: int = Field(ge=1)
    n_heads: int = Field(ge=1)
    d_head: int | None = Field(default=None, ge=1)
    d_mlp: int | None = Field(default=None, ge=1)
    d_vocab: int = Field(ge=2)
    d_vocab_out: int | None = Field(default=None, ge=2)
    n_ctx: int = Field(ge=1)
    act_fn: ActivationName = "relu"
    normalization: NormalizationName | None = "LN"
    attn_only: bool = False
    positional_embedding: Literal["standard", "rotary"] = "standard"
    attention: Literal["causal", "bidirectional"] = "causal"
    seed: Seed = 0

    @model_validator(mode="after")
    def _resolve_defaults(self) -> ModelSpec:
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                    "set d_head explicitly or change n_heads"
                )
            object.__setattr__(self, "d_head", self.d_model // self.n_heads)
        if self.d_vocab_out is None:
            object.__setattr__(self, "d_vocab_out", self.d_vocab)
        if self.attn_only:
            object.__setattr__(self, "d_mlp", None)
        elif self.d_mlp is None:
            object.__setattr__(self, "d_mlp", 4 * self.d_model)
        return self

    def to_bridge_config(self) -> TransformerBridgeConfig:
        """The TransformerLens config that `boot_native` builds this spec from."""
        from transformer_lens.config import TransformerBridgeConfig

        return TransformerBridgeConfig(
            n_layers=self.n_layers,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_head=self.d_head,
            # TransformerLens wants a width even for attention-only models; it is unused.
            d_mlp=self.d_mlp if self.d_mlp is not None else 4 * self.d_model,
            d_vocab=self.d_vocab,
            d_vocab_out=self.d_vocab_out,
            n_ctx=self.n_ctx,
            act_fn=self.act_fn,
            normalization_type=self.normalization,
            attn_only=self.attn_only,
            positional_embedding_type=self.positional_embedding,
            attention_dir=self.attention,
            seed=self.seed,
            default_prepend_bos=False,
        )


def model_sizes(cfg: Any) -> tuple[int, int, int | None]:
    """`(d_vocab, d_vocab_out, n_ctx)` of a model's config (`model.cfg`) or a `ModelSpec`:
    `d_vocab_out` unset or -1 (TransformerLens's "same as d_vocab") reads as `d_vocab`, and
    `n_ctx` is None when the config has none."""
    d_vocab = int(cfg.d_vocab)
    d_vocab_out = getattr(cfg, "d_vocab_out", None)
    n_ctx = getattr(cfg, "n_ctx", None)
    return (
        d_vocab,
        d_vocab if d_vocab_out in (None, -1) else int(d_vocab_out),
        int(n_ctx) if n_ctx else None,
    )


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """`"auto"` (or None) is CUDA when present, else CPU; anything else is taken as given.

    A malformed name raises ValueError; a CUDA device without CUDA, `ModelLoadError`."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device {device!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {str(device)!r} was asked for but CUDA is not available")
    return resolved


def check_dtype(dtype: object) -> None:
    """A one-line ValueError unless `dtype` is None or a floating `torch.dtype` (what a
    model's weights can be)."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(
            f"dtype must be a floating torch.dtype (e.g. torch.float16) or None, not {dtype!r}"
        )


def build(
    spec: ModelSpec | Mapping[str, Any],
    device: str | torch.device | None = "auto",
    dtype: torch.dtype | None = None,
) -> TransformerBridge:
    """A randomly initialised native model; the same spec and seed give the same weights.
    A bad spec raises a one-line ValueError naming the field."""
    from transformer_lens.model_bridge import TransformerBridge

    if not isinstance(spec, ModelSpec):
        spec = parse_config(ModelSpec, spec)
    check_dtype(dtype)
    with _quiet():
        model = TransformerBridge.boot_native(
            spec.to_bridge_config(), device=resolve_device(device), dtype=dtype
        )
    model.interp_spec = spec  # type: ignore[attr-defined]
    return model


def spec_of(model: TransformerBridge) -> ModelSpec | None:
    """The `ModelSpec` a native model was built from, or None for a pretrained model."""
    return getattr(model, "interp_spec", None)


def attached_hooks(model: TransformerBridge) -> list[str]:
    """Names of `model`'s hook points that hold hooks added through TransformerLens
    (`add_hook`, permanent or not, or inside `hooks()` / `run_with_hooks`), bar the
    bridge's own (the mirrors TransformerLens wires into MLPs split in two, OPT's); one
    name per hook point, the shortest of its aliases (`blocks.1.attn.hook_z`, not
    `blocks.1.attn.o.hook_in`). Engines that compute a model without its hooks
    (`interp.functional` and the engines built on it) check this first."""
    aliases: dict[int, list[str]] = {}
    for name, point in model.hook_dict.items():
        handles = [*getattr(point, "fwd_hooks", ()), *getattr(point, "bwd_hooks", ())]
        if any(not _bridge_own_hook(handle) for handle in handles):
            aliases.setdefault(id(point), []).append(name)
    return [min(names, key=lambda name: (len(name), name)) for names in aliases.values()]


def refuse_attached_hooks(model: TransformerBridge, engine: str, advice: str) -> None:
    """Raise one line naming `model`'s attached hooks (`attached_hooks`), if it has any,
    which `engine` computes the model without."""
    hooked = attached_hooks(model)
    if hooked:
        shown = ", ".join(hooked[:3]) + (f" and {len(hooked) - 3} more" if len(hooked) > 3 else "")
        raise ValueError(
            f"the model has hooks attached ({shown}), which {engine} would not run; {advice}"
        )


def _bridge_own_hook(handle: Any) -> bool:
    """Whether a hook handle is one TransformerLens attached when it built the bridge."""
    qualname = getattr(getattr(handle, "user_hook", None), "__qualname__", "")
    return qualname.startswith("_wire_symbolic_hooks.")


def load(
    name_or_path: str | os.PathLike[str],
    device: str | torch.device | None = "auto",
    dtype: torch.dtype | None = None,
    revision: str | None = None,
) -> TransformerBridge:
    """Boot a Hugging Face model by hub name or local directory.

    `revision` picks a branch, tag or commit of a hub model, e.g. one of Pythia's training
    checkpoints (`load("EleutherAI/pythia-70m", revision="step3000")`); it is recorded on
    the model, so `save` and `load_checkpoint` boot the same revision. A local folder has
    no revisions: giving one with a folder raises ValueError.

    Weights the model class has but the checkpoint lacks (all-MiniLM-L6-v2 ships a bare
    `BertModel`, booted as `BertForMaskedLM`: its masked-LM head is not in the checkpoint)
    are initialised by Hugging Face from a generator seeded with 0, so every load gives
    the same model (the caller's random state is left as it was). Their names are kept
    in `model.interp_untrained` (empty when the checkpoint has every weight), and a
    one-line `UserWarning` names them: logits read through an untrained head, and every
    metric on them, measure nothing the checkpoint learned.

    A folder written by `save` is recognised and loaded with `load_checkpoint`. When the
    weights cannot be had (offline, missing, unsupported architecture) this raises a
    `ModelLoadError` with one line saying so, not the hub client's traceback.
    """
    model = _boot(name_or_path, device, dtype, revision)
    untrained: tuple[str, ...] = getattr(model, "interp_untrained", ())
    if untrained:
        warnings.warn(_untrained_message(model, untrained), UserWarning, stacklevel=2)
    return model


def _boot(
    name_or_path: str | os.PathLike[str],
    device: str | torch.device | None,
    dtype: torch.dtype | None,
    revision: str | None,
) -> TransformerBridge:
    """`load` without its warning about weights the checkpoint lacks."""
    check_dtype(dtype)
    path = Path(name_or_path).expanduser()
    looks_local = path.exists() or str(name_or_path).startswith((".", "/", "~"))
    if looks_local and revision is not None:
        raise ValueError(
            f"revision={revision!r} is for hub models; {str(path)!r} is a local folder"
        )
    if (path / SPEC_FILE).is_file():
        return load_checkpoint(path, device=device, dtype=dtype)
    if looks_local and not path.is_dir():
        raise ModelLoadError(f"model folder {str(path)!r} does not exist")
    source = str(path) if looks_local else str(name_or_path)
    kwargs: dict[str, Any] = {"device": str(resolve_device(device))}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if revision is not None:
        kwargs["revision"] = revision
    from transformer_lens.model_bridge import TransformerBridge

    try:
        with _quiet(), _seeded_initialisation(), _weights_not_in_checkpoint() as untrained:
            model = TransformerBridge.boot_transformers(source, **kwargs)
    except Exception as error:  # the hub client raises many types; we report one line
        raise ModelLoadError(_load_failure_message(source, looks_local, error)) from error
    model.interp_source = source  # type: ignore[attr-defined]
    model.interp_revision = revision  # type: ignore[attr-defined]
    model.interp_untrained = tuple(sorted(untrained))  # type: ignore[attr-defined]
    return model


@contextlib.contextmanager
def _seeded_initialisation(seed: int = 0) -> Iterator[None]:
    """Seed the CPU generator (where Hugging Face initialises weights missing from a
    checkpoint) for the block, then restore the caller's state."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


_REPORT_ROW = re.compile(r"^\s*([\w.{}, -]+?)\s*\|\s*(?:MISSING|MISMATCH)\b", re.MULTILINE)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _ReportRows(logging.Handler):
    """Collects the weight names that transformers' load report marks MISSING or MISMATCH
    (newly initialised)."""

    def __init__(self, names: set[str]) -> None:
        super().__init__(logging.WARNING)
        self.names = names

    def emit(self, record: logging.LogRecord) -> None:
        text = _ANSI.sub("", record.getMessage())
        if "LOAD REPORT" in text:
            self.names.update(_REPORT_ROW.findall(text))


@contextlib.contextmanager
def _weights_not_in_checkpoint() -> Iterator[set[str]]:
    """The names of the weights Hugging Face initialises because the checkpoint lacks them,
    read from its load report (which TransformerLens silences by raising the level of the
    `transformers` logger: lowered here for transformers' model loader only, its report
    kept from the terminal)."""
    logger = logging.getLogger("transformers.modeling_utils")
    names: set[str] = set()
    handler = _ReportRows(names)
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield names
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _untrained_message(model: TransformerBridge, untrained: tuple[str, ...]) -> str:
    source = getattr(model, "interp_source", "the model")
    more = len(untrained) - 4
    shown = ", ".join(untrained[:4]) + (f" and {more} more" if more > 0 else "")
    prefix = getattr(model.original_model, "base_model_prefix", "")
    in_head = bool(prefix) and not any(name.startswith(f"{prefix}.") for name in untrained)
    what = (
        "its output head is untrained, so the logits, and every metric read from them, "
        "measure a random head (the activations inside the model are the checkpoint's)"
        if in_head
        else "what computes through them is untrained"
    )
    return (
        f"{source}: {len(untrained)} weights are not in the checkpoint and were initialised "
        f"at random (seed 0): {shown}; {what}"
    )


def _load_failure_message(source: str, local: bool, error: BaseException) -> str:
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if local:
        return f"cannot load model from folder {source!r}: {first_line}"
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else first_line
    if not offline and "connect" in first_line.lower():
        why += " (with no network, HF_HUB_OFFLINE=1 reads the local cache without retrying)"
    return f"cannot load model {source!r} from the Hugging Face hub: {why}"


def save(model: TransformerBridge, directory: str | os.PathLike[str]) -> Path:
    """Write a model's weights (safetensors) and what it was made from (JSON) to `directory`.

    Native models record their `ModelSpec`; pretrained ones the hub name or folder they
    were loaded from (and the hub revision, if one was asked for), which must still be
    reachable when the checkpoint is loaded. Each file is replaced atomically.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = spec_of(model)
    source = getattr(model, "interp_source", None)
    if spec is not None:
        meta: dict[str, Any] = {"source": "native", "spec": spec.model_dump()}
    elif source is not None:
        # A pretrained model is saved as its source plus its (possibly fine-tuned) weights.
        meta = {"source": "hf", "name_or_path": source}
        revision = getattr(model, "interp_revision", None)
        if revision is not None:
            meta["revision"] = revision
    else:
        raise ModelLoadError("can only save models made by interp.models.build or load")
    # Clone so tensors that share storage (tied embeddings) serialise separately.
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    atomic_write_with(directory / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp)))
    atomic_write_json(directory / SPEC_FILE, meta)
    return directory


def load_checkpoint(
    directory: str | os.PathLike[str],
    device: str | torch.device | None = "auto",
    dtype: torch.dtype | None = None,
) -> TransformerBridge:
    """Load a model written by `save`. A round trip gives identical logits."""
    directory = Path(directory)
    meta = read_checkpoint_meta(directory)
    if meta["source"] == "hf":  # every weight, a head trained since included, is saved
        model = _boot(meta["name_or_path"], device, dtype, meta.get("revision"))
        model.interp_untrained = ()  # type: ignore[attr-defined]
    else:
        model = build(meta["spec"], device=device, dtype=dtype)
    weights_path = directory / WEIGHTS_FILE
    try:
        state = load_file(str(weights_path), device=str(next(model.parameters()).device))
    except (SafetensorError, OSError) as error:
        raise ModelLoadError(
            f"{str(weights_path)!r} is not a readable safetensors file: {_first_line(error)}"
        ) from error
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ModelLoadError(
            f"weights in {str(weights_path)!r} do not fit the saved spec: "
            f"{_state_dict_problem(error)}"
        ) from error
    return model


def read_checkpoint_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """What a folder written by `save` was made from, checked without building anything:
    `{"source": "native", "spec": ModelSpec}` or `{"source": "hf", "name_or_path": str,
    ...}`. A one-line `ModelLoadError` when the folder is not a saved model, its
    `model_spec.json` is not what `save` writes, or its weights file is missing."""
    directory = Path(directory)
    spec_path = directory / SPEC_FILE
    if not spec_path.is_file():
        raise ModelLoadError(f"{str(directory)!r} is not a saved model (no {SPEC_FILE})")
    try:
        meta = json.loads(spec_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{str(spec_path)!r} is not valid JSON: {error}") from error
    source = meta.get("source") if isinstance(meta, dict) else None
    if source == "hf":
        if not isinstance(meta.get("name_or_path"), str) or not meta["name_or_path"]:
            raise ModelLoadError(f"{str(spec_path)!r} names no model (no 'name_or_path')")
    elif source == "native":
        try:
            meta = {**meta, "spec": parse_config(ModelSpec, meta.get("spec"))}
        except ValueError as error:
            raise ModelLoadError(f"{str(spec_path)!r} holds no valid spec: {error}") from None
    else:
        raise ModelLoadError(
            f"{str(spec_path)!r} is not a saved model's description (a JSON object with "
            "source 'native' and a spec, or source 'hf' and a name_or_path)"
        )
    if not (directory / WEIGHTS_FILE).is_file():
        raise ModelLoadError(f"{str(directory)!r} has a spec but no {WEIGHTS_FILE}")
    return meta


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _state_dict_problem(error: RuntimeError) -> str:
    """The first problem `load_state_dict` names (its first line only says that there are
    some: "Error(s) in loading state_dict for ...:")."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        return lines[1]
    return lines[0] if lines else type(error).__name__


@contextlib.contextmanager
def _quiet():
    """Silence the progress chatter TransformerLens and transformers print while booting."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield
