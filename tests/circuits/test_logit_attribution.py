"""Direct logit attribution against what is known: the model's own logits (every row sums
to its logit difference), TransformerLens's `logit_attrs` on the same bridge, and a planted
circuit whose heads write the answer and the wrong token by construction."""

from __future__ import annotations

import pytest
import torch

from circuits.logit_attribution import LogitAttribution, direct_logit_attribution
from circuits.planted import copy_suppress
from interp import models
from interp.runs import RunStore
from interp.tasks.base import TaskBatch


def _readout(logits: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
    at = torch.arange(len(batch)), batch.position
    rows = logits[at]
    return (rows.gather(1, batch.answer[:, None]) - rows.gather(1, batch.wrong[:, None]))[:, 0]


@pytest.fixture(scope="module")
def biased() -> models.TransformerBridge:
    """The conftest model's shape with every bias and norm weight random (the final
    norm's weight stays 1: TransformerLens's `logit_attrs` leaves it out on a bridge whose
    LayerNorms are not folded), so no term of the sum is zero by accident."""
    model = models.build(dict(n_layers=2, d_model=32, n_heads=4, d_vocab=20, n_ctx=8, seed=3),
                         device="cpu").eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim == 1 and "ln_out" not in name:
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return model


def test_rows_sum_to_the_models_logit_difference(biased, batch) -> None:
    result = direct_logit_attribution(biased, batch, max_batch=2)
    expected = _readout(biased(batch.clean), batch)
    torch.testing.assert_close(result.total, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.values.sum(dim=1), result.total)
    assert result.values[:, result.components.index("bias")].abs().min() > 1e-4


def test_heads_mlps_and_embeddings_equal_transformer_lens(biased, batch) -> None:
    """`logit_attrs` of `stack_head_results` and `decompose_resid` (read at the last
    position, so the batch reads there too)."""
    batch = TaskBatch(batch.clean, batch.corrupted, batch.answer, batch.wrong,
                      torch.full_like(batch.position, batch.clean.shape[1] - 1))
    result = direct_logit_attribution(biased, batch)
    _, cache = biased.run_with_cache(batch.clean)

    def attrs(stack: torch.Tensor) -> torch.Tensor:
        return cache.logit_attrs(stack, tokens=batch.answer, incorrect_tokens=batch.wrong,
                                 pos_slice=-1).detach().T

    heads = attrs(cache.stack_head_results(layer=-1, pos_slice=-1))
    ours = result.values[:, [i for i, n in enumerate(result.components) if n.startswith("L")]]
    torch.testing.assert_close(ours, heads, atol=1e-5, rtol=0)
    parts, labels = cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
    reference = dict(zip(labels, attrs(parts).T, strict=True))
    for layer in range(2):
        torch.testing.assert_close(result.values[:, result.components.index(f"mlp{layer}")],
                                   reference[f"{layer}_mlp_out"], atol=1e-5, rtol=0)
    torch.testing.assert_close(result.values[:, 0], reference["embed"] + reference["pos_embed"],
                               atol=1e-5, rtol=0)


def test_planted_copier_and_suppressor_are_found_and_nothing_else() -> None:
    """In `copy_suppress` the name mover L2H0 writes the answer's logit, the suppression
    head L1H0 minus the wrong token's, and every other component writes neither."""
    planted = copy_suppress()
    by_readout = {
        readout: dict(zip(result.components, result.mean().tolist(), strict=True))
        for readout in ("answer", "wrong", "logit_diff")
        for result in [direct_logit_attribution(planted.model, planted.batch, readout=readout)]
    }
    assert by_readout["answer"]["L2H0"] > 5 and by_readout["wrong"]["L1H0"] < -5
    assert abs(by_readout["answer"]["L1H0"]) < 1e-3 and abs(by_readout["wrong"]["L2H0"]) < 1e-3
    for name, value in by_readout["logit_diff"].items():
        if name not in ("L1H0", "L2H0"):
            assert abs(value) < 1e-5, name
    assert by_readout["logit_diff"]["L1H0"] == pytest.approx(
        by_readout["answer"]["L1H0"] - by_readout["wrong"]["L1H0"], abs=1e-5)


@pytest.mark.parametrize("kind", ["gpt2", "neox", "gptj", "opt", "llama", "phi", "bloom", "gemma3"])
def test_rows_sum_to_the_logits_of_pretrained_bridges(request, batch, kind) -> None:
    model = request.getfixturevalue(kind)
    result = direct_logit_attribution(model, batch)
    torch.testing.assert_close(result.total, _readout(model(batch.clean), batch),
                               atol=2e-5, rtol=0)


def test_gemma2_sums_to_the_logits_before_the_soft_cap(gemma2, batch) -> None:
    """Gemma 2 caps its logits with c tanh(x / c): the attribution is of x (linear in
    the parts), which the capped logits give back as c artanh(logits / c)."""
    cap = gemma2.original_model.config.final_logit_softcapping
    assert cap is not None
    uncapped = cap * torch.atanh(gemma2(batch.clean).double() / cap)
    result = direct_logit_attribution(gemma2, batch)
    torch.testing.assert_close(result.total.double(), _readout(uncapped, batch),
                               atol=1e-4, rtol=0)


def test_heads_grid_top_frame_and_run_store_round_trip(biased, batch, tmp_path) -> None:
    result = direct_logit_attribution(biased, batch, readout="answer", neurons=True,
                                      by_source=True)
    grid = result.heads()
    assert grid.shape == (2, 4)
    assert float(grid[1, 2]) == pytest.approx(float(result.mean()[result.components.index("L1H2")]))
    top = result.top(3)
    assert [abs(v) for _, v in top] == sorted((abs(v) for _, v in top), reverse=True)
    frame = result.to_frame()
    assert list(frame.columns) == ["component", "kind", "layer", "head", "mean", "std"]
    assert frame.set_index("component").loc["mlp1", "layer"] == 1
    assert set(frame["kind"]) == {"embed", "head", "mlp", "bias", "unembed"}
    run = RunStore(tmp_path / "runs").create("exp", "patching", {})
    result.save(run)
    loaded = LogitAttribution.load(run.path)
    torch.testing.assert_close(loaded.values, result.values)
    torch.testing.assert_close(loaded.neurons, result.neurons)
    torch.testing.assert_close(loaded.sources, result.sources)
    assert (loaded.components, loaded.readout) == (result.components, "answer")


def test_bad_input_gets_one_line_errors(minilm, model, batch) -> None:
    with pytest.raises(ValueError, match="readout must be one of"):
        direct_logit_attribution(model, batch, readout="logit")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_batch must be a positive int"):
        direct_logit_attribution(model, batch, max_batch=0)
    with pytest.raises(ValueError, match="batch must be a TaskBatch"):
        direct_logit_attribution(model, batch.clean)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="BERT-style encoder") as error:
        direct_logit_attribution(minilm, batch)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("kind", ["biased", "llama", "gemma"])
def test_neurons_add_up_to_their_mlp_and_equal_transformer_lens(request, batch, kind) -> None:
    """A layer's neurons plus its output bias's share make its MLP's column (the bias's
    share computed here by hand: b_out through the final norm at the run's scale); on the
    native model each neuron equals `logit_attrs` of `stack_neuron_results`."""
    model = request.getfixturevalue(kind)
    result = direct_logit_attribution(model, batch, neurons=True)
    assert result.neurons is not None and result.neurons.shape[:2] == (3, 2)
    without_bias = direct_logit_attribution(model, batch)
    torch.testing.assert_close(without_bias.values, result.values)
    for layer in range(2):
        column = result.values[:, result.components.index(f"mlp{layer}")]
        if kind != "biased":  # no MLP biases (Llama, Gemma): the neurons are the column
            torch.testing.assert_close(result.neurons[:, layer].sum(-1), column,
                                       atol=1e-5, rtol=0)
    assert result.top_neurons(1)[0][0].startswith("L")
    if kind == "biased":
        last = TaskBatch(batch.clean, batch.corrupted, batch.answer, batch.wrong,
                         torch.full_like(batch.position, batch.clean.shape[1] - 1))
        ours = direct_logit_attribution(model, last, neurons=True).neurons
        _, cache = model.run_with_cache(last.clean)
        stack = cache.stack_neuron_results(layer=-1, pos_slice=-1)
        theirs = cache.logit_attrs(stack, tokens=last.answer, incorrect_tokens=last.wrong,
                                   pos_slice=-1).detach().T.reshape(ours.shape)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_neurons_are_refused_where_they_have_no_direct_effect_of_their_own(
    gemma2, batch
) -> None:
    with pytest.raises(ValueError, match="a norm after each MLP mixes them"):
        direct_logit_attribution(gemma2, batch, neurons=True)
    planted = copy_suppress()
    with pytest.raises(ValueError, match="it has no MLPs"):
        direct_logit_attribution(planted.model, planted.batch, neurons=True)


@pytest.mark.parametrize("kind", ["biased", "llama", "bloom", "gemma2", "mistral_windowed"])
def test_a_heads_sources_add_up_to_its_column(request, batch, kind) -> None:
    """Split by key position (GQA, ALiBi, Gemma 2's post-attention norm and soft caps,
    a sliding window), each head's pieces sum to its direct effect, and keys after the
    read position (causal attention) give nothing."""
    model = request.getfixturevalue(kind)
    result = direct_logit_attribution(model, batch, by_source=True, max_batch=2)
    assert result.sources is not None
    assert result.sources.shape == (3, 2, result.n_heads, batch.clean.shape[1])
    heads = [i for i, name in enumerate(result.components) if name.startswith("L")]
    torch.testing.assert_close(result.sources.sum(-1).flatten(1), result.values[:, heads],
                               atol=2e-5, rtol=0)
    for example, position in enumerate(batch.position.tolist()):
        assert torch.count_nonzero(result.sources[example, :, :, position + 1:]) == 0
    assert result.sources.abs().max() > 1e-3


def test_the_planted_name_mover_draws_its_effect_from_the_indirect_object() -> None:
    """`copy_suppress`'s name mover L2H0 attends to the name that occurs once (the
    answer) and copies it: its direct effect comes from that position."""
    planted = copy_suppress()
    result = direct_logit_attribution(planted.model, planted.batch, by_source=True)
    mover = result.sources[:, 2, 0]  # [example, pos]
    where = mover.argmax(dim=-1)
    clean = planted.batch.clean
    assert torch.equal(clean[torch.arange(len(clean)), where], planted.batch.answer)
    share = mover.max(dim=-1).values / mover.sum(dim=-1)
    assert share.min() > 0.9, share
