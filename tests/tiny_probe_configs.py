"""Tiny configs of two probing studies (a grokking run and an induction run, then a probe
run on each), shared by the probe kind's tests and the Probes page's tests."""

from __future__ import annotations

from typing import Literal

GROK = """
kind: grokking
name: tiny_grok
seed: 0
seeds: [0]
device: cpu
model: {n_layers: 1, d_model: 32, n_heads: 4, d_mlp: 64, act_fn: relu, normalization: null}
task: {name: modular, p: 11, frac_train: 0.5, seed: 0}
epochs: 40
optim: {lr: 0.01, weight_decay: 1.0, betas: [0.9, 0.98], warmup_epochs: 5}
stop: {enabled: false}
log_every: 20
progress_every: 0
checkpoint_every: 20
"""

PROBE_GROK = """
kind: probe
name: tiny_probe_grok
device: cpu
model: {run: tiny_grok, artifact: models/seed_0}
study:
  name: modular
  task: {name: modular, p: 11, frac_train: 0.5, seed: 0}
  key_frequencies: [1, 3]
checkpoints: [{label: epoch_20, artifact: checkpoints/epoch_000020, seed: 0}]
probe: {seeds: [0, 1], epochs: 50}
controls: {selectivity: false, mdl: MDL_GROK, random_init: true}
interventions: {targets: [fourier_key], kinds: [project_out, erase], n_random: 2}
"""

TRAIN_INDUCTION = """
kind: train
name: tiny_induction
device: cpu
model: {n_layers: 2, d_model: 16, n_heads: 2, d_vocab: 12, n_ctx: 8, attn_only: true}
task: {name: induction, d_vocab: 12, half_len: 4, n_examples: 64}
train: {steps: 5, batch_size: 16, eval_every: 5}
"""

PROBE_INDUCTION = """
kind: probe
name: tiny_probe_induction
device: cpu
model: {run: tiny_induction}
study: {name: induction, task: {name: induction, d_vocab: 12, half_len: 4, n_examples: 40, seed: 3}}
probe: {seeds: [0, 1], epochs: 30}
controls: {selectivity: true, mdl: MDL_INDUCTION, random_init: false}
"""


def tiny_probe_configs(mdl_on: Literal["grok", "induction"] = "grok") -> dict[str, str]:
    """Config texts by experiment name, in an order that runs: the two training runs, the
    induction probe run, the grokking probe run. MDL (the slow control: one probe per
    block of the online code, each fitted with the run's `probe.epochs`, 50 for the grokking
    run and 30 for the induction run) is switched on in the probe run named by `mdl_on`."""
    grok, induction = ("true", "false") if mdl_on == "grok" else ("false", "true")
    return {
        "tiny_grok": GROK,
        "tiny_induction": TRAIN_INDUCTION,
        "tiny_probe_induction": PROBE_INDUCTION.replace("MDL_INDUCTION", induction),
        "tiny_probe_grok": PROBE_GROK.replace("MDL_GROK", grok),
    }
