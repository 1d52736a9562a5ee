"""Side by side: `circuits.patching.patch` against TransformerLens's activation patching.

    python benchmarks/patching.py [--quick] [--device cpu|cuda|auto]

Two sweeps, each on two native models from `interp.models.build` (GELU, LayerNorm,
vocabulary 1000): 2 layers x 4 heads x d_model 64, and 4 layers x 8 heads x d_model 256;
then on two pretrained-format models of the larger shape: a random Hugging Face GPT-2
(`GPT2LMHeadModel`) and GPT-NeoX (`GPTNeoXForCausalLM`, Pythia's architecture) booted from
local folders, as `gpt2` or `EleutherAI/pythia-160m` from the hub are, which the
incremental engine covers too (`interp.pretrained_layout`) and whose bridges run Hugging
Face's modules behind their hooks for the reference.

- `resid_pre`: layer x position residual-stream patching, against
  `transformer_lens.patching.get_act_patch_resid_pre`;
- `z`: every head's output over all positions, layer x head, against
  `get_act_patch_attn_head_out_all_pos`.

The task is 32 random clean sequences of 24 tokens, corrupted = another random batch,
random answer and wrong tokens read at the last position; the metric is the mean logit
difference (`interp.metrics.mean_metric(interp.metrics.logit_diff)`). Both sides denoise
(clean activations into the corrupted run). The reference is what a user writes:

```
model.eval()
_, clean_cache = model.run_with_cache(clean_tokens)
get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, lambda logits: metric(logits, batch))
```

so its time includes the clean cache; both sides run under `torch.inference_mode()`. Ours is
timed as a whole `patch` call: its own clean and corrupted runs (which also give the clean
and corrupted metrics that the reference does not compute), every patched pass, the metric
and building the `PatchingResult`.

TransformerLens runs one forward pass of the whole model per index; ours (the incremental
engine, `circuits.patching.incremental`, which these native models get by default) reruns
only the layers after the patched one, the positions from the patched one on, and the last
layer and unembedding at the read position, folding `max_batch // batch` indices into each
pass, and reads the metric once on all the copies of a pass (`torch.func.vmap`) where
TransformerLens reads it once per index. Clean and corrupted prompts here differ at every
position, the worst case for ours (prompts that share a prefix skip it too). Ours is timed
with a few `max_batch` values first and the fastest is used for the printed line (named in
it). After each such line, attribution
patching (`circuits.attribution.attribute`: two forward passes and one backward pass) is
set against our exact patching as the reference, with the Pearson correlation of the two
grids in the line; its max |diff| is the first-order approximation's error, not a bug.
Otherwise max |diff| is between the two value tensors (`[layer, pos]` and `[layer, head]`).
A third line per target times attribution patching's runs through `interp.functional`
(`attribute`'s default where it covers the model) against its runs through the bridge's
hooks (`engine="hooks"`); max |diff| is between their estimates.
After each comparison a line starting with `# ` counts the aten ops and host syncs one
more call of each side dispatches (`interp.dispatch_count`; "not views" are about the
kernel launches): where a GPU is bound by launches, as with small models, the speedup
follows their ratio; on a CPU the arithmetic decides (and there the incremental engine
reads the metric on at most `CPU_METRIC_BUFFER` logits at once, so it counts more ops
there than on a GPU).
A final line starting with `#` gives the load average: timings on a small CPU are noisy
when anything else runs.

`--quick` shrinks it (the 2-layer model only, batch 4, 8 positions) so CI runs it in seconds.
TransformerLens shows a progress bar per sweep on stderr.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from _common import (
    Comparison,
    compare,
    load_line,
    parse_args,
    random_pretrained,
    time_once,
)
from jaxtyping import Float
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.patching import (
    get_act_patch_attn_head_out_all_pos,
    get_act_patch_resid_pre,
)

from circuits.attribution import attribute, correlation
from circuits.patching import PatchingResult, patch
from interp.metrics import logit_diff, mean_metric
from interp.models import build
from interp.tasks.base import TaskBatch

Reference = Callable[..., Tensor]
"""A TransformerLens sweep: `(model, corrupted_tokens, clean_cache, metric) -> values`."""

REFERENCES: dict[str, Reference] = {
    "resid_pre": get_act_patch_resid_pre,
    "z": get_act_patch_attn_head_out_all_pos,
}
"""Our target name -> the TransformerLens function computing the same grid."""

AXES = {"resid_pre": "[layer, pos]", "z": "[layer, head]"}


FAMILIES = ("native", "gpt2", "neox", "llama", "gemma2", "gpt_neo", "phi", "bloom")
"""The model families of the benchmark: native, or random Hugging Face checkpoints."""


@dataclass(frozen=True)
class ModelShape:
    """One model of the benchmark: native, or a random Hugging Face GPT-2, GPT-NeoX, Llama
    (two query heads per key and value head), Gemma 2 (norms after attention and MLP,
    soft caps), GPT-Neo (unscaled scores, local layers with a window of 3/8 of the
    positions), Phi (parallel attention and MLP behind one LayerNorm, partial rotary) or
    BLOOM (ALiBi, a LayerNorm on the embeddings) booted from a folder."""

    n_layers: int
    n_heads: int
    d_model: int
    family: Literal["native", "gpt2", "neox", "llama", "gemma2", "gpt_neo", "phi",
                    "bloom"] = "native"

    def label(self) -> str:
        family = {"native": "native", "gpt2": "GPT-2 (HF)", "neox": "GPT-NeoX (HF)",
                  "llama": "Llama (HF)", "gemma2": "Gemma 2 (HF)", "gpt_neo": "GPT-Neo (HF)",
                  "phi": "Phi (HF)", "bloom": "BLOOM (HF)"}
        return f"{family[self.family]} {self.n_layers}L {self.n_heads}h d{self.d_model}"

    def build(self, sizes: Sizes, device: torch.device) -> TransformerBridge:
        """The model, random weights (seed 0), in eval mode (TransformerLens's patching
        refuses a model in training mode)."""
        if self.family != "native":
            return random_pretrained(
                self.family, device, n_layers=self.n_layers, n_heads=self.n_heads,
                d_model=self.d_model, d_vocab=sizes.d_vocab, n_ctx=sizes.n_pos,
            )
        spec = {
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_heads": self.n_heads,
            "d_vocab": sizes.d_vocab,
            "n_ctx": sizes.n_pos,
            "act_fn": "gelu",
            "normalization": "LN",
            "seed": 0,
        }
        return build(spec, device=device).eval()


@dataclass(frozen=True)
class Sizes:
    """The sizes of one run of the benchmark (full or `--quick`)."""

    models: tuple[ModelShape, ...]
    d_vocab: int
    n_examples: int
    n_pos: int
    max_batches: tuple[int, ...]
    repeats: int


FULL = Sizes(
    models=(
        ModelShape(2, 4, 64),
        ModelShape(4, 8, 256),
        ModelShape(4, 8, 256, "gpt2"),
        ModelShape(4, 8, 256, "neox"),
        ModelShape(4, 8, 256, "llama"),
        ModelShape(4, 8, 256, "gemma2"),
        ModelShape(4, 8, 256, "gpt_neo"),
        ModelShape(4, 8, 256, "phi"),
        ModelShape(4, 8, 256, "bloom"),
    ),
    d_vocab=1000,
    n_examples=32,
    n_pos=24,
    max_batches=(32, 64, 256, 512),
    repeats=3,
)
QUICK = Sizes(
    models=(
        ModelShape(2, 4, 64),
        ModelShape(2, 4, 64, "gpt2"),
        ModelShape(2, 4, 64, "neox"),
        ModelShape(2, 4, 64, "llama"),
        ModelShape(2, 4, 64, "gemma2"),
        ModelShape(2, 4, 64, "gpt_neo"),
        ModelShape(2, 4, 64, "phi"),
        ModelShape(2, 4, 64, "bloom"),
    ),
    d_vocab=1000,
    n_examples=4,
    n_pos=8,
    max_batches=(16, 32),
    repeats=1,
)


def random_batch(sizes: Sizes, seed: int) -> TaskBatch:
    """Random clean and corrupted sequences, answer/wrong tokens read at the last position."""
    generator = torch.Generator().manual_seed(seed)
    shape = (sizes.n_examples, sizes.n_pos)
    return TaskBatch(
        clean=torch.randint(0, sizes.d_vocab, shape, generator=generator),
        corrupted=torch.randint(0, sizes.d_vocab, shape, generator=generator),
        answer=torch.randint(0, sizes.d_vocab, (sizes.n_examples,), generator=generator),
        wrong=torch.randint(0, sizes.d_vocab, (sizes.n_examples,), generator=generator),
        position=torch.full((sizes.n_examples,), sizes.n_pos - 1),
    )


def exact(
    model: TransformerBridge, batch: TaskBatch, target: str, max_batch: int
) -> PatchingResult:
    """`circuits.patching.patch` of `target` (denoising)."""
    with torch.inference_mode():
        return patch(
            model, batch, target, mean_metric(logit_diff), max_batch=max_batch, progress=False
        )


def ours(model: TransformerBridge, batch: TaskBatch, target: str, max_batch: int) -> Tensor:
    """The patching grid of `target` from `circuits.patching.patch` (denoising)."""
    return exact(model, batch, target, max_batch).values


def attribution(
    model: TransformerBridge, batch: TaskBatch, target: str, engine: str = "auto"
) -> PatchingResult:
    """Attribution patching of `target` (denoising): two forward passes and one backward
    (`engine`: through `interp.functional` where it covers the model, or the hooks)."""
    return attribute(model, batch, target, mean_metric(logit_diff), engine=engine)  # type: ignore[arg-type]


def reference(model: TransformerBridge, batch: TaskBatch, target: str) -> Tensor:
    """The same grid from TransformerLens, clean cache included, as a user runs it."""
    metric = mean_metric(logit_diff)

    def patching_metric(logits: Float[Tensor, "batch pos vocab"]) -> Tensor:
        return metric(logits, batch)

    with torch.inference_mode():
        _, clean_cache = model.run_with_cache(batch.clean)
        values = REFERENCES[target](model, batch.corrupted, clean_cache, patching_metric)
    return values.cpu()


def fastest_max_batch(model: TransformerBridge, batch: TaskBatch, target: str, sizes: Sizes) -> int:
    """The `max_batch` of `sizes.max_batches` with which ours runs fastest (the best of
    `sizes.repeats` warm runs each, taken in turns: one run each was noisy enough here to
    pick a setting 1.5x slower than the best)."""
    device = batch.clean.device
    ours(model, batch, target, sizes.max_batches[0])  # warm-up
    seconds = {max_batch: math.inf for max_batch in sizes.max_batches}
    for _ in range(sizes.repeats):
        for max_batch in sizes.max_batches:
            run = lambda max_batch=max_batch: ours(model, batch, target, max_batch)  # noqa: E731
            seconds[max_batch] = min(seconds[max_batch], time_once(run, device))
    return min(seconds, key=seconds.__getitem__)


def compare_model(
    shape: ModelShape, sizes: Sizes, device: torch.device
) -> Iterator[Comparison]:
    """Two comparisons per target on one model, left in eval mode, each yielded as soon as
    it is measured (so that a run cut off by a time limit keeps what it measured)."""
    model = shape.build(sizes, device)
    batch = random_batch(sizes, seed=0).to(device)
    for target in REFERENCES:
        max_batch = fastest_max_batch(model, batch, target, sizes)
        what = (
            f"{shape.label()}, {sizes.n_examples}x{sizes.n_pos} tokens, {target} "
            f"{AXES[target]}, ours max_batch {max_batch}"
        )
        yield compare(
            what,
            lambda target=target, max_batch=max_batch: ours(model, batch, target, max_batch),
            lambda target=target: reference(model, batch, target),
            device=device,
            repeats=sizes.repeats,
            count_ops=True,
        )
        r = correlation(attribution(model, batch, target), exact(model, batch, target, max_batch))
        yield compare(
            f"{shape.label()}, {sizes.n_examples}x{sizes.n_pos} tokens, {target} "
            f"attribution vs our exact patching (reference), correlation {r:.2f}",
            lambda target=target: attribution(model, batch, target).values,
            lambda target=target, max_batch=max_batch: ours(model, batch, target, max_batch),
            device=device,
            repeats=sizes.repeats,
            count_ops=True,
        )
        yield compare(
            f"{shape.label()}, {sizes.n_examples}x{sizes.n_pos} tokens, {target} "
            "attribution, runs through interp.functional (ours) vs through the bridge's hooks",
            lambda target=target: attribution(model, batch, target).values,
            lambda target=target: attribution(model, batch, target, "hooks").values,
            device=device,
            repeats=sizes.repeats,
        )



def main(argv: Sequence[str] | None = None) -> int:
    """Run every comparison and print one line each, then the load average."""
    def pretrained_option(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--native-only", action="store_true",
                            help="skip the Hugging Face models (GPT-2, GPT-NeoX, Llama)")
        parser.add_argument("--family", action="append", choices=FAMILIES,
                            help="run only the models of this family (repeatable)")

    args = parse_args(__doc__.splitlines()[0], argv, pretrained_option)
    sizes = QUICK if args.quick else FULL
    families = set(args.options["family"] or FAMILIES)
    if args.options["native_only"]:
        families &= {"native"}
    for shape in sizes.models:
        if shape.family not in families:
            continue
        for comparison in compare_model(shape, sizes, args.device):
            for line in comparison.lines():
                print(line, flush=True)
    print(load_line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
