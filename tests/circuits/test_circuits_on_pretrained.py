"""The fast engines on pretrained bridges (random ones written locally,
`tests/pretrained_models.py`). GPT-2: activation patching against TransformerLens's own
functions on the same bridge; edge patching, EAP and ACDC against the same weights in a
native model, whose results the other tests check against references. GPT-NeoX
(Pythia's rotary, parallel architecture) and Llama and Qwen2 (RMSNorm, gated MLPs,
grouped keys and values), which no native model has: activation patching against
TransformerLens on the bridge, edge patching against the model and against activation
patching, EAP against the derivative of edge patching, incremental ACDC against full
edge-patched passes."""

from __future__ import annotations

import pytest
import torch
from pretrained_models import native_twin
from test_patching import METRIC, REFERENCES, reference

from circuits.acdc import acdc
from circuits.attribution import attribute
from circuits.eap import edge_attribution
from circuits.edge_patching import EdgePatcher
from circuits.patching import incremental, patch
from circuits.path_patching import path_patch_senders


@pytest.fixture(scope="module")
def twin(gpt2):
    return native_twin(gpt2)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("target", sorted(set(REFERENCES) - {"pattern"}))
def test_incremental_patching_matches_transformer_lens(gpt2, batch, target, direction) -> None:
    assert incremental.supports(gpt2)  # so engine="auto" takes it
    result = patch(gpt2, batch, target, METRIC, direction=direction, max_batch=7,
                   progress=False)
    expected = reference(gpt2, batch, target, direction)
    assert result.values.std() > 1e-3  # the patches really change the metric
    torch.testing.assert_close(result.values, expected.float(), atol=1e-4, rtol=0)


def test_pattern_patching_runs_through_the_incremental_engine(gpt2, twin, batch) -> None:
    """GPT-2's bridge fires hook_pattern after the attention used it, so hooks cannot patch
    it there (refused); the incremental engine computes the pattern itself and equals
    TransformerLens's patching on the native model with the same weights."""
    with pytest.raises(ValueError, match="target 'pattern' cannot be patched on this model"):
        patch(gpt2, batch, "pattern", METRIC, progress=False, engine="hooks")
    ours = patch(gpt2, batch, "pattern", METRIC, progress=False)
    expected = reference(twin, batch, "pattern", "denoise")
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


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("target", sorted(set(REFERENCES) - {"resid_mid"}))
def test_neox_incremental_patching_matches_transformer_lens(neox, batch, target,
                                                            direction) -> None:
    assert incremental.supports(neox)
    result = patch(neox, batch, target, METRIC, direction=direction, max_batch=7,
                   progress=False)
    expected = reference(neox, batch, target, direction)
    assert result.values.std() > 1e-3
    torch.testing.assert_close(result.values, expected.float(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("target", sorted(REFERENCES))
def test_llama_family_incremental_patching_matches_transformer_lens(request, batch, kind,
                                                                    target) -> None:
    """Grouped keys and values: k and v are patched per key head (as TransformerLens's
    functions index them), each feeding every query head of its group."""
    model = request.getfixturevalue(kind)
    assert incremental.supports(model)
    result = patch(model, batch, target, METRIC, max_batch=7, progress=False)
    expected = reference(model, batch, target, "denoise")
    if target in ("k", "v"):
        assert result.values.shape == (2, 2)  # layers x key heads
    assert result.values.std() > 1e-3
    torch.testing.assert_close(result.values, expected.float(), atol=1e-4, rtol=0)


def test_neox_has_no_resid_mid(neox, batch) -> None:
    for engine in ("incremental", "hooks"):
        with pytest.raises(ValueError, match="'resid_mid' does not exist in this model "
                                             r"\(its attention and MLP run in parallel\)"):
            patch(neox, batch, "resid_mid", METRIC, progress=False, engine=engine)


@pytest.mark.parametrize("kind", ["neox", "llama", "qwen2"])
def test_edge_patching_is_activation_patching(request, batch, kind) -> None:
    """Cutting every edge out of a head is noising its output; in GPT-NeoX's parallel
    blocks the MLP reads its block's input, not its heads."""
    model = request.getfixturevalue(kind)
    patcher = EdgePatcher(model)
    same_block = any(e.source.layer == e.destination.layer and e.destination.kind == "mlp"
                     for e in patcher.graph.edges)
    assert same_block != (kind == "neox")
    noised = patch(model, batch, "z", METRIC, direction="noise", progress=False).values
    for layer, head in [(0, 1), (1, 3)]:
        mask = torch.ones(1, patcher.n_edges)
        for edge in patcher.graph.edges:
            if edge.source.name == f"L{layer}H{head}":
                mask[0, patcher.graph.edge_index[edge.name]] = 0.0
        value = patcher.evaluate(batch, mask, METRIC)[0]
        assert value.item() == pytest.approx(noised[layer, head].item(), abs=1e-5)
