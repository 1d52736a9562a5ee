"""The logit lens against TransformerLens's own (`tools.analysis.logit_lens`, on the same
bridge) and, at its last stage, against the model's logits."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.tools.analysis.logit_lens import logit_lens as reference_lens

from interp import models
from interp.logit_lens import LogitLens, logit_lens
from interp.runs import RunStore
from interp.tasks.base import TaskBatch


@pytest.fixture(scope="module")
def model():
    spec = dict(n_layers=3, d_model=32, n_heads=4, d_vocab=20, n_ctx=8, seed=2)
    return models.build(spec, device="cpu").eval()


def _batch(positions: list[int], seq: int = 7, vocab: int = 20) -> TaskBatch:
    generator = torch.Generator().manual_seed(4)
    n = len(positions)
    clean = torch.randint(0, vocab, (n, seq), generator=generator)
    return TaskBatch(clean, clean, torch.randint(0, vocab, (n,), generator=generator),
                     torch.randint(0, vocab, (n,), generator=generator), torch.tensor(positions))


def _gather(values: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """`values[stage, example, tokens[example]]` as `[example, stage]`."""
    index = tokens[None, :, None].expand(values.shape[0], -1, 1)
    return values.gather(-1, index)[..., 0].T


@pytest.mark.parametrize("kind", ["model", "gpt2", "llama"])
def test_every_stage_equals_transformer_lens(request, kind) -> None:
    bridge = request.getfixturevalue(kind)
    batch = _batch([6] * 4)
    ours = logit_lens(bridge, batch, max_batch=3)
    theirs = reference_lens(bridge, batch.clean, positions=-1, return_type="logits")
    assert ours.stages == tuple(theirs.labels)
    logits = theirs.values.detach()
    expected = _gather(logits, batch.answer) - _gather(logits, batch.wrong)
    torch.testing.assert_close(ours.logit_diff, expected, atol=2e-5, rtol=0)
    assert ours.logit_diff.std() > 1e-2  # the stages differ


@pytest.mark.parametrize("kind", ["model", "gemma2", "bloom"])
def test_last_stage_is_the_models_output_at_each_read_position(request, kind) -> None:
    bridge = request.getfixturevalue(kind)
    batch = _batch([6, 3, 5, 0])
    logits = bridge(batch.clean).detach()[torch.arange(4), batch.position]
    lens = logit_lens(bridge, batch)
    logprobs = logits.log_softmax(-1)
    torch.testing.assert_close(lens.answer_logprob[:, -1],
                               logprobs.gather(1, batch.answer[:, None])[:, 0], atol=2e-5, rtol=0)
    torch.testing.assert_close(
        lens.logit_diff[:, -1],
        (logits.gather(1, batch.answer[:, None]) - logits.gather(1, batch.wrong[:, None]))[:, 0],
        atol=2e-5, rtol=0,
    )
    ranks = (logits > logits.gather(1, batch.answer[:, None])).sum(-1)
    assert torch.equal(lens.answer_rank[:, -1], ranks)


def test_the_models_top_token_has_rank_zero_and_frame(model, tmp_path) -> None:
    batch = _batch([6, 6, 4])
    top = model(batch.clean).detach()[torch.arange(3), batch.position].argmax(-1)
    batch = TaskBatch(batch.clean, batch.corrupted, top, batch.wrong, batch.position)
    lens = logit_lens(model, batch)
    assert lens.answer_rank[:, -1].tolist() == [0, 0, 0]
    frame = lens.to_frame()
    assert list(frame["stage"]) == ["0_pre", "1_pre", "2_pre", "final_post"]
    assert frame["top1"].iloc[-1] == 1.0 and frame["answer_rank"].iloc[-1] == 0.0
    run = RunStore(tmp_path / "runs").create("exp", "patching", {})
    lens.save(run)
    loaded = LogitLens.load(run.path)
    assert loaded.stages == lens.stages and torch.equal(loaded.answer_rank, lens.answer_rank)


def test_bad_input_gets_one_line_errors(model, minilm) -> None:
    batch = _batch([6, 6])
    with pytest.raises(ValueError, match="max_batch must be a positive int"):
        logit_lens(model, batch, max_batch=-1)
    with pytest.raises(ValueError, match="batch must be a TaskBatch"):
        logit_lens(model, batch.clean)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="the logit lens runs interp.functional") as error:
        logit_lens(minilm, batch)
    assert "\n" not in str(error.value)
    handle = model.blocks[0].hook_resid_pre.add_hook(lambda x, hook: x)
    try:
        with pytest.raises(ValueError, match="hook"):
            logit_lens(model, batch)
    finally:
        model.reset_hooks()
    del handle
