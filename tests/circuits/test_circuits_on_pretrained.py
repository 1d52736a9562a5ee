"""The fast engines on pretrained bridges (random ones written locally,
`tests/pretrained_models.py`): activation patching by both engines against
TransformerLens's own functions on each bridge (GPT-2, GPT-NeoX, Llama, Qwen2, Phi, BLOOM, ...);
on GPT-2,
pattern patching, EAP and ACDC against the same weights in a native model, and the
hook-based analyses likewise. Edge patching against the model and activation patching,
EAP against the derivative of edge patching and incremental ACDC against full passes on
each architecture are in test_edge_patching.py, test_eap.py and test_acdc.py."""

from __future__ import annotations

import pytest
import torch
from patching_reference import METRIC, REFERENCES, hook_counts, reference
from pretrained_models import native_twin, write_llama

from circuits.acdc import acdc
from circuits.attribution import attribute
from circuits.eap import edge_attribution
from circuits.edge_patching import EdgePatcher
from circuits.patching import incremental, patch
from circuits.patching.targets import pattern_hook_takes_effect
from circuits.path_patching import path_patch_senders
from interp import models


@pytest.fixture(scope="module")
def twin(gpt2):
    return native_twin(gpt2)


def _patching_cases() -> list[tuple[str, str, str, str]]:
    """(model, target, engine, direction) of every patch TransformerLens can check on the
    pretrained bridges (GPT-NeoX has no resid_mid). The hook engine runs denoising only."""
    cases = []
    for kind in ("gpt2", "neox", "llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3",
                 "phi3", "gptj", "opt", "gpt_neo", "phi", "bloom", "mistral_windowed"):
        for target in sorted(REFERENCES):
            if target == "resid_mid" and kind in ("neox", "gptj", "phi"):  # parallel blocks
                continue
            if target == "pattern" and kind in ("gptj", "opt", "gpt_neo"):  # hooks only observe
                continue  # (GPT-Neo's pattern: test_gpt_neo_pattern_patching_...)
            cases += [(kind, target, "incremental", direction)
                      for direction in ("denoise", "noise")]
            cases.append((kind, target, "hooks", "denoise"))
    return cases


@pytest.mark.parametrize(("kind", "target", "engine", "direction"), _patching_cases())
def test_patching_matches_transformer_lens(request, batch, kind, target, engine,
                                           direction) -> None:
    """Both engines on each pretrained bridge equal TransformerLens's `get_act_patch_*`
    there, and leave the bridge's hooks as they were. Under grouped keys (Llama, Qwen2),
    k and v are patched per key head, as TransformerLens's functions index them."""
    model = request.getfixturevalue(kind)
    assert incremental.supports(model)  # so engine="auto" takes it
    before = hook_counts(model)
    result = patch(model, batch, target, METRIC, direction=direction, max_batch=7,
                   progress=False, engine=engine)
    assert hook_counts(model) == before
    expected = reference(model, batch, target, direction)
    if target in ("k", "v"):
        assert result.values.shape == (
            (2, 4) if kind in ("gpt2", "neox", "gptj", "opt", "gpt_neo", "phi", "bloom")
            else (2, 2)
        )
    assert result.values.std() > 1e-3  # the patches really change the metric
    torch.testing.assert_close(result.values, expected.float(), atol=1e-4, rtol=0)


def test_phi_and_bloom_bridges_use_the_pattern_their_hook_returns(phi, bloom) -> None:
    """Phi's bridge computes its attention around hook_pattern (a
    `PositionEmbeddingsAttentionBridge`, unlike GPT-J's and GPT-Neo's observing hooks), and
    so does BLOOM's (`BloomAttentionBridge`, ALiBi added to the scores before the hook), so
    their pattern cases above check both engines against TransformerLens directly."""
    assert pattern_hook_takes_effect(phi) and pattern_hook_takes_effect(bloom)


def test_pattern_patching_equals_that_of_the_native_twin(gpt2, twin, batch) -> None:
    """GPT-2's bridge computes its attention around hook_pattern, so both engines patch
    the pattern there, and equal TransformerLens's patching on the native model with the
    same weights."""
    expected = reference(twin, batch, "pattern", "denoise")
    for engine in ("incremental", "hooks"):
        ours = patch(gpt2, batch, "pattern", METRIC, progress=False, engine=engine)
        assert ours.values.std() > 1e-3
        torch.testing.assert_close(ours.values, expected.float(), atol=1e-4, rtol=0)


def test_eap_and_acdc_equal_those_of_the_native_twin(gpt2, twin, batch) -> None:
    for method in ("eap", "eap-ig"):
        ours = edge_attribution(gpt2, batch, METRIC, method=method, steps=3).scores
        theirs = edge_attribution(twin, batch, METRIC, method=method, steps=3).scores
        assert ours.abs().max() > 1e-3
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    ours_acdc = acdc(gpt2, batch, threshold=0.01, progress=False)
    theirs_acdc = acdc(twin, batch, threshold=0.01, progress=False)
    assert 0 < int(ours_acdc.kept.sum()) < len(ours_acdc.graph)
    assert torch.equal(ours_acdc.kept, theirs_acdc.kept)
    torch.testing.assert_close(ours_acdc.scores, theirs_acdc.scores, atol=1e-5, rtol=0,
                               equal_nan=True)


def test_hook_based_analyses_equal_those_of_the_native_twin(gpt2, twin, batch) -> None:
    """Path and attribution patching run through hooks, which on this bridge sit around
    Hugging Face's modules: they must give what they give on the native model."""
    ours = path_patch_senders(gpt2, batch, ["L1H0.v"], METRIC).values
    theirs = path_patch_senders(twin, batch, ["L1H0.v"], METRIC).values
    assert (ours - ours.mean()).abs().max() > 1e-3
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    for target in ("z", "resid_pre", "mlp_out"):
        ours = attribute(gpt2, batch, target, METRIC).values
        torch.testing.assert_close(ours, attribute(twin, batch, target, METRIC).values,
                                   atol=1e-5, rtol=0)


def test_neox_has_no_resid_mid(neox, batch) -> None:
    for engine in ("incremental", "hooks"):
        with pytest.raises(ValueError, match="'resid_mid' does not exist in this model "
                                             r"\(its attention and MLP run in parallel\)"):
            patch(neox, batch, "resid_mid", METRIC, progress=False, engine=engine)


@pytest.mark.parametrize("kind", ["gemma2", "gemma3", "mistral_windowed", "gpt_neo"])
def test_edge_level_engines_on_post_norms_soft_caps_and_sliding_windows(
    request, batch, kind
) -> None:
    """Gemma 2's and 3's norm after the attention: edge patching splits it into each
    head's share (`functional.normalized_parts`); soft caps (Gemma 2), per-layer rotary
    frequencies (Gemma 3) and windows of 3 keys (Gemma 2's and 3's local layers, Mistral
    7B v0.1's 4,096, GPT-Neo's 256) on prompts of 6 positions: every edge kept gives the
    bridge's logits and none the corrupted run's; EAP runs; incremental ACDC, which masks
    the windows and recomputes a tested head's block's shares, finds the plain loop's
    circuit."""
    model = request.getfixturevalue(kind)
    patcher = EdgePatcher(model)
    ablated = patcher.ablated_outputs(batch.clean, batch.corrupted, "resample")
    masks = torch.stack([torch.ones(patcher.n_edges), torch.zeros(patcher.n_edges)])
    with torch.no_grad():
        logits = patcher.run(batch.clean, patcher.dense(masks), ablated)
        torch.testing.assert_close(logits[0], model(batch.clean), atol=1e-5, rtol=0)
        torch.testing.assert_close(logits[1], model(batch.corrupted), atol=1e-5, rtol=0)
    assert edge_attribution(model, batch, METRIC).scores.abs().max() > 1e-3
    fast = acdc(model, batch, threshold=0.01, progress=False, speculation=4)
    plain = acdc(model, batch, threshold=0.01, progress=False, incremental=False)
    assert 0 < int(fast.kept.sum()) < len(fast.graph)
    assert torch.equal(fast.kept, plain.kept) and fast.n_tests == plain.n_tests
    torch.testing.assert_close(fast.scores, plain.scores, atol=1e-5, rtol=0, equal_nan=True)


def test_acdc_under_a_norm_after_a_biased_attention_takes_full_passes(
    tmp_path_factory, batch
) -> None:
    """A Gemma 2 with attention biases: the bias's share of the normalised output moves
    with every test of its block and no edge carries it, so incremental ACDC refuses in
    one line and the default takes full edge-patched passes (which stay exact)."""
    folder = write_llama(tmp_path_factory.mktemp("gemma2_bias"), "gemma2", attention_bias=True)
    model = models.load(folder, device="cpu").eval()
    patcher = EdgePatcher(model)
    assert patcher.params["blocks.0.attn.o.bias"].abs().max() > 0.1
    with torch.no_grad():
        logits = patcher.run(batch.clean, patcher.dense(torch.ones(1, patcher.n_edges)), None)
    torch.testing.assert_close(logits[0], model(batch.clean), atol=1e-5, rtol=0)
    message = ("^incremental ACDC carries no bias through a norm after the attention, and "
               "this model's attention output or that norm has one; run acdc with "
               "incremental=False$")
    with pytest.raises(ValueError, match=message):
        acdc(model, batch, threshold=0.01, progress=False, incremental=True)
    default = acdc(model, batch, threshold=0.01, progress=False)
    plain = acdc(model, batch, threshold=0.01, progress=False, incremental=False)
    assert torch.equal(default.kept, plain.kept) and int(default.kept.sum()) > 0


def _gpt_neo_pattern_reference(model, batch, direction: str) -> torch.Tensor:
    """Pattern patching through Hugging Face's own GPT-Neo attention, where the bridge's
    hook_pattern only observes: each head's softmaxed pattern in `GPTNeoSelfAttention._attn`
    replaced by the source run's, and the head's output mixed from it, one run per head."""
    source, base = ((batch.clean, batch.corrupted) if direction == "denoise"
                    else (batch.corrupted, batch.clean))
    attentions = [block.attn.original_component for block in model.blocks]  # Hugging Face's
    patterns: dict[int, torch.Tensor] = {}

    def wrapped(layer: int, head: int | None):
        plain = type(attentions[layer])._attn.__get__(attentions[layer])

        def attn(query, key, value, attention_mask=None):
            output, weights = plain(query, key, value, attention_mask)
            if head is None:
                patterns[layer] = weights
                return output, weights
            weights = weights.clone()
            weights[:, head] = patterns[layer][:, head]
            return torch.matmul(weights, value), weights

        return attn

    values = torch.zeros(len(attentions), model.cfg.n_heads)
    with torch.no_grad():
        try:
            for layer, attention in enumerate(attentions):  # record the source's patterns
                attention._attn = wrapped(layer, None)
            model.original_model(source)
            for attention in attentions:
                del attention._attn
            for layer, attention in enumerate(attentions):
                for head in range(model.cfg.n_heads):
                    attention._attn = wrapped(layer, head)
                    values[layer, head] = METRIC(model.original_model(base).logits, batch=batch)
                    del attention._attn
        finally:
            for attention in attentions:
                attention.__dict__.pop("_attn", None)
    return values


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_gpt_neo_pattern_patching_equals_patching_hugging_faces_attention(
    gpt_neo, batch, direction
) -> None:
    """GPT-Neo's bridge (a plain `AttentionBridge` around Hugging Face's attention) hands
    hook_pattern the pattern after using it, so TransformerLens's pattern patching there
    changes nothing and the hook engine refuses; the incremental engine computes the
    pattern itself (unscaled scores, the local layer's 3-key window) and patches it: equal
    to replacing each head's pattern inside Hugging Face's attention."""
    assert not pattern_hook_takes_effect(gpt_neo)
    with pytest.raises(ValueError, match="target 'pattern' cannot be patched on this model"):
        patch(gpt_neo, batch, "pattern", METRIC, progress=False, engine="hooks")
    ours = patch(gpt_neo, batch, "pattern", METRIC, direction=direction, progress=False)
    expected = _gpt_neo_pattern_reference(gpt_neo, batch, direction)
    assert ours.values.std() > 1e-3
    torch.testing.assert_close(ours.values, expected, atol=1e-4, rtol=0)
