"""Side by side: attribution patching (plain, AtP*'s query-key fix, integrated gradients), exact.

    python benchmarks/attribution.py [--quick] [--device cpu|cuda|auto]

The model is the 2-layer attention-only induction model of `experiments/induction_2l.yaml`,
trained here for 300 steps (as the tests' fixture; ~15 s on 2 CPU cores), whose induction
heads attend sharply: where attention saturates, attribution patching's gradient through
the softmax says little about what patching a query or key does. For each query and key
target (`q`, `k` by head; `q_by_pos`, `k_by_pos` by position and head), denoising, metric
the mean logit difference (not normalised), 16 induction prompts of 40 tokens:

- AtP*'s fix (`attribute(..., qk_fix=True)`, Kramár et al. 2024, `circuits.attribution_qk`)
  against exact activation patching (`circuits.patching.patch`) as the reference: time of
  each, and max |diff| (the estimate's error, not a bug); the line names its correlation
  with exact patching and that of plain attribution patching;
- integrated gradients (`attribute(..., ig_steps=16)`: the gradient averaged along the
  line from each layer's corrupted to its clean activation) against the same reference;
- plain attribution patching (`attribute(...)`) against the same reference.

After each target a line starting with `#` gives the three estimates' correlation and
root-mean-square error against exact patching on three task seeds (0, 1, 2): one batch
can flatter any of them; then, for the targets of more than 40 indices, one gives on the
same seeds how many of exact patching's 10 strongest indices (`top_indices`) lie among each
method's 40 strongest, AtP*'s GradDrop scores (`attribute(..., grad_drop=True)`, a ranking,
not an estimate) included.
A final line gives the load average.
`--quick`: 20 training steps, 4 prompts, one seed (CI runs it in seconds).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from _common import compare, load_line, parse_args
from transformer_lens.model_bridge import TransformerBridge

from circuits.attribution import attribute, correlation, top_indices
from circuits.attribution_qk import QK_TARGETS
from circuits.patching import PatchingResult, patch
from interp import models
from interp.config import load_config
from interp.metrics import logit_diff, mean_metric
from interp.tasks import Induction
from interp.tasks.base import TaskBatch
from interp.training import train

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "induction_2l.yaml"
FULL = dict(steps=300, n_examples=16, seeds=(0, 1, 2), repeats=5)
QUICK = dict(steps=20, n_examples=4, seeds=(0,), repeats=1)
METRIC = mean_metric(logit_diff)
IG_STEPS = 16
ESTIMATES = {"fix": ("AtP* query-key fix", dict(qk_fix=True)),
             "ig": (f"integrated gradients ({IG_STEPS} steps)", dict(ig_steps=IG_STEPS)),
             "plain": ("plain attribution", {})}
"""Each estimate's name in the lines and its `attribute` options."""
RANKINGS = {**{name: options for name, (_, options) in ESTIMATES.items()},
            "graddrop": dict(grad_drop=True)}
"""The `attribute` options of each method whose ranking the recall line checks."""
TRUE_TOP, CANDIDATES = 10, 40
"""The recall line: exact patching's `TRUE_TOP` strongest among a method's `CANDIDATES`."""


def trained_model(steps: int, device: torch.device) -> tuple[TransformerBridge, object]:
    """The induction model trained for `steps` steps, in eval mode, and its task config."""
    _, config = load_config(CONFIG, [f"train.steps={steps}", f"device={device.type}"])
    model = models.build(config.model, device=device)
    train(model, Induction(config.task), config.train, seed=config.seed, progress=False)
    return model.eval(), config.task


def task_batch(task_config: object, n_examples: int, seed: int,
               device: torch.device) -> TaskBatch:
    """`n_examples` induction prompts of the model's task, drawn with `seed`."""
    update = {"n_examples": n_examples, "seed": seed}
    return Induction(task_config.model_copy(update=update)).batch().to(device)  # type: ignore[attr-defined]


def rmse(estimate: PatchingResult, exact: PatchingResult) -> float:
    """Root-mean-square difference of two results over every index."""
    return float((estimate.values - exact.values).square().mean().sqrt())


def accuracy_lines(model: TransformerBridge, task_config: object, target: str,
                   n_examples: int, seeds: Sequence[int], device: torch.device) -> list[str]:
    """`# <target> over task seeds ...: correlation with exact patching AtP* fix ..., IG
    ..., plain ...; rmse fix ..., IG ..., plain ...` and `# <target> over task seeds ...:
    of exact patching's 10 strongest, among each method's 40 strongest: ...`."""
    correlations: dict[str, list[str]] = {name: [] for name in ESTIMATES}
    errors: dict[str, list[str]] = {name: [] for name in ESTIMATES}
    recalls: dict[str, list[str]] = {name: [] for name in RANKINGS}
    for seed in seeds:
        batch = task_batch(task_config, n_examples, seed, device)
        exact = patch(model, batch, target, METRIC, progress=False)
        strongest = set(top_indices(exact, TRUE_TOP))
        for name, options in RANKINGS.items():
            estimate = attribute(model, batch, target, METRIC, **options)
            recalls[name].append(str(len(strongest & set(top_indices(estimate, CANDIDATES)))))
            if name in ESTIMATES:
                correlations[name].append(f"{correlation(estimate, exact):.2f}")
                errors[name].append(f"{rmse(estimate, exact):.3f}")

    def listed(values: dict[str, list[str]]) -> str:
        return ", ".join(f"{LABELS[name]} {' '.join(values[name])}" for name in values)

    seeds_named = f"# {target} over task seeds {', '.join(map(str, seeds))}: "
    lines = [f"{seeds_named}correlation with exact patching {listed(correlations)}; "
             f"rmse {listed(errors)}"]
    if exact.values.numel() > CANDIDATES:  # (else every method's candidates hold them all)
        lines.append(f"{seeds_named}of exact patching's {TRUE_TOP} strongest, among each "
                     f"method's {CANDIDATES} strongest: {listed(recalls)}")
    return lines


LABELS = {"fix": "AtP* fix", "ig": "IG", "plain": "plain", "graddrop": "GradDrop"}
"""Each estimate's short name in the accuracy lines."""


def main(argv: Sequence[str] | None = None) -> int:
    """Print three comparisons and one accuracy line per target, then the load average."""
    args = parse_args(__doc__.splitlines()[0], argv)
    sizes = QUICK if args.quick else FULL
    device = args.device
    model, task_config = trained_model(int(sizes["steps"]), device)
    batch = task_batch(task_config, int(sizes["n_examples"]), 0, device)
    shape = f"induction_2l ({sizes['steps']} steps), {len(batch)}x{batch.clean.shape[1]} tokens"
    for target in QK_TARGETS:
        exact = patch(model, batch, target, METRIC, progress=False)
        r = {name: correlation(attribute(model, batch, target, METRIC, **options), exact)
             for name, (_, options) in ESTIMATES.items()}
        for name, (label, options) in ESTIMATES.items():
            comparison = compare(
                f"{shape}, {target}, {label} vs exact patching (reference), correlation "
                f"{r[name]:.2f}" + (f" (plain {r['plain']:.2f})" if name != "plain" else ""),
                lambda target=target, options=options: attribute(
                    model, batch, target, METRIC, **options).values,
                lambda target=target: patch(model, batch, target, METRIC,
                                            progress=False).values,
                device=device,
                repeats=int(sizes["repeats"]),
            )
            print(comparison.line(), flush=True)
        for line in accuracy_lines(model, task_config, target, int(sizes["n_examples"]),
                                   sizes["seeds"], device):  # type: ignore[arg-type]
            print(line, flush=True)
    print(load_line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
