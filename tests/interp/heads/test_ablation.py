"""Ablation importance: a hand-built model where one head carries the answer (values known
by construction), agreement with a plain one-head-at-a-time loop, and hygiene (hooks, mode,
caller's tensors)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge

from interp import models
from interp.functional import load_params, params_of
from interp.heads.ablation import AblationResult, ablation_importance
from interp.metrics import logit_diff, mean_metric
from interp.runs import RunStore
from interp.tasks.base import TaskBatch

VOCAB, N_POS, N_HEADS = 6, 8, 3


def _counting_model() -> TransformerBridge:
    """One attention-only layer, no norms, 3 heads of width 6, d_model 12.

    Tokens are one-hot in dims 0..5. Head 0 attends uniformly (zero W_Q, W_K) and copies
    the one-hot token into dims 6..11, which the unembedding reads as logits: the logits at
    position p are the token frequencies of positions 0..p. Heads 1 and 2 write random
    vectors into dims 0..5, which the unembedding ignores: they never touch the logits.
    """
    spec = dict(
        n_layers=1, d_model=2 * VOCAB, n_heads=N_HEADS, d_head=VOCAB, d_vocab=VOCAB,
        n_ctx=N_POS, attn_only=True, normalization=None, seed=0,
    )
    model = models.build(spec, device="cpu")
    params = {name: torch.zeros_like(value) for name, value in params_of(model).items()}
    eye = torch.eye(VOCAB)
    generator = torch.Generator().manual_seed(0)
    params["embed.weight"][:, :VOCAB] = eye
    params["unembed.weight"][:, VOCAB:] = eye
    value = params["blocks.0.attn.v.weight"]  # [heads * d_head, d_model]
    out = params["blocks.0.attn.o.weight"]  # [d_model, heads * d_head]
    value[:VOCAB, :VOCAB] = eye
    out[VOCAB:, :VOCAB] = eye
    for head in (1, 2):
        cols = slice(head * VOCAB, (head + 1) * VOCAB)
        value[cols, :VOCAB] = torch.randn(VOCAB, VOCAB, generator=generator)
        out[:VOCAB, cols] = torch.randn(VOCAB, VOCAB, generator=generator)
    load_params(model, params)
    return model


def _counting_batch() -> TaskBatch:
    """Answer: the most frequent token of each sequence; wrong: its least frequent token."""
    generator = torch.Generator().manual_seed(1)
    clean = torch.randint(0, VOCAB, (5, N_POS), generator=generator)
    counts = torch.nn.functional.one_hot(clean, VOCAB).sum(1).float()
    return TaskBatch(
        clean=clean, corrupted=clean.flip(0), answer=counts.argmax(1), wrong=counts.argmin(1),
        position=torch.full((5,), N_POS - 1),
    )


def test_only_the_head_that_carries_the_answer_matters() -> None:
    model, batch = _counting_model(), _counting_batch()
    rows = torch.arange(len(batch))
    frequencies = torch.nn.functional.one_hot(batch.clean, VOCAB).float().mean(1)  # [b, vocab]
    expected_baseline = (
        frequencies[rows, batch.answer] - frequencies[rows, batch.wrong]
    ).mean()
    metric = mean_metric(logit_diff)

    zero = ablation_importance(model, batch, metric, mode="zero")
    assert zero.baseline == pytest.approx(float(expected_baseline), abs=1e-6)
    assert zero.baseline > 0
    # zero ablation of head 0 leaves zero logits; heads 1 and 2 change nothing
    expected_zero = torch.tensor([[0.0, zero.baseline, zero.baseline]])
    torch.testing.assert_close(zero.values, expected_zero, atol=1e-6, rtol=0)

    mean = ablation_importance(model, batch, metric, mode="mean")
    # head 0's mean output at the last position gives every example the mean frequencies
    average = frequencies.mean(0)
    expected_mean = (average[batch.answer] - average[batch.wrong]).mean()
    torch.testing.assert_close(mean.values[0, 0], expected_mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(mean.change[0, 1:], torch.zeros(2), atol=1e-6, rtol=0)
    frame = mean.to_frame()
    assert list(frame.columns) == ["layer", "head", "ablated", "change", "abs_change"]
    assert int(frame.loc[frame["abs_change"].idxmax(), "head"]) == 0


def _one_head_at_a_time(
    model: TransformerBridge, batch: TaskBatch, mode: str
) -> tuple[float, torch.Tensor]:
    """The plain loop: one forward pass per head, a hook that copies before writing."""
    metric = mean_metric(logit_diff)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    with torch.no_grad():
        logits, cache = model.run_with_cache(batch.clean)
        baseline = float(metric(logits, batch))
        values = torch.zeros(n_layers, n_heads)
        for layer in range(n_layers):
            z = cache[f"blocks.{layer}.attn.hook_z"]
            replacement = z.mean(0) if mode == "mean" else torch.zeros_like(z[0])
            for head in range(n_heads):

                def ablate(
                    act: torch.Tensor,
                    hook: object,
                    head: int = head,
                    new: torch.Tensor = replacement,
                ) -> torch.Tensor:
                    act = act.clone()
                    act[:, :, head] = new[:, head]
                    return act

                with model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_z", ablate)]):
                    values[layer, head] = metric(model(batch.clean), batch)
    return baseline, values


@pytest.fixture(scope="module")
def mlp_model() -> TransformerBridge:
    spec = dict(n_layers=3, d_model=32, n_heads=4, d_vocab=20, n_ctx=10, act_fn="gelu", seed=3)
    model = models.build(spec, device="cpu")
    model.eval()
    return model


def _random_batch() -> TaskBatch:
    generator = torch.Generator().manual_seed(2)
    clean = torch.randint(0, 20, (4, 10), generator=generator)
    return TaskBatch(
        clean=clean, corrupted=clean, answer=torch.tensor([1, 2, 3, 4]),
        wrong=torch.tensor([5, 6, 7, 8]), position=torch.tensor([9, 8, 9, 7]),
    )


@pytest.mark.parametrize("mode", ["mean", "zero"])
@pytest.mark.parametrize("max_batch", [4, 20, 1000])
def test_batched_heads_equal_the_one_head_loop(
    mlp_model: TransformerBridge, mode: str, max_batch: int
) -> None:
    batch = _random_batch()
    baseline, expected = _one_head_at_a_time(mlp_model, batch, mode)
    result = ablation_importance(
        mlp_model, batch, mean_metric(logit_diff), mode=mode, max_batch=max_batch
    )
    assert result.baseline == pytest.approx(baseline, abs=1e-5)
    torch.testing.assert_close(result.values, expected, atol=1e-5, rtol=1e-5)
    assert result.change.abs().max() > 1e-3  # the random heads do matter a little


def test_a_subset_of_heads_and_a_per_example_metric(mlp_model: TransformerBridge) -> None:
    batch = _random_batch()
    _, expected = _one_head_at_a_time(mlp_model, batch, "zero")
    result = ablation_importance(mlp_model, batch, logit_diff, mode="zero", heads=[(2, 1), (0, 3)])
    assert result.values.isnan().sum() == 3 * 4 - 2
    torch.testing.assert_close(result.values[2, 1], expected[2, 1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.values[0, 3], expected[0, 3], atol=1e-5, rtol=1e-5)
    assert result.metric == "logit_diff" and result.n_examples == 4


def test_hooks_mode_and_inputs_are_left_as_they_were(mlp_model: TransformerBridge) -> None:
    batch = _random_batch()
    clean = batch.clean.clone()
    mlp_model.train()

    def first_logit(logits: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        return logits[:, -1, 0].mean()

    calls = {"n": 0}

    def fails_after_baseline(logits: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("boom")
        return logits[:, -1, 0].mean()

    try:
        with pytest.raises(RuntimeError, match="boom"):
            ablation_importance(mlp_model, batch, fails_after_baseline)
        assert mlp_model.training
        for layer in range(3):
            hook_point = mlp_model.hook_dict[f"blocks.{layer}.attn.hook_z"]
            assert not hook_point._forward_hooks
        ablation_importance(mlp_model, batch, first_logit, mode="mean")
        assert mlp_model.training
        assert torch.equal(batch.clean, clean)
    finally:
        mlp_model.eval()


def test_bad_input_is_a_clear_error(mlp_model: TransformerBridge) -> None:
    batch = _random_batch()
    metric = mean_metric(logit_diff)
    with pytest.raises(ValueError, match="mode must be"):
        ablation_importance(mlp_model, batch, metric, mode="resample")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside the model"):
        ablation_importance(mlp_model, batch, metric, heads=[(3, 0)])
    with pytest.raises(ValueError, match="max_batch"):
        ablation_importance(mlp_model, batch, metric, max_batch=0)
    with pytest.raises(ValueError, match="scalar or one value per example"):
        ablation_importance(mlp_model, batch, lambda logits, b: logits[:, -1])


@pytest.mark.parametrize(
    ("heads", "message"),
    [
        ((0, 1), r"pairs of ints; for the one head \(0, 1\) pass \[\(0, 1\)\]"),
        ([(0, 1.7)], r"pairs of ints, got \(0, 1.7\)"),
        ([(0, "1")], r"pairs of ints, got \(0, '1'\)"),
        ([(0, True)], r"pairs of ints, got \(0, True\)"),
        ([(0, 1, 2)], r"pairs of ints, got the item \(0, 1, 2\)"),
        ([3], r"pairs of ints, got the item 3"),
        ([(0, -1)], r"head \(0, -1\) is outside the model's 3 layers x 4 heads"),
        ([(3, 0)], r"head \(3, 0\) is outside"),
        ([], "heads is empty"),
    ],
)
def test_malformed_heads_are_refused(mlp_model: TransformerBridge, heads, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ablation_importance(mlp_model, _random_batch(), mean_metric(logit_diff), heads=heads)


def test_heads_given_as_integer_tensors_ablate_those_heads(mlp_model: TransformerBridge) -> None:
    batch = _random_batch()
    _, expected = _one_head_at_a_time(mlp_model, batch, "zero")
    chosen = torch.tensor([[2, 1], [0, 3]])
    result = ablation_importance(mlp_model, batch, logit_diff, mode="zero", heads=chosen)
    assert result.values.isnan().sum() == 3 * 4 - 2
    torch.testing.assert_close(result.values[2, 1], expected[2, 1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.values[0, 3], expected[0, 3], atol=1e-5, rtol=1e-5)


def test_a_batch_larger_than_max_batch_runs_one_head_per_pass(
    mlp_model: TransformerBridge,
) -> None:
    """Every pass runs the whole batch (never split: a metric over the batch need not be a
    mean of its parts), so with fewer examples allowed per pass than the batch holds, each
    head gets a pass of its own: the values of one head at a time."""
    batch = _random_batch()  # 4 examples
    _, expected = _one_head_at_a_time(mlp_model, batch, "mean")
    for max_batch in (3, 4):
        result = ablation_importance(mlp_model, batch, mean_metric(logit_diff),
                                     max_batch=max_batch)
        torch.testing.assert_close(result.values, expected, atol=1e-5, rtol=1e-5)


def test_result_round_trips_through_the_run_store(tmp_path: Path) -> None:
    result = AblationResult(
        values=torch.tensor([[0.5, float("nan")], [1.0, 2.0]]), baseline=1.5, mode="zero",
        metric="mean_logit_diff", n_examples=3,
    )
    with RunStore(tmp_path).create("heads", kind="test", config={}, seed=0) as run:
        result.save(run)
        loaded = AblationResult.load(run)
    torch.testing.assert_close(loaded.values, result.values, equal_nan=True)
    assert (loaded.baseline, loaded.mode, loaded.metric, loaded.n_examples) == (
        1.5, "zero", "mean_logit_diff", 3
    )
