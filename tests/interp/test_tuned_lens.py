"""The tuned lens against what is known: a model whose one block is a linear map of a
one-token stream (the translator that reads it exactly is that map), the identity lens
(= the logit lens), and the trained induction model, where, as in Belrose et al. 2023
(figure 2), the tuned lens is closer to the output than the logit lens at every depth."""

from __future__ import annotations

import pytest
import torch

from interp import functional, models
from interp.config import load_config
from interp.logit_lens import logit_lens
from interp.tasks import Induction
from interp.tasks.base import TaskBatch
from interp.tuned_lens import TunedLens, counted_through, lens_divergence, train_tuned_lens


@pytest.fixture(scope="module")
def linear_block():
    """One attention-only block without norms on one-token sequences: the head attends to
    its own position, so the block adds W_O W_V h (+ biases, zero here) to the stream h."""
    spec = dict(n_layers=1, d_model=8, n_heads=2, d_vocab=24, n_ctx=4, attn_only=True,
                normalization=None, seed=1)
    return models.build(spec, device="cpu").eval()


def test_the_translator_of_a_linear_block_is_that_map(linear_block) -> None:
    tokens = torch.arange(24)[:, None]  # every token once; W_U (24 x 8) is injective
    before = lens_divergence(linear_block, tokens)
    lens = train_tuned_lens(linear_block, tokens, steps=500, lr=1e-2, progress=False)
    after = lens_divergence(linear_block, tokens, lens)
    assert before[0] > 1e-2 and after[0] < 1e-6, (before, after)
    assert before[1] == 0 and after[1] == 0  # the output read as it is
    params = functional.live_params(linear_block)
    ov = params["blocks.0.attn.o.weight"] @ params["blocks.0.attn.v.weight"]
    torch.testing.assert_close(lens.weights[0], ov, atol=1e-2, rtol=0)
    assert lens.losses[-1] < 1e-3 * lens.losses[0]


def test_the_identity_lens_is_the_logit_lens_and_a_lens_round_trips(linear_block,
                                                                    tmp_path) -> None:
    arch = functional.architecture_of(linear_block)
    tokens = torch.randint(0, 24, (6, 4), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(lens_divergence(linear_block, tokens, TunedLens.identity(arch)),
                               lens_divergence(linear_block, tokens))
    batch = TaskBatch(tokens, tokens, tokens[:, 0], tokens[:, 1], torch.full((6,), 3))
    tuned = train_tuned_lens(linear_block, tokens, steps=5, progress=False)
    read = logit_lens(linear_block, batch, lens=tuned)
    plain = logit_lens(linear_block, batch)
    assert not torch.allclose(read.logit_diff[:, 0], plain.logit_diff[:, 0])
    tuned.save(tmp_path)
    loaded = TunedLens.load(tmp_path)
    torch.testing.assert_close(loaded.weights, tuned.weights)
    assert loaded.losses == pytest.approx(tuned.losses)
    torch.testing.assert_close(logit_lens(linear_block, batch, lens=loaded).logit_diff,
                               read.logit_diff)


def test_bad_input_gets_one_line_errors(linear_block, minilm, tmp_path) -> None:
    tokens = torch.arange(24)[:, None]
    for kwargs, match in [({"steps": 0}, "steps must be a positive int"),
                          ({"lr": -1.0}, "lr must be a positive number"),
                          ({"max_batch": True}, "max_batch must be a positive int")]:
        with pytest.raises(ValueError, match=match):
            train_tuned_lens(linear_block, tokens, progress=False, **kwargs)
    with pytest.raises(ValueError, match=r"integer tensor \[sequence, pos\]"):
        train_tuned_lens(linear_block, tokens.float(), progress=False)
    with pytest.raises(ValueError, match="outside 0..23"):
        lens_divergence(linear_block, tokens + 1)
    with pytest.raises(ValueError, match="runs interp.functional's forward pass"):
        lens_divergence(minilm, tokens)
    wrong = TunedLens(torch.zeros(2, 8, 8), torch.zeros(2, 8))
    with pytest.raises(ValueError, match="has 2 translators of width 8; the model has 1"):
        lens_divergence(linear_block, tokens, wrong)
    with pytest.raises(ValueError, match="no tuned lens at"):
        TunedLens.load(tmp_path)


def test_on_the_trained_induction_model_the_tuned_lens_beats_the_logit_lens(
    induction_2l_model,
) -> None:
    """Trained on one set of induction prompts, measured on held-out ones."""
    _, config = load_config("experiments/induction_2l.yaml", ["device=cpu"])

    def prompts(seed: int) -> torch.Tensor:
        task = config.task.model_copy(update={"n_examples": 64, "seed": seed})
        return Induction(task).batch().clean

    lens = train_tuned_lens(induction_2l_model, prompts(11), steps=150, lr=1e-2,
                            progress=False)
    held_out = prompts(12)
    logit = lens_divergence(induction_2l_model, held_out)
    tuned = lens_divergence(induction_2l_model, held_out, lens)
    assert (tuned[:-1] < 0.9 * logit[:-1]).all(), (logit, tuned)


def test_counted_positions_leave_the_padding_out(linear_block) -> None:
    """Under causal attention a prompt's positions do not see its right padding, so the
    divergence over the positions up to each read position equals that of the prompts cut
    there; the same mask keeps the padding out of training."""
    generator = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, 24, (4, 4), generator=generator)
    counted = counted_through(torch.tensor([1, 1, 1, 1]), 4)
    assert counted.tolist()[0] == [True, True, False, False]
    torch.testing.assert_close(lens_divergence(linear_block, tokens, counted=counted),
                               lens_divergence(linear_block, tokens[:, :2]))
    padded = train_tuned_lens(linear_block, tokens, counted=counted, steps=20, progress=False)
    cut = train_tuned_lens(linear_block, tokens[:, :2], steps=20, progress=False)
    torch.testing.assert_close(padded.weights, cut.weights)
    with pytest.raises(ValueError, match="counted must be a bool tensor"):
        lens_divergence(linear_block, tokens, counted=counted.float())
    with pytest.raises(ValueError, match="must match tokens"):
        lens_divergence(linear_block, tokens, counted=counted[:, :2])
    with pytest.raises(ValueError, match="marks no position"):
        lens_divergence(linear_block, tokens, counted=torch.zeros_like(counted))
