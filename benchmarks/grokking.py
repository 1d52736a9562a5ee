"""Grokking training speed: ours against a plain PyTorch loop of the same model and update.

    python benchmarks/grokking.py [--quick] [--device cpu|cuda|auto] [--grok-epochs N]
                                  [--graph-only | --no-graph]

The reference is written here with no hooks and no library code: a one-layer transformer
(embedding + learned positions, causal attention, ReLU MLP, no LayerNorm, unembedding) as
an `nn.Module`, full-batch AdamW with the same settings, reading the logits at `=`. Both
start from the same weights, so their loss curves must agree (max |diff| is over the
per-epoch training losses). Lines:

1. one model, epochs per second (ours is `StackedTrainer` with S = 1);
2. S seeds batched: ours (one vmapped computation) against a plain stacked-seed loop
   (the same module's math on parameters with a leading seed axis, batched matmuls);
3. S seeds batched against our own single-seed trainer run S times;
4. the two ways our trainer can run S models: one vmapped computation (what it does on
   CUDA) against a pass per model on its slice of the stacked weights (what it does on CPU);
5. S seeds: our trainer's first layer from per-(position, token) tables (what it does,
   `functional.first_layer_tables`) against the same trainer computing it per example;
6. epochs until every model reaches test accuracy 0.99, with Grokfast (Lee et al. 2024)
   against without, on the same config and seeds (printed in epochs, not seconds);
7. on CUDA only, 1 seed and S seeds: our trainer's opt-in CUDA-graph step
   (`cuda_graph=True`) against its eager step, from the same weights (max |diff| of the
   losses). `--graph-only` prints these lines alone (the GPU check of the graph path),
   `--no-graph` leaves them out. Where the capture failed and the trainer went on with
   eager steps, the line says "capture failed (eager)" instead of a ratio.

Each line is printed as soon as it is measured, so a run cut off by a time limit keeps
what it measured.

Lines 1, 2 and 4 are each followed by a line starting with `# ` that counts the aten ops
and host syncs of one more epoch of each side (`interp.dispatch_count`; "not views" are
about the kernel launches): on a GPU a small model's epoch is bound by launches, so its
speed follows their ratio.

Ours computes the last layer only at the `=` position (exact: the loss reads nothing
else); the plain loop computes every position, as the published implementations do.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from _common import format_dispatch, format_line, max_abs_diff, synchronize, time_once
from torch import Tensor, nn

from interp import models
from interp.dispatch_count import dispatch_of
from interp.grokking.trainer import GrokfastSettings, OptimSettings, StackedTrainer
from interp.tasks.base import TaskBatch
from interp.tasks.modular import ModularArithmetic


@dataclass(frozen=True)
class Setting:
    """Sizes of one benchmark setting."""

    p: int
    frac_train: float
    d_model: int
    n_heads: int
    d_mlp: int
    epochs: int
    seeds: int
    lr: float

    def spec(self) -> models.ModelSpec:
        return models.ModelSpec(
            n_layers=1, d_model=self.d_model, n_heads=self.n_heads, d_mlp=self.d_mlp,
            d_vocab=self.p + 2, d_vocab_out=self.p, n_ctx=4, act_fn="relu", normalization=None,
        )


FULL = Setting(p=113, frac_train=0.3, d_model=128, n_heads=4, d_mlp=512, epochs=200, seeds=32,
               lr=1e-3)
FULL_CPU = Setting(p=113, frac_train=0.3, d_model=128, n_heads=4, d_mlp=512, epochs=20, seeds=8,
                   lr=1e-3)  # the reference shapes, fewer seeds and epochs: 2 cores are slow
QUICK = Setting(p=23, frac_train=0.5, d_model=32, n_heads=4, d_mlp=64, epochs=10, seeds=4,
                lr=1e-3)
GROK_CPU = Setting(p=37, frac_train=0.5, d_model=64, n_heads=4, d_mlp=256, epochs=0, seeds=3,
                   lr=1e-2)  # experiments/grokking_cpu.yaml


class PlainTransformer(nn.Module):
    """The reference model: parameters with a leading axis of S stacked seeds."""

    def __init__(self, stacked: dict[str, Tensor], n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.weights = nn.ParameterDict(
            {k.replace(".", "_"): nn.Parameter(v.clone()) for k, v in stacked.items()
             if k != "unembed.bias"}
        )

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits `[S, batch, vocab]` at the last position."""
        w = self.weights
        batch, seq = tokens.shape
        resid = w["embed_weight"][:, tokens] + w["pos_embed_weight"][:, None, :seq]
        n_seeds = resid.shape[0]

        def project(name: str, x: Tensor) -> Tensor:
            out = torch.einsum("sbpd,sod->sbpo", x, w[f"blocks_0_attn_{name}_weight"])
            out = out + w[f"blocks_0_attn_{name}_bias"][:, None, None]
            return out.reshape(n_seeds, batch, seq, self.n_heads, -1).transpose(2, 3)

        q, k, v = project("q", resid), project("k", resid), project("v", resid)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        causal = torch.triu(torch.ones(seq, seq, dtype=torch.bool, device=tokens.device), 1)
        pattern = scores.masked_fill(causal, float("-inf")).softmax(-1)
        z = (pattern @ v).transpose(2, 3).reshape(n_seeds, batch, seq, -1)
        attn = torch.einsum("sbpz,sdz->sbpd", z, w["blocks_0_attn_o_weight"])
        resid = resid + attn + w["blocks_0_attn_o_bias"][:, None, None]
        hidden = torch.einsum("sbpd,smd->sbpm", resid, w["blocks_0_mlp_in_weight"])
        hidden = F.relu(hidden + w["blocks_0_mlp_in_bias"][:, None, None])
        mlp = torch.einsum("sbpm,sdm->sbpd", hidden, w["blocks_0_mlp_out_weight"])
        resid = resid + mlp + w["blocks_0_mlp_out_bias"][:, None, None]
        logits = torch.einsum("sbpd,svd->sbpv", resid, w["unembed_weight"])
        return logits[:, :, -1]


class PlainLoop:
    """Full-batch AdamW on `PlainTransformer`, the per-seed mean losses summed."""

    def __init__(self, stacked: dict[str, Tensor], setting: Setting, train: TaskBatch) -> None:
        self.model = PlainTransformer(stacked, setting.n_heads)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=setting.lr, weight_decay=1.0, betas=(0.9, 0.98)
        )
        self.train = train
        self.epoch = 0

    def step(self) -> Tensor:
        self.epoch += 1
        for group in self.optimizer.param_groups:  # the same 10-epoch warm-up as ours
            group["lr"] = group["initial_lr"] * min(1.0, (self.epoch - 1) / 10)
        logits = self.model(self.train.clean)
        targets = self.train.answer.expand(logits.shape[0], -1)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        per_seed = loss.view(logits.shape[0], -1).mean(-1)
        self.optimizer.zero_grad(set_to_none=True)
        per_seed.sum().backward()
        self.optimizer.step()
        return per_seed.detach()


def make_pair(
    setting: Setting, n_seeds: int, device: torch.device, grokfast: bool = False,
    cuda_graph: bool = False,
) -> tuple[StackedTrainer, PlainLoop, TaskBatch]:
    task = ModularArithmetic(p=setting.p, frac_train=setting.frac_train, seed=0)
    train, test = task.train_test()
    ours = StackedTrainer(
        setting.spec(), list(range(n_seeds)), train, test,
        OptimSettings(lr=setting.lr), GrokfastSettings(enabled=grokfast), device,
        cuda_graph=cuda_graph,
    )
    stacked = {k: v.detach().clone() for k, v in ours.params.items()}
    plain = PlainLoop(stacked, setting, train.to(device))
    for group in plain.optimizer.param_groups:
        group.setdefault("initial_lr", setting.lr)
    return ours, plain, test.to(device)


def timed_epochs(step, epochs: int, device: torch.device) -> tuple[float, Tensor]:
    """Seconds for `epochs` steps, and the per-epoch losses `[epochs, S]`."""
    losses: list[Tensor] = []

    def run() -> None:
        for _ in range(epochs):
            losses.append(step())

    seconds = time_once(run, device)
    return seconds, torch.stack(losses)


def speed_lines(setting: Setting, device: torch.device) -> Iterator[str]:
    """Lines 1-5 and their op counts, each yielded as soon as it is measured."""
    label = f"p={setting.p} {setting.frac_train:.0%} train, d_model {setting.d_model}"
    ours, plain, _ = make_pair(setting, 1, device)
    ours.step(), plain.step()  # warm-up (first-call allocations), same epoch on both
    ours_s, ours_loss = timed_epochs(ours.step, setting.epochs, device)
    plain_s, plain_loss = timed_epochs(plain.step, setting.epochs, device)
    yield format_line(
        f"1 seed, {setting.epochs} full-batch epochs ({label}; "
        f"{setting.epochs / ours_s:.0f} vs {setting.epochs / plain_s:.0f} epochs/s)",
        ours_s, plain_s, max_abs_diff(ours_loss, plain_loss),
    )
    yield dispatch_line("1 seed", ours.step, plain.step)
    single_s = ours_s
    s = setting.seeds
    ours, plain, _ = make_pair(setting, s, device)
    ours.step(), plain.step()
    ours_s, ours_loss = timed_epochs(ours.step, setting.epochs, device)
    plain_s, plain_loss = timed_epochs(plain.step, setting.epochs, device)
    seed_epochs = s * setting.epochs
    yield format_line(
        f"{s} seeds batched vs plain stacked loop, {setting.epochs} epochs "
        f"({seed_epochs / ours_s:.0f} vs {seed_epochs / plain_s:.0f} seed-epochs/s)",
        ours_s, plain_s, max_abs_diff(ours_loss, plain_loss),
    )
    yield dispatch_line(f"{s} seeds", ours.step, plain.step)
    yield format_line(
        f"{s} seeds batched vs our single run x{s}, {setting.epochs} epochs",
        ours_s, single_s * s, 0.0,
    )
    other, _, _ = make_pair(setting, s, device)
    other.vectorize = not ours.vectorize
    other.step()
    other_s, other_loss = timed_epochs(other.step, setting.epochs, device)
    vmapped_s, looped_s = (ours_s, other_s) if ours.vectorize else (other_s, ours_s)
    yield format_line(
        f"{s} seeds, {setting.epochs} epochs: vmapped (ours) vs a pass per model "
        f"(reference); the trainer uses {'vmap' if ours.vectorize else 'a pass per model'} "
        f"on {device.type}",
        vmapped_s, looped_s, max_abs_diff(ours_loss, other_loss),
    )
    vmapped, looped = (ours, other) if ours.vectorize else (other, ours)
    yield dispatch_line(f"{s} seeds, vmapped", vmapped.step, looped.step,
                        reference="a pass per model")
    per_example, _, _ = make_pair(setting, s, device)
    per_example.token_tables = False
    per_example.step()
    per_example_s, per_example_loss = timed_epochs(per_example.step, setting.epochs, device)
    yield format_line(
        f"{s} seeds, {setting.epochs} epochs: first layer from (position, token) tables "
        f"(ours) vs computed per example (reference)",
        ours_s, per_example_s, max_abs_diff(ours_loss, per_example_loss),
    )


def dispatch_line(what: str, ours_step, reference_step, reference: str = "plain") -> str:  # noqa: ANN001
    """`# <what>: aten ops per epoch ours ..., plain ...`: one more epoch of each (both stay
    in step), counted (`interp.dispatch_count`); on a GPU, where a small model's epoch is
    bound by launches, the ratio of the ops that are not views is what the speed tends to."""
    return format_dispatch(what, dispatch_of(ours_step), dispatch_of(reference_step),
                           per="epoch", reference_name=reference)


def graph_active(trainer: StackedTrainer) -> bool:
    """Whether `trainer` replays a captured CUDA graph: `StackedTrainer._graph` is set by a
    capture that worked, and stays None before one and after one that failed (the trainer
    then warns and goes on with eager steps, which would be timed as the graph's)."""
    return getattr(trainer, "_graph", None) is not None


def graph_lines(
    setting: Setting, device: torch.device, seed_counts: tuple[int, ...] | None = None
) -> Iterator[str]:
    """CUDA only: the trainer's CUDA-graph step against its eager step, for each number of
    seeds in `seed_counts` (default: 1 and the setting's S), each line yielded as soon as
    it is measured.

    Both start from the same weights; the graph trainer's first
    `StackedTrainer.GRAPH_WARMUP_EPOCHS` epochs are eager, and its capture happens in the
    untimed first epochs, so the timed epochs are all replays. Where no graph was captured
    after those epochs (the trainer warned and trains on eagerly), the line says "capture
    failed (eager)" with the warning, and nothing is timed."""
    for n_seeds in seed_counts or (1, setting.seeds):
        what = f"{n_seeds} seed(s), {setting.epochs} epochs: CUDA graph"
        eager, _, _ = make_pair(setting, n_seeds, device)
        graph, _, _ = make_pair(setting, n_seeds, device, cuda_graph=True)
        warm = StackedTrainer.GRAPH_WARMUP_EPOCHS + 1
        eager_losses = [eager.step() for _ in range(warm)]
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                graph_losses = [graph.step() for _ in range(warm)]
            for warning in caught:  # shown as usual (stderr), after being read here
                warnings.showwarning(warning.message, warning.category, warning.filename,
                                     warning.lineno)
            if not graph_active(graph):
                said = "; ".join(str(w.message) for w in caught) or "no warning"
                yield (f"{what}: capture failed (eager) after {warm} epochs, nothing timed "
                       f"({said})")
                continue
            graph_s, graph_loss = timed_epochs(graph.step, setting.epochs, device)
        except Exception as error:  # noqa: BLE001 - report it and go on to the next lines
            yield (f"{what}: failed: {type(error).__name__}: "
                   f"{str(error).splitlines()[0] if str(error) else ''}")
            continue
        eager_s, eager_loss = timed_epochs(eager.step, setting.epochs, device)
        diff = max(max_abs_diff(torch.stack(eager_losses), torch.stack(graph_losses)),
                   max_abs_diff(eager_loss, graph_loss))
        yield format_line(
            f"{what} (ours, opt-in) vs eager step (reference) ({setting.epochs / graph_s:.0f} "
            f"vs {setting.epochs / eager_s:.0f} epochs/s)",
            graph_s, eager_s, diff,
        )


def epochs_to_grok(trainer: StackedTrainer, cap: int, check_every: int = 50) -> int | None:
    """Epochs until every model's test accuracy is >= 0.99, or None within `cap`."""
    while trainer.epoch < cap:
        trainer.step()
        if trainer.epoch % check_every == 0 and bool((trainer.evaluate().test_acc >= 0.99).all()):
            return trainer.epoch
    return None


def grokfast_line(setting: Setting, device: torch.device, cap: int) -> str:
    results = {}
    for grokfast in (True, False):
        trainer, _, _ = make_pair(setting, setting.seeds, device, grokfast=grokfast)
        synchronize(device)
        results[grokfast] = epochs_to_grok(trainer, cap)
    with_gf, without = results[True], results[False]
    what = (f"epochs to test acc 0.99 in all {setting.seeds} seeds, p={setting.p}, "
            f"Grokfast (alpha 0.98, lambda 2) vs plain AdamW")
    if with_gf is None or without is None:
        return f"{what}: ours {with_gf} epochs, reference {without} epochs (cap {cap})"
    return (f"{what}: ours {with_gf} epochs, reference {without} epochs, "
            f"speedup {without / with_gf:.1f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--grok-epochs", type=int, default=None,
                        help="cap of the Grokfast comparison (default 3000; 0 skips it)")
    parser.add_argument("--graph-only", action="store_true",
                        help="only the CUDA-graph vs eager lines, 1 and 5 seeds (CUDA only)")
    parser.add_argument("--no-graph", action="store_true",
                        help="leave out the CUDA-graph lines (on CUDA: when a --graph-only "
                             "run gives them)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but CUDA is not available")
    if args.graph_only and args.no_graph:
        parser.error("--graph-only and --no-graph leave nothing to run")
    device = models.resolve_device(args.device)
    if args.graph_only and device.type != "cuda":
        parser.error("--graph-only needs CUDA: the CUDA-graph step runs on CUDA only")
    setting = QUICK if args.quick else FULL_CPU if device.type == "cpu" else FULL
    if args.graph_only:
        for line in graph_lines(setting, device, (1, 5)):  # 5: the GPU reference run's seeds
            print(line, flush=True)
        return 0
    for line in speed_lines(setting, device):
        print(line, flush=True)
    if device.type == "cuda" and not args.no_graph:
        for line in graph_lines(setting, device):
            print(line, flush=True)
    cap = args.grok_epochs if args.grok_epochs is not None else (200 if args.quick else 3000)
    if cap:
        grok = QUICK if args.quick else GROK_CPU if device.type == "cpu" else FULL
        print(grokfast_line(grok, device, cap), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
