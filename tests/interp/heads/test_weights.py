"""Weight scores: hand-built composition and copying heads with known scores, agreement
with TransformerLens's composition scores and a brute-force eigen-decomposition."""

from __future__ import annotations

import pytest
import torch

from interp import models
from interp.functional import load_params, params_of
from interp.heads.weights import (
    COMPOSITION_KINDS,
    HeadComposition,
    HeadWeights,
    composition_scores,
    copying_scores,
    full_ov_eigenvalues,
    head_composition,
    head_weights,
)
from interp.runs import RunStore

D_MODEL, D_HEAD, N_HEADS = 32, 4, 2


def _attn_only(d_vocab: int = 20, seed: int = 0, **extra: object):
    spec = dict(
        n_layers=2,
        d_model=D_MODEL,
        n_heads=N_HEADS,
        d_head=D_HEAD,
        d_vocab=d_vocab,
        n_ctx=8,
        attn_only=True,
        normalization=None,
        seed=seed,
    )
    spec.update(extra)
    return models.build(spec, device="cpu")


def _set_head(params: dict, layer: int, head: int, name: str, per_head: torch.Tensor) -> None:
    """Write one head's [d_model, d_head] W_Q/W_K/W_V or [d_head, d_model] W_O."""
    rows = slice(head * D_HEAD, (head + 1) * D_HEAD)
    weight = params[f"blocks.{layer}.attn.{name}.weight"]
    if name == "o":
        weight[:, rows] = per_head.T
    else:
        weight[rows] = per_head.T


def _unit(dim: int) -> torch.Tensor:
    """[d_model, d_head] reading (or, transposed, writing) one residual direction."""
    matrix = torch.zeros(D_MODEL, D_HEAD)
    matrix[dim, 0] = 1.0
    return matrix


def test_k_composition_of_a_planted_pair_is_exact_and_above_baseline() -> None:
    model = _attn_only()
    params = params_of(model)
    # head A = (0, 0): reads direction 1, writes direction 10 (rank-1 OV)
    _set_head(params, 0, 0, "v", _unit(1))
    _set_head(params, 0, 0, "o", 3.0 * _unit(10).T)
    # head B = (1, 1): keys read direction 10, queries direction 3 (rank-1 QK)
    _set_head(params, 1, 1, "k", 2.0 * _unit(10))
    _set_head(params, 1, 1, "q", _unit(3))
    load_params(model, params)
    before = {name: t.clone() for name, t in model.state_dict().items()}

    result = head_composition(model, baseline_samples=8, seed=0)
    k_scores = result.scores["K"]
    # W_OV^A W_QK^B^T = 6 e1 e3^T: rank one and aligned, so exactly 1
    torch.testing.assert_close(k_scores[0, 0, 1, 1], torch.tensor(1.0))
    others = k_scores.clone()
    others[0, 0, 1, 1] = float("nan")
    assert k_scores[0, 0, 1, 1] > others[~others.isnan()].max() + 0.2  # the max, by far
    assert k_scores[0, 0, 1, 1] > result.baseline_mean["K"] + 5 * result.baseline_std["K"]
    assert k_scores[0, 0, 1, 1] > 3 * result.baseline_mean["K"]
    # B's queries read direction 3, which A does not write: no Q-composition
    assert result.scores["Q"][0, 0, 1, 1].abs() < 1e-6
    # only layer 0 -> layer 1 pairs exist
    for kind in COMPOSITION_KINDS:
        scores = result.scores[kind]
        assert scores[1].isnan().all() and scores[0, :, 0].isnan().all()
        assert not scores[0, :, 1].isnan().any()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_copying_head_scores_one_and_negating_head_zero() -> None:
    model = _attn_only(d_vocab=D_MODEL)
    params = params_of(model)
    params["embed.weight"] = torch.eye(D_MODEL)
    params["unembed.weight"] = torch.eye(D_MODEL)
    reads = torch.eye(D_MODEL)[:, 4 : 4 + D_HEAD]  # [d_model, d_head]: directions 4..7
    _set_head(params, 0, 0, "v", reads)
    _set_head(params, 0, 0, "o", reads.T)  # W_OV = projection: copies tokens 4..7
    _set_head(params, 0, 1, "v", reads)
    _set_head(params, 0, 1, "o", -reads.T)  # W_OV = -projection: suppresses them
    load_params(model, params)
    weights = head_weights(model)
    scores = copying_scores(weights)
    signed = copying_scores(weights, signed=True)
    torch.testing.assert_close(scores[0], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(signed[0], torch.tensor([1.0, -1.0]))
    assert ((scores[1] > 0) & (scores[1] < 1)).all()  # random heads: in between


def test_copying_equals_brute_force_eigenvalues_of_the_full_ov_circuit() -> None:
    weights = head_weights(_attn_only(d_vocab=24, seed=1))
    full = weights.W_E.double() @ weights.W_V.double() @ weights.W_O.double()
    eigenvalues = torch.linalg.eigvals(full @ weights.W_U.double())  # [L, H, d_vocab]
    positive = eigenvalues.real.clamp_min(0).sum(-1) / eigenvalues.abs().sum(-1)
    torch.testing.assert_close(copying_scores(weights), positive.float())
    # the d_head small eigenvalues are the largest of the d_vocab ones
    small = full_ov_eigenvalues(weights).abs().sort(dim=-1, descending=True).values
    large = eigenvalues.abs().sort(dim=-1, descending=True).values[..., :D_HEAD]
    torch.testing.assert_close(small, large)


def test_composition_matches_transformer_lens() -> None:
    model = _attn_only(seed=2, n_layers=3)
    weights = head_weights(model)
    for kind in COMPOSITION_KINDS:
        ours = composition_scores(weights, kind)
        reference = model.all_composition_scores(kind).scores.detach()
        downstream = ~ours.isnan()
        torch.testing.assert_close(ours[downstream], reference[downstream])
        assert (reference[~downstream] == 0).all()


def test_native_weights_equal_bridge_properties_and_fold_layer_norm() -> None:
    model = models.build(
        dict(n_layers=2, d_model=16, n_heads=2, d_vocab=12, n_ctx=8, seed=4), device="cpu"
    )
    params = params_of(model)
    params["blocks.1.ln1.weight"] = torch.full((16,), 2.0)
    load_params(model, params)
    raw = head_weights(model)
    for name in ("W_Q", "W_K", "W_V", "W_O", "W_E", "W_U"):
        torch.testing.assert_close(getattr(raw, name), getattr(model, name).detach())
    folded = head_weights(model, fold_layer_norm=True)
    torch.testing.assert_close(folded.W_Q[1], 2.0 * raw.W_Q[1])
    scale = params["ln_final.weight"][:, None]
    torch.testing.assert_close(folded.W_U, scale * raw.W_U)


@pytest.mark.parametrize("which", ["gpt2", "neox", "llama", "qwen2", "qwen3", "gemma"])
def test_pretrained_weights_equal_bridge_properties_and_fold_layer_norm(request, which) -> None:
    """Pretrained models are read in the native layout (GPT-2's Conv1D weights transposed,
    Llama's grouped key and value heads repeated for each query head of their group): the
    same matrices as TransformerLens's own properties of the bridge."""
    model = request.getfixturevalue(which)
    raw = head_weights(model)
    for name in ("W_Q", "W_K", "W_V", "W_O", "W_E", "W_U"):
        theirs = getattr(model, name).detach()
        if name in ("W_K", "W_V"):  # [layer, kv_head, d_model, d_head]
            theirs = theirs.repeat_interleave(model.cfg.n_heads // theirs.shape[1], dim=1)
        torch.testing.assert_close(getattr(raw, name), theirs)
    folded = head_weights(model, fold_layer_norm=True)
    params = params_of(model)
    offset = 1.0 if which == "gemma" else 0.0  # Gemma's norms scale by 1 + weight
    ln1, ln_final = (offset + params[name] for name in ("blocks.1.ln1.weight", "ln_final.weight"))
    assert (ln1 - 1).abs().max() > 0.1  # the test models' norms are not all ones
    for name in ("W_Q", "W_K", "W_V"):
        torch.testing.assert_close(getattr(folded, name)[1], ln1[:, None] * getattr(raw, name)[1])
    torch.testing.assert_close(folded.W_U, ln_final[:, None] * raw.W_U)
    torch.testing.assert_close(folded.W_O, raw.W_O)


def test_pretrained_bridge_exposes_per_head_weights(minilm) -> None:
    weights = head_weights(minilm)
    assert weights.W_Q.shape == (6, 12, 384, 32) and weights.W_O.shape == (6, 12, 32, 384)
    with pytest.raises(ValueError, match="only supported for pre-norm models"):
        head_weights(minilm, fold_layer_norm=True)


def test_composition_save_load_and_frame(tmp_path) -> None:
    result = head_composition(_attn_only(seed=5), baseline_samples=2, seed=1)
    frame = result.to_frame()
    assert len(frame) == 3 * N_HEADS * N_HEADS  # one downstream layer pair
    assert set(frame["kind"]) == {"Q", "K", "V"} and (frame["later_layer"] == 1).all()
    with RunStore(tmp_path).create("heads", kind="test", config={}, seed=0) as run:
        result.save(run)
    loaded = HeadComposition.load(run.path)
    assert loaded.baseline_mean == result.baseline_mean
    for kind in COMPOSITION_KINDS:
        torch.testing.assert_close(loaded.scores[kind], result.scores[kind], equal_nan=True)
    again = head_composition(_attn_only(seed=5), baseline_samples=2, seed=1)
    assert again.baseline_mean == result.baseline_mean  # seeded


def test_bad_weights_raise() -> None:
    good = head_weights(_attn_only())
    with pytest.raises(ValueError, match="W_O"):
        HeadWeights(good.W_Q, good.W_K, good.W_V, good.W_Q, good.W_E, good.W_U)
    with pytest.raises(ValueError, match="kind"):
        composition_scores(good, "X")  # type: ignore[arg-type]
    non_square = HeadWeights(good.W_Q, good.W_K, good.W_V, good.W_O, good.W_E, good.W_U[:, :5])
    with pytest.raises(ValueError, match="d_vocab"):
        copying_scores(non_square)
