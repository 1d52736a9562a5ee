"""The `lens` kind saves what the library computes: the translators, both lenses'
divergences and readouts on the held-out prompts, and the training curve."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from interp import models
from interp.cli import main
from interp.config import load_config
from interp.logit_lens import LogitLens, logit_lens
from interp.runs import RunStore
from interp.tasks import make_task
from interp.tuned_lens import TunedLens, counted_through, lens_divergence

TRAIN = """
kind: train
device: cpu
model: {n_layers: 2, d_model: 16, n_heads: 2, d_vocab: 12, n_ctx: 8, attn_only: true}
task: {name: induction, d_vocab: 12, half_len: 4, n_examples: 64}
train: {steps: 20, batch_size: 16, eval_every: 20}
"""

LENS = """
kind: lens
device: cpu
model: {run: tiny_train}
task: {name: induction, d_vocab: 12, half_len: 4, n_examples: 24, seed: 3}
held_out_seed: 4
steps: 12
lr: 0.01
max_batch: 8
log_every: 5
"""


def _run(tmp_path: Path) -> RunStore:
    (tmp_path / "tiny_train.yaml").write_text(textwrap.dedent(TRAIN))
    (tmp_path / "tiny_lens.yaml").write_text(textwrap.dedent(LENS))
    (tmp_path / "suite.yaml").write_text(
        "kind: suite\nexperiments: [tiny_train.yaml, tiny_lens.yaml]\n"
    )
    runs = tmp_path / "runs"
    argv = ["run", str(tmp_path / "suite.yaml"), "--runs-dir", str(runs), "--no-progress"]
    assert main(argv) == 0
    return RunStore(runs)


def test_lens_kind_saves_what_the_library_computes(tmp_path: Path) -> None:
    store = _run(tmp_path)
    run = store.latest("tiny_lens")
    model = models.load_checkpoint(store.latest("tiny_train").artifacts_dir / "model", "cpu")
    _, config = load_config(tmp_path / "tiny_lens.yaml")
    held_out = make_task(config.held_out_task()).batch()
    assert config.held_out_task().seed == 4
    lens = TunedLens.load(run.artifacts_dir)
    assert len(lens.losses) == 12
    assert run.metrics()["step"].tolist() == [5, 10, 12]
    assert run.metrics()["train_loss"].tolist() == pytest.approx(
        [lens.losses[4], lens.losses[9], lens.losses[11]])

    counted = counted_through(held_out.position, held_out.clean.shape[1])
    table = run.load_table("lens_divergence")
    torch.testing.assert_close(torch.tensor(table["logit_lens_kl"].tolist()),
                               lens_divergence(model, held_out.clean, counted=counted))
    torch.testing.assert_close(torch.tensor(table["tuned_lens_kl"].tolist()),
                               lens_divergence(model, held_out.clean, lens, counted=counted))
    assert run.summary["tuned_lens_kl"]["0_pre"] == pytest.approx(table["tuned_lens_kl"][0])
    torch.testing.assert_close(LogitLens.load(run, "tuned_lens_readout").logit_diff,
                               logit_lens(model, held_out, lens=lens).logit_diff)
    torch.testing.assert_close(LogitLens.load(run).logit_diff,
                               logit_lens(model, held_out).logit_diff)


def test_held_out_prompts_must_differ_from_the_training_ones(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(textwrap.dedent(LENS.replace(
        "model: {run: tiny_train}",
        "model: {n_layers: 1, d_model: 16, n_heads: 2, d_vocab: 12, n_ctx: 8}",
    ).replace("held_out_seed: 4", "held_out_seed: 3")))
    assert main(["validate", str(tmp_path / "bad.yaml"), "--runs-dir", str(tmp_path)]) != 0
    with pytest.raises(ValueError, match="held_out_seed 3 is the task's own seed"):
        load_config(tmp_path / "bad.yaml")
