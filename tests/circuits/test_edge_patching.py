"""Tests for circuits.edge_patching: known answers of edge-ablated forward passes."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge

from circuits.acdc import acdc
from circuits.eap import edge_attribution
from circuits.edge_patching import EdgePatcher
from circuits.patching import patch
from circuits.path_patching import path_patch
from interp import functional, models
from interp.metrics import logit_diff, mean_metric
from interp.tasks.base import TaskBatch

METRIC = mean_metric(logit_diff)


@pytest.fixture(scope="module")
def attn_only() -> TransformerBridge:
    spec = dict(n_layers=2, d_model=32, n_heads=4, d_vocab=20, n_ctx=8, attn_only=True, seed=1)
    return models.build(spec, device="cpu")


def keep_all_but(patcher: EdgePatcher, removed: set[str]) -> torch.Tensor:
    mask = torch.ones(1, patcher.n_edges)
    for name in removed:
        mask[0, patcher.graph.edge_index[name]] = 0.0
    return mask


def reference_logits(model, tokens) -> torch.Tensor:
    """The bridge's own forward pass (for GPT-2 and GPT-NeoX, Hugging Face's modules)."""
    with torch.no_grad():
        return model(tokens)


@pytest.mark.parametrize(
    "which",
    ["model", "attn_only", "rotary", "gpt2", "neox", "llama", "qwen2", "qwen3", "gemma", "phi3",
     "gptj", "opt", "gpt_neo", "phi", "bloom", "mistral_windowed", "gemma2", "gemma3"],
)
def test_full_circuit_is_the_model_and_empty_resample_circuit_is_the_corrupted_run(
    request, batch, which
) -> None:
    model = request.getfixturevalue(which)
    patcher = EdgePatcher(model)
    ablated = patcher.ablated_outputs(batch.clean, batch.corrupted, "resample")
    masks = torch.stack([torch.ones(patcher.n_edges), torch.zeros(patcher.n_edges)])
    with torch.no_grad():
        logits = patcher.run(batch.clean, patcher.dense(masks), ablated)
        torch.testing.assert_close(
            logits[0], reference_logits(model, batch.clean), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            logits[1], reference_logits(model, batch.corrupted), atol=1e-5, rtol=0
        )


@pytest.mark.parametrize(
    "which",
    ["model", "rotary", "neox", "llama", "qwen2", "qwen3", "gemma", "phi3", "gpt_neo", "phi",
     "bloom", "mistral_windowed"],
)
def test_cutting_every_edge_out_of_a_head_is_activation_patching_its_output(
    request, batch, which
) -> None:
    """Noising a head's output, and the corrupted run when the embedding is cut; in
    GPT-NeoX's and Phi's parallel blocks the MLP reads its block's input, not its heads.
    (Not under Gemma 2's and 3's norm after the attention: there a head's edges carry its
    share of the block's output, whose scale the other heads' clean outputs still set,
    while patching its output rescales them all; test_gemma_cutting_a_whole_block_...)"""
    model = request.getfixturevalue(which)
    patcher = EdgePatcher(model)
    same_block = any(e.source.layer == e.destination.layer and e.destination.kind == "mlp"
                     for e in patcher.graph.edges)
    assert same_block != (which in ("neox", "phi"))
    noised = patch(model, batch, "z", METRIC, direction="noise", progress=False).values
    for layer, head in [(0, 1), (1, 3)]:
        source = f"L{layer}H{head}"
        removed = {e.name for e in patcher.graph.edges if e.source.name == source}
        value = patcher.evaluate(batch, keep_all_but(patcher, removed), METRIC)[0]
        assert value.item() == pytest.approx(noised[layer, head].item(), abs=1e-5)
    embed_cut = {e.name for e in patcher.graph.edges if e.source.name == "embed"}
    corrupted = METRIC(reference_logits(model, batch.corrupted), batch)
    value = patcher.evaluate(batch, keep_all_but(patcher, embed_cut), METRIC)[0]
    assert value.item() == pytest.approx(corrupted.item(), abs=1e-5)


def _with_output_of(model, module: torch.nn.Module, source: torch.Tensor,
                    tokens: torch.Tensor) -> torch.Tensor:
    """The model's logits on `tokens` with `module`'s output replaced by its output on
    `source` (forward hooks on the Hugging Face module)."""
    saved: list[torch.Tensor] = []
    for tokens_in, hook in ((source, lambda m, i, out: saved.append(out)),
                            (tokens, lambda m, i, out: saved[0])):
        handle = module.register_forward_hook(hook)
        try:
            with torch.no_grad():
                logits = model(tokens_in)
        finally:
            handle.remove()
    return logits


@pytest.mark.parametrize("which", ["gemma2", "gemma3"])
def test_gemma_cutting_a_whole_blocks_heads_is_patching_its_normalised_output(
    request, batch, which
) -> None:
    """Under Gemma 2's and 3's norm after the attention, a head's edges carry its share of
    the normalised block output: cutting every edge out of every head of a block gives
    the run where that norm's output (Hugging Face's `post_attention_layernorm`) is the
    corrupted run's, at every position (Gemma's attention has no output bias)."""
    model = request.getfixturevalue(which)
    patcher = EdgePatcher(model)
    layers = model.original_model.model.layers
    for layer in range(len(layers)):
        norm = layers[layer].post_attention_layernorm
        heads = {f"L{layer}H{h}" for h in range(model.cfg.n_heads)}
        removed = {e.name for e in patcher.graph.edges if e.source.name in heads}
        value = patcher.evaluate(batch, keep_all_but(patcher, removed), METRIC)[0]
        expected = METRIC(_with_output_of(model, norm, batch.corrupted, batch.clean), batch)
        clean = METRIC(reference_logits(model, batch.clean), batch)
        assert abs(expected.item() - clean.item()) > 1e-3  # the block matters
        assert value.item() == pytest.approx(expected.item(), abs=1e-5)


@pytest.mark.parametrize("receiver", ["L1H2.v", "L1H0.k", "L1H3.q", "logits"])
def test_one_edge_in_an_attention_only_model_is_path_patching(attn_only, batch, receiver) -> None:
    """Without MLPs, path patching sender -> receiver (other heads frozen clean) is exactly
    the one edge carrying the sender's corrupted output."""
    patcher = EdgePatcher(attn_only)
    value = patcher.evaluate(batch, keep_all_but(patcher, {f"L0H1->{receiver}"}), METRIC)[0]
    expected = path_patch(attn_only, batch, ["L0H1"], [receiver], METRIC, direction="noise")
    assert value.item() == pytest.approx(expected.value, abs=1e-5)
    assert abs(expected.value - expected.metric_clean) > 1e-4  # the edge matters


def test_empty_zero_ablated_circuit_reads_only_the_biases(model, batch) -> None:
    patcher = EdgePatcher(model)
    ablated = patcher.ablated_outputs(batch.clean, batch.corrupted, "zero")
    with torch.no_grad():
        logits = patcher.run(batch.clean, patcher.dense(torch.zeros(1, patcher.n_edges)), ablated)
    params = functional.params_of(model)
    arch = patcher.arch
    biases = sum(params[f"blocks.{layer}.attn.o.bias"] for layer in range(arch.n_layers))
    expected = functional.unembed(params, biases.expand(1, 1, -1), arch)[0, 0]
    torch.testing.assert_close(logits[0], expected.expand_as(logits[0]), atol=1e-5, rtol=0)


def test_mean_ablation_of_a_head_uses_its_batch_mean(model, batch) -> None:
    patcher = EdgePatcher(model)
    clean = patcher.source_outputs(batch.clean)
    mean = patcher.ablated_outputs(batch.clean, None, "mean")
    torch.testing.assert_close(mean[1], clean.mean(dim=0))
    full = patcher.evaluate(batch, torch.ones(1, patcher.n_edges), METRIC, ablation="mean")
    assert full.item() == pytest.approx(
        METRIC(reference_logits(model, batch.clean), batch).item(), abs=1e-5
    )


def test_batched_circuits_equal_one_at_a_time(model, batch) -> None:
    patcher = EdgePatcher(model)
    masks = (
        torch.rand(5, patcher.n_edges, generator=torch.Generator().manual_seed(0)) > 0.3
    ).float()
    together = patcher.evaluate(batch, masks, METRIC, max_circuits=5)
    apart = patcher.evaluate(batch, masks, METRIC, max_circuits=1)
    torch.testing.assert_close(together, apart, atol=1e-5, rtol=0)
    assert together.std() > 1e-3


def test_bad_inputs_raise_one_line(minilm, model, batch) -> None:
    with pytest.raises(ValueError, match="covers pre-LayerNorm models.*this model is a Bert"):
        EdgePatcher(minilm)
    # EAP and ACDC refuse MiniLM in the same line, saying what makes edge patching inexact
    expected = (
        "covers pre-LayerNorm models.*; this model is a BertForMaskedLM, a BERT-style encoder: "
        r"its LayerNorm after each attention and MLP \(post-LayerNorm\) rescales the residual "
        "stream.*bidirectional; activation, attribution and path patching run on it$"
    )
    for refused in (
        lambda: EdgePatcher(minilm),
        lambda: edge_attribution(minilm, batch, METRIC, method="eap-ig", steps=2),
        lambda: acdc(minilm, batch, 0.1, progress=False),
    ):
        with pytest.raises(ValueError, match=expected) as info:
            refused()
        assert "\n" not in str(info.value)
    patcher = EdgePatcher(model)
    with pytest.raises(ValueError, match=r"masks must be \[n_circuits, \d+\]"):
        patcher.dense(torch.ones(3))
    with pytest.raises(ValueError, match="ablation must be one of"):
        patcher.ablated_outputs(batch.clean, batch.corrupted, "noise")
    with pytest.raises(ValueError, match="resample ablation needs corrupted tokens"):
        patcher.ablated_outputs(batch.clean, None, "resample")


def test_batch_is_untouched(model, batch: TaskBatch) -> None:
    before = batch.clean.clone()
    EdgePatcher(model).evaluate(batch, torch.zeros(2, EdgePatcher(model).n_edges), METRIC)
    assert torch.equal(batch.clean, before)


def test_bidirectional_models_are_covered(batch) -> None:
    spec = dict(
        n_layers=2,
        d_model=32,
        n_heads=4,
        d_vocab=20,
        n_ctx=8,
        normalization=None,
        attention="bidirectional",
        seed=4,
    )
    model = models.build(spec, device="cpu")
    patcher = EdgePatcher(model)
    ablated = patcher.ablated_outputs(batch.clean, batch.corrupted, "resample")
    masks = torch.stack([torch.ones(patcher.n_edges), torch.zeros(patcher.n_edges)])
    with torch.no_grad():
        logits = patcher.run(batch.clean, patcher.dense(masks), ablated)
        bridge = model(batch.clean)
    torch.testing.assert_close(logits[0], bridge, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[1], model(batch.corrupted).detach(), atol=1e-5, rtol=0)
    # a later position changes an earlier one's logits: attention really is bidirectional
    moved = batch.clean.clone()
    moved[:, -1] = (moved[:, -1] + 1) % 20
    assert not torch.allclose(model(moved)[:, 0], bridge[:, 0])


def test_a_parallel_blocks_heads_and_mlp_read_their_inputs_together(neox, batch) -> None:
    """With parallel attention and MLP both read the block's input: one mix of the stacked
    source outputs gives the heads' inputs and the MLP's (views of one tensor), recorded
    as two groups, each what mixing its own rows gives."""
    patcher = EdgePatcher(neox)
    generator = torch.Generator().manual_seed(0)
    masks = (torch.rand(2, patcher.n_edges, generator=generator) > 0.5).float()
    dense = patcher.dense(masks)
    inputs: list = []
    record: list = []
    with torch.inference_mode():
        ablated = patcher.ablated_outputs(batch.clean, batch.corrupted, "resample")
        patcher.run(batch.clean, dense, ablated, inputs=inputs, record=record)
    n_heads = patcher.arch.n_heads
    assert [len(rows) for rows, *_ in inputs] == [3 * n_heads, 1, 3 * n_heads, 1, 1]
    outputs = torch.stack(record, dim=3)
    bias = torch.zeros(patcher.arch.d_model)
    for block in range(patcher.arch.n_layers):
        (heads, n_sources, head_in), (mlp, n_mlp, mlp_in) = inputs[2 * block : 2 * block + 2]
        assert n_mlp == n_sources
        assert head_in.untyped_storage().data_ptr() == mlp_in.untyped_storage().data_ptr()
        for rows, read in ((heads, head_in), (mlp, mlp_in)):
            weights = dense[:, rows, :n_sources]
            expected = (
                torch.einsum("cbpsd,cns->cbpnd", outputs[:, :, :, :n_sources], weights)
                + torch.einsum("bpsd,cns->cbpnd", ablated[:, :, :n_sources], 1.0 - weights)
                + bias
            )
            torch.testing.assert_close(read, expected, atol=1e-5, rtol=0)
        bias = bias + patcher.params[f"blocks.{block}.attn.o.bias"]
