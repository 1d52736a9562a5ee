"""Build time for `circuits.tracr_models`: compile the RASP programs with tracr, convert
them to native weights, check the conversion and regenerate the shipped files.

Needs the `tracr` extra (`pip install -e .[tracr]`); nothing at run time imports this
module. Regenerate `circuits/data/` with

    python -m circuits.tracr_compile [--out DIR]

which compiles both programs, converts them, checks the native model against tracr on every
input up to max_seq_len, and derives the ground truth per ablation (`derive_truth`).

Conversion: tracr's blocks are (attention, MLP) pairs already, with all-zero weights where a
program has only one of the two and heads padded to a common size, so block l of the native
model is tracr's layer l. No normalisation, ReLU MLPs, bidirectional attention scaled by
1/sqrt(d_head); the embedding is tracr's token plus position embedding in the residual
basis (position 0, BOS, has none), the unembedding reads tracr's output subspace, so the
logits are tracr's read-out before its argmax.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Int
from safetensors.torch import save
from torch import Tensor

from circuits.edge_patching import ABLATIONS
from circuits.tracr_models import (
    _COUNTED_TOKEN,
    DATA_DIR,
    PROGRAMS,
    TracrProgram,
    _files,
    _program_from_meta,
    check_circuit,
    derive_truth,
    structural_edges,
)
from interp import functional
from interp.atomic_io import atomic_write_bytes, atomic_write_text
from interp.models import ModelSpec, build
from interp.tasks.base import TaskBatch

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


@dataclass(frozen=True)
class _Settings:
    description: str
    vocab: tuple[Any, ...]
    acdc_length: int
    max_seq_len: int = 5
    bos: str = "BOS"


_SETTINGS: Mapping[str, _Settings] = {
    "reverse": _Settings(
        "tracr lib.make_reverse(rasp.tokens), vocab {1, 2, 3}, max_seq_len 5, compiler_bos "
        "'BOS' (ACDC's tracr-reverse)",
        (1, 2, 3),
        acdc_length=3,
    ),
    "frac_prevs": _Settings(
        "tracr lib.make_frac_prevs(rasp.tokens == 'x'), vocab {w, x, y, z}, max_seq_len 5, "
        "compiler_bos 'BOS' (ACDC's tracr-proportion)",
        ("w", "x", "y", "z"),
        acdc_length=4,
    ),
}


def compile_program(name: str) -> Any:
    """Compile program `name` with tracr (an `AssembledTransformerModel`)."""
    try:
        from tracr.compiler import compiling, lib
        from tracr.rasp import rasp
    except ImportError as error:
        raise ImportError("compiling needs tracr: pip install -e .[tracr]") from error
    if name not in PROGRAMS:
        raise ValueError(f"unknown tracr program {name!r}; choose from {PROGRAMS}")
    settings = _SETTINGS[name]
    if name == "reverse":
        sop = lib.make_reverse(rasp.tokens)
    else:
        sop = lib.make_frac_prevs(rasp.tokens == _COUNTED_TOKEN)
    assembled = compiling.compile_rasp_to_model(
        sop,
        vocab=set(settings.vocab),
        max_seq_len=settings.max_seq_len,
        compiler_bos=settings.bos,
    )
    assembled.program_label = sop.label  # names its output subspace
    return assembled


def _numerical_width() -> int:
    """1 where `ModelSpec` allows a single output, else 2 (the second logit stays zero)."""
    try:
        ModelSpec(n_layers=1, d_model=2, n_heads=1, d_vocab=2, n_ctx=1, d_vocab_out=1)
    except ValueError:
        return 2
    return 1


def convert(name: str, assembled: Any) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The JSON metadata (truth not yet filled in) and native weights of a compiled program."""
    config = assembled.model_config
    if config.layer_norm or config.causal:
        raise ValueError("only tracr models without layer norm, bidirectional, are converted")
    params = {
        k: {p: np.array(v, dtype=np.float32) for p, v in d.items()}
        for k, d in assembled.params.items()
    }
    labels = list(assembled.residual_labels)
    token_embed = params["token_embed"]["embeddings"]
    pos_embed = params["pos_embed"]["embeddings"]
    d_vocab, d_model = token_embed.shape
    in_map = assembled.input_encoder.encoding_map
    input_tokens = [str(t) for t, _ in sorted(in_map.items(), key=lambda item: item[1])]
    out_encoder = assembled.output_encoder
    label = assembled.program_label
    if hasattr(out_encoder, "encoding_map"):
        out_items = sorted(out_encoder.encoding_map.items(), key=lambda item: item[1])
        output_tokens: list[str] | None = [str(t) for t, _ in out_items]
        output_dims = [labels.index(f"{label}:{t}") for t, _ in out_items]
        d_vocab_out = len(output_dims)
    else:
        output_tokens, output_dims = None, [labels.index(label)]
        d_vocab_out = _numerical_width()
    settings = _SETTINGS[name]
    spec = ModelSpec(
        n_layers=config.num_layers,
        d_model=d_model,
        n_heads=config.num_heads,
        d_head=config.key_size,
        d_mlp=config.mlp_hidden_size,
        d_vocab=d_vocab,
        d_vocab_out=d_vocab_out,
        n_ctx=pos_embed.shape[0],
        act_fn="relu",
        normalization=None,
        attention="bidirectional",
    )
    unembed = np.zeros((d_vocab_out, d_model), dtype=np.float32)
    unembed[np.arange(len(output_dims)), output_dims] = 1.0
    weights = {
        "embed.weight": token_embed,
        "pos_embed.weight": pos_embed,
        "unembed.weight": unembed,
        "unembed.bias": np.zeros(d_vocab_out, dtype=np.float32),
    }
    for layer in range(config.num_layers):
        tracr_layer, block = f"transformer/layer_{layer}", f"blocks.{layer}"
        for ours, theirs in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "linear")):
            weights[f"{block}.attn.{ours}.weight"] = params[f"{tracr_layer}/attn/{theirs}"]["w"].T
            weights[f"{block}.attn.{ours}.bias"] = params[f"{tracr_layer}/attn/{theirs}"]["b"]
        for ours, theirs in (("in", "linear_1"), ("out", "linear_2")):
            weights[f"{block}.mlp.{ours}.weight"] = params[f"{tracr_layer}/mlp/{theirs}"]["w"].T
            weights[f"{block}.mlp.{ours}.bias"] = params[f"{tracr_layer}/mlp/{theirs}"]["b"]
    tensors = {key: torch.from_numpy(np.ascontiguousarray(v)) for key, v in weights.items()}
    meta = {
        "name": name,
        "description": settings.description,
        "spec": spec.model_dump(),
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "bos": settings.bos,
        "pad": assembled.input_encoder.pad_token,
        "vocab": [str(t) for t in settings.vocab],
        "max_seq_len": settings.max_seq_len,
        "residual_labels": labels,
        "truth": {},
        "acdc_length": settings.acdc_length,
        "acdc_truth": {},
        "structural_edges": [],
    }
    return meta, tensors


def tracr_reference(
    assembled: Any, program: TracrProgram, tokens: Int[Tensor, "batch pos"]
) -> tuple[Tensor, Tensor]:
    """Tracr's own run on `tokens` (each sequence unpadded, grouped by length): its final
    residual stream `[batch, pos, d_model]` (zeros after a sequence) and its decoded output
    `[batch, pos]` (output-token ids, or values when numerical; 0 off the output positions).
    """
    import jax
    import jax.numpy as jnp

    forward = jax.jit(assembled.forward)

    lengths = 1 + program.output_mask(tokens).sum(1)
    residual = torch.zeros(*tokens.shape, program.spec.d_model)
    decoded = torch.zeros(tokens.shape, dtype=torch.float64)
    for length in lengths.unique().tolist():
        rows = (lengths == length).nonzero()[:, 0]
        ids = jnp.asarray(tokens[rows, :length].numpy())
        output = forward(assembled.params, ids)
        residual[rows, :length] = torch.from_numpy(np.array(output.transformer_output.output))
        values = torch.from_numpy(np.asarray(output.unembedded_output, dtype=np.float64))
        decoded[rows, :length] = values
    decoded = decoded * program.output_mask(tokens)
    return residual, decoded


def verify_conversion(
    assembled: Any, model: TransformerBridge, program: TracrProgram, batch: TaskBatch
) -> dict[str, float]:
    """Compare the native model with tracr on every clean input of `batch`: the largest
    |difference| of the final residual stream (sequence positions) and of the numerical
    output, and the fraction of output positions whose token (argmax) agrees."""
    tokens = batch.clean
    cache: dict[str, Tensor] = {}
    params = functional.params_of(model)
    with torch.inference_mode():
        ours = functional.forward(params, tokens, program.spec, cache=cache)
        bridge = model(tokens)
    theirs_residual, theirs_decoded = tracr_reference(assembled, program, tokens)
    final = cache[f"blocks.{program.spec.n_layers - 1}.hook_resid_post"]
    in_sequence = tokens != program.pad_id
    output_mask = program.output_mask(tokens)
    readout = program.readout(ours)
    result = {
        "residual_max_abs_diff": (final - theirs_residual).abs()[in_sequence].max().item(),
        "bridge_vs_functional_max_abs_diff": (bridge - ours).abs().max().item(),
        "n_inputs": float(len(tokens)),
    }
    if program.numerical:
        diff = (readout[..., 0].double() - theirs_decoded).abs()[output_mask]
        result["output_max_abs_diff"] = diff.max().item()
        truth = program.expected(tokens)
        result["max_abs_diff_to_rasp"] = (readout[..., 0] - truth).abs()[output_mask].max().item()
    else:
        agree = readout.argmax(-1) == theirs_decoded.long()
        result["token_agreement"] = agree[output_mask].float().mean().item()
        right = readout.argmax(-1) == program.expected(tokens)
        result["rasp_agreement"] = right[output_mask].float().mean().item()
    return result


def regenerate(directory: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Compile, convert, verify and derive the truth of every program; write the files to
    `directory` (default: the shipped `circuits/data/`). Returns each program's checks."""
    directory = Path(directory or DATA_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    report: dict[str, dict[str, Any]] = {}
    for name in PROGRAMS:
        assembled = compile_program(name)
        meta, tensors = convert(name, assembled)
        program = _program_from_meta(meta)
        model = build(program.spec, device="cpu")
        functional.load_params(model, tensors)
        batch = program.batch()
        checks: dict[str, Any] = {"conversion": verify_conversion(assembled, model, program, batch)}
        meta["structural_edges"] = list(structural_edges(model, program.spec))
        acdc_batch = program.batch(lengths=[program.acdc_length])
        for key, each_batch in (("truth", batch), ("acdc_truth", acdc_batch)):
            for ablation in ABLATIONS:
                truth = derive_truth(model, program, each_batch, ablation)
                meta[key][ablation] = list(truth)
                check = check_circuit(model, program, each_batch, truth, ablation)
                checks[f"{key}/{ablation}"] = {
                    "n_edges": len(truth),
                    "max_deviation": check.max_deviation,
                    "min_removal_effect": min(check.removal_effects.values(), default=math.nan),
                    "metric_full": check.metric_full,
                    "metric_circuit": check.metric_circuit,
                }
        meta["checks"] = checks
        meta_path, weights_path = _files(name, directory)
        atomic_write_bytes(weights_path, save(tensors))
        atomic_write_text(meta_path, json.dumps(meta, indent=1) + "\n")
        report[name] = checks
    return report


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m circuits.tracr_compile [--out DIR]`: regenerate the shipped files."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", default=str(DATA_DIR), help="folder to write the files to")
    args = parser.parse_args(argv)
    print(json.dumps(regenerate(args.out), indent=1))


if __name__ == "__main__":
    main()
