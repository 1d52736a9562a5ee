"""The tiny `train` config whose checkpoint the `patching` kind's tests and the Patching
page's tests patch (run it as `tiny_train`), and a `patching` config of it."""

from __future__ import annotations

TINY_TRAIN = """
kind: train
device: cpu
model: {n_layers: 2, d_model: 16, n_heads: 2, d_vocab: 12, n_ctx: 8, attn_only: true}
task: {name: induction, d_vocab: 12, half_len: 4, n_examples: 64}
train: {steps: 10, batch_size: 16, eval_every: 10}
"""

TINY_PATCHING = """
kind: patching
device: cpu
model: {run: tiny_train}
task: {name: induction, d_vocab: 12, half_len: 4, n_examples: 6, seed: 3}
targets: [resid_pre, z]
normalise: false
max_batch: 12
"""
