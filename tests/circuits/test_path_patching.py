"""Tests for circuits.path_patching: known paths of a hand-built model, identities with
activation patching on a random LayerNorm model, and the no-side-effects guarantees."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields

import pytest
import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from circuits.patching import patch
from circuits.path_patching import path_patch, path_patch_senders
from interp import functional, models
from interp.metrics import logit_diff, mean_metric
from interp.tasks.base import TaskBatch

METRIC = mean_metric(logit_diff)

# The hand-built model: one-hot tokens in T, each head writes its own subspace.
VOCAB = 6
D_HEAD = VOCAB
T, S_A, S_C, S_B, S_D = 0, 6, 12, 18, 24
MATCH_SCALE = 20.0  # head B's query-key gain: attends to positions holding its own token
UNEMBED_SCALE = 10.0


def _copy(weight: Tensor, rows: int, cols: int, scale: float = 1.0) -> None:
    """Write `scale * identity(VOCAB)` into `weight[rows : rows+VOCAB, cols : cols+VOCAB]`."""
    weight[rows : rows + VOCAB, cols : cols + VOCAB] = scale * torch.eye(VOCAB)


def _known_circuit_model() -> TransformerBridge:
    """Attention-only, no LayerNorm, 2 layers x 2 heads, every weight set by hand.

    Layer 0: head A (L0H0) and head C (L0H1) attend uniformly (zero queries and keys) and
    copy the token subspace T into S_A and S_C. Layer 1: head B (L1H0) attends to positions
    holding the same token as its own position (queries and keys read T) and copies S_A
    into S_B; head D (L1H1) attends uniformly and copies S_C into S_D. The unembedding reads
    S_B only, so the only paths to the logits are embed -> A -> B.v and embed -> B.q/k.
    """
    spec = dict(
        n_layers=2, d_model=32, n_heads=2, d_head=D_HEAD, d_vocab=VOCAB, n_ctx=8,
        attn_only=True, normalization=None, seed=0,
    )
    model = models.build(spec, device="cpu")
    params = {name: torch.zeros_like(t) for name, t in functional.params_of(model).items()}
    _copy(params["embed.weight"], 0, T)
    # Layer 0: value of head h reads T; the output writes head A into S_A, head C into S_C.
    _copy(params["blocks.0.attn.v.weight"], 0, T)
    _copy(params["blocks.0.attn.v.weight"], D_HEAD, T)
    _copy(params["blocks.0.attn.o.weight"], S_A, 0)
    _copy(params["blocks.0.attn.o.weight"], S_C, D_HEAD)
    # Layer 1: head B matches tokens and reads S_A into S_B; head D reads S_C into S_D.
    _copy(params["blocks.1.attn.q.weight"], 0, T, MATCH_SCALE)
    _copy(params["blocks.1.attn.k.weight"], 0, T)
    _copy(params["blocks.1.attn.v.weight"], 0, S_A)
    _copy(params["blocks.1.attn.v.weight"], D_HEAD, S_C)
    _copy(params["blocks.1.attn.o.weight"], S_B, 0)
    _copy(params["blocks.1.attn.o.weight"], S_D, D_HEAD)
    _copy(params["unembed.weight"], 0, S_B, UNEMBED_SCALE)
    functional.load_params(model, params)
    return model.eval()


def _known_batch(corrupted_rows: list[list[int]]) -> TaskBatch:
    """Prompts whose last token occurs only there; the metric reads the last position."""
    return TaskBatch(
        clean=torch.tensor([[1, 1, 1, 2, 3, 0], [2, 2, 5, 5, 5, 3]]),
        corrupted=torch.tensor(corrupted_rows),
        answer=torch.tensor([1, 5]),
        wrong=torch.tensor([4, 1]),
        position=torch.tensor([5, 5]),
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny forward passes run far faster on one thread (no pool spinning on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def known_model() -> TransformerBridge:
    return _known_circuit_model()


@pytest.fixture(scope="module")
def known_batch() -> TaskBatch:
    """Corruption swaps the counted tokens but never makes a position match the last
    token, so head B's attention at the read position is the same on both prompts."""
    return _known_batch([[4, 4, 4, 2, 3, 0], [2, 2, 1, 1, 1, 3]])


def _value(model: TransformerBridge, batch: TaskBatch, senders, receivers, **kwargs) -> float:
    return path_patch(model, batch, senders, receivers, METRIC, **kwargs).value


def test_known_circuit_has_a_large_effect(known_model, known_batch):
    result = path_patch(known_model, known_batch, ["L0H0"], ["L1H0.v"], METRIC)
    assert result.metric_clean - result.metric_corrupted > 1.0
    assert result.direction == "noise"
    assert float(result) == result.value
    assert result.normalised == pytest.approx(0.0, abs=1e-6)  # noise: the corrupted value


@pytest.mark.parametrize(
    ("senders", "receivers", "expected"),
    [
        (["L0H0"], ["L1H0.v"], "full"),  # A -> B.v carries the whole effect
        (["L1H0"], ["logits"], "full"),  # B -> logits too
        (["L0H0", "L0H1"], ["L1H0.v", "L1H1.v"], "full"),
        (["L0H1"], ["L1H0.v"], "none"),  # C writes nothing B's value reads
        (["L0H0"], ["logits"], "none"),  # A writes nothing the unembedding reads
        (["L0H0"], ["L1H0.q"], "none"),  # nor anything B's query reads
        (["L0H0"], ["L1H1.v"], "none"),  # D reads S_C only
        (["L1H1"], ["logits"], "none"),
        (["embed"], ["logits"], "none"),  # every head frozen: the tokens reach nothing
        (["embed"], ["L1H0.v"], "none"),  # only through A, which is frozen
        (["L0H0"], ["L0H1.v"], "none"),  # same layer: no path
    ],
)
@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_known_paths(known_model, known_batch, senders, receivers, expected, direction):
    """`full`: the path carries the whole effect of the corruption (the value is the
    source run's metric); `none`: it carries none (the base run's metric)."""
    result = path_patch(known_model, known_batch, senders, receivers, METRIC, direction=direction)
    clean, corrupted = result.metric_clean, result.metric_corrupted
    base, source = (clean, corrupted) if direction == "noise" else (corrupted, clean)
    assert result.value == pytest.approx(source if expected == "full" else base, abs=1e-5)


def test_known_paths_equal_activation_patching_where_there_is_one_route(known_model):
    """B's key reads only the tokens and B's value only A's output, so the paths
    embed -> B.k and A -> B.v are the only routes of those activations: path patching
    them equals activation patching of B's k and v, even when the corruption moves B's
    attention (position 4 turns into the last token)."""
    batch = _known_batch([[1, 1, 1, 2, 0, 0], [2, 2, 5, 3, 1, 3]])
    for direction in ("noise", "denoise"):
        k = patch(known_model, batch, "k", METRIC, direction=direction, progress=False)
        v = patch(known_model, batch, "v", METRIC, direction=direction, progress=False)
        embed_k = path_patch(known_model, batch, ["embed"], ["L1H0.k"], METRIC, direction=direction)
        a_v = path_patch(known_model, batch, ["L0H0"], ["L1H0.v"], METRIC, direction=direction)
        assert embed_k.value == pytest.approx(float(k.values[1, 0]), abs=1e-5)
        assert a_v.value == pytest.approx(float(v.values[1, 0]), abs=1e-5)
        assert abs(embed_k.value - embed_k.metric_clean) > 0.1  # a real path here
        assert _value(known_model, batch, ["L0H0"], ["L1H0.k"], direction=direction) == (
            pytest.approx(a_v.metric_clean if direction == "noise" else a_v.metric_corrupted)
        )


def test_known_sender_sweep(known_model, known_batch):
    result = path_patch_senders(
        known_model, known_batch, ["L1H0.v"], METRIC, normalise=True, progress=False
    )
    assert result.axes == ("layer", "head")
    assert result.method == "path"
    assert result.target == "path->L1H0.v"
    assert result.direction == "noise"
    expected = torch.tensor([[0.0, 1.0], [1.0, 1.0]])  # normalised: only A carries the effect
    torch.testing.assert_close(result.values, expected, atol=1e-5, rtol=0)
    to_logits = path_patch_senders(
        known_model, known_batch, ["logits"], METRIC, direction="denoise", normalise=True,
        progress=False,
    )
    expected = torch.tensor([[0.0, 0.0], [1.0, 0.0]])  # denoise: only B -> logits restores
    torch.testing.assert_close(to_logits.values, expected, atol=1e-5, rtol=0)


# --- the random LayerNorm model of conftest.py (2 layers, 4 heads, MLPs) ---------------


@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_last_layer_head_to_logits_is_activation_patching_of_z(model, batch, direction):
    activation = patch(model, batch, "z", METRIC, direction=direction, progress=False)
    paths = path_patch_senders(
        model, batch, ["logits"], METRIC, direction=direction, progress=False
    )
    torch.testing.assert_close(paths.values[1], activation.values[1], atol=1e-5, rtol=0)
    assert paths.metric_clean == pytest.approx(activation.metric_clean, abs=1e-6)
    assert paths.metric_corrupted == pytest.approx(activation.metric_corrupted, abs=1e-6)
    # Layer-0 heads also act through layer-1 heads in activation patching, not here.
    assert (paths.values[0] - activation.values[0]).abs().max() > 1e-4
    single = path_patch(model, batch, ["L1H2"], ["logits"], METRIC, direction=direction)
    assert single.value == pytest.approx(float(activation.values[1, 2]), abs=1e-5)


@pytest.mark.parametrize("receivers", [["logits"], ["L1H0.q"], ["L0H3.v", "L1H1.k"], ["mlp1"]])
@pytest.mark.parametrize("freeze_mlps", [False, True])
def test_no_senders_gives_the_base_metric_exactly(model, batch, receivers, freeze_mlps):
    noised = path_patch(model, batch, [], receivers, METRIC, freeze_mlps=freeze_mlps)
    assert noised.value == noised.metric_clean
    denoised = path_patch(
        model, batch, [], receivers, METRIC, direction="denoise", freeze_mlps=freeze_mlps
    )
    assert denoised.value == denoised.metric_corrupted


def _logits_with_hook(model, tokens, name, fn) -> Tensor:
    with torch.inference_mode(), model.hooks(fwd_hooks=[(name, fn)]):
        return model(tokens)


def test_embed_to_logits_with_everything_frozen_moves_only_the_embedding(model, batch):
    """With every head and MLP frozen, the final residual is the base one plus the change
    of the embedding: a reference that needs no path patching."""
    with torch.inference_mode():
        _, clean = model.run_with_cache(batch.clean)
        _, corrupted = model.run_with_cache(batch.corrupted)
    shift = corrupted["blocks.0.hook_resid_pre"] - clean["blocks.0.hook_resid_pre"]
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    logits = _logits_with_hook(model, batch.clean, last, lambda act, hook: act + shift)
    expected = float(METRIC(logits, batch))
    value = path_patch(model, batch, ["embed"], ["logits"], METRIC, freeze_mlps=True)
    assert value.value == pytest.approx(expected, abs=1e-5)
    assert abs(value.value - value.metric_clean) > 1e-3


def test_last_mlp_to_logits_is_activation_patching_of_its_output(model, batch):
    with torch.inference_mode():
        _, corrupted = model.run_with_cache(batch.corrupted)
    source = corrupted["blocks.1.hook_mlp_out"]
    logits = _logits_with_hook(model, batch.clean, "blocks.1.hook_mlp_out", lambda a, hook: source)
    assert _value(model, batch, ["mlp1"], ["logits"]) == pytest.approx(
        float(METRIC(logits, batch)), abs=1e-5
    )


@pytest.mark.parametrize(
    ("receivers", "first_unreachable_layer"),
    [(["L1H0.v", "L1H2.k"], 1), (["mlp1"], 2), (["mlp0"], 1)],
)
def test_sweep_agrees_with_single_paths_and_max_batch(
    model, batch, receivers, first_unreachable_layer
):
    freeze_mlps = receivers == ["mlp1"]
    kwargs = dict(direction="denoise", freeze_mlps=freeze_mlps, progress=False)
    wide = path_patch_senders(model, batch, receivers, METRIC, **kwargs)
    narrow = path_patch_senders(model, batch, receivers, METRIC, max_batch=4, **kwargs)  # 1/pass
    torch.testing.assert_close(narrow.values, wide.values, atol=1e-5, rtol=0)
    for layer, head in [(0, 1), (0, 3), (1, 2)]:
        single = path_patch(
            model, batch, [f"L{layer}H{head}"], receivers, METRIC,
            direction="denoise", freeze_mlps=freeze_mlps,
        )
        assert single.value == pytest.approx(float(wide.values[layer, head]), abs=1e-5)
    base = wide.metric_corrupted  # denoise: the base run is the corrupted one
    reachable = wide.values[:first_unreachable_layer]
    assert bool(((reachable - base).abs() > 1e-6).all())
    assert bool((wide.values[first_unreachable_layer:] == base).all())


def test_sweep_normalises(model, batch):
    raw = path_patch_senders(model, batch, ["L1H1.q"], METRIC, progress=False)
    scaled = path_patch_senders(model, batch, ["L1H1.q"], METRIC, normalise=True, progress=False)
    expected = (raw.values - raw.metric_corrupted) / (raw.metric_clean - raw.metric_corrupted)
    torch.testing.assert_close(scaled.values, expected)
    assert scaled.normalised and not raw.normalised
    assert torch.allclose(scaled.values[1], torch.ones(4))  # noise: base = clean = 1


# --- guarantees ------------------------------------------------------------------------


def _attached_hooks(model: TransformerBridge) -> int:
    return sum(len(point._forward_hooks) for point in model.hook_dict.values())


def _batch_snapshot(batch: TaskBatch) -> dict[str, Tensor]:
    tensors = {f.name: getattr(batch, f.name) for f in fields(batch)}
    return {name: tensor.clone() for name, tensor in tensors.items() if tensor is not None}


def test_hooks_removed_and_training_flag_restored_when_the_metric_raises(model, batch):
    calls = []

    def failing(logits: Tensor, batch: TaskBatch) -> Tensor:
        calls.append(1)
        if len(calls) > 2:  # the base and source runs pass, the patched run fails
            raise RuntimeError("metric failed")
        return METRIC(logits, batch)

    before = _attached_hooks(model)
    model.train()
    try:
        with pytest.raises(RuntimeError, match="metric failed"):
            path_patch(model, batch, ["L0H1"], ["L1H0.k"], failing)
        assert model.training
        calls.clear()
        with pytest.raises(RuntimeError, match="metric failed"):
            path_patch_senders(model, batch, ["logits"], failing, progress=False)
        assert model.training
    finally:
        model.eval()
    assert _attached_hooks(model) == before


def test_training_flag_and_batch_untouched(model, batch):
    snapshot = _batch_snapshot(batch)
    model.train()
    try:
        path_patch(model, batch, ["L0H0", "embed", "mlp0"], ["L1H3.q", "mlp1"], METRIC)
        assert model.training
        path_patch_senders(model, batch, ["L1H0.v"], METRIC, progress=False)
        assert model.training
    finally:
        model.eval()
    path_patch_senders(model, batch, ["logits"], METRIC, progress=False)
    assert not model.training
    for name, tensor in snapshot.items():
        assert torch.equal(getattr(batch, name), tensor)
    assert _attached_hooks(model) == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, b: path_patch(m, b, ["L0H0"], [], METRIC), "at least one receiver"),
        (lambda m, b: path_patch(m, b, ["L0H0"], ["logits", "mlp1"], METRIC), "cannot be combined"),
        (lambda m, b: path_patch(m, b, "L0H0", ["logits"], METRIC), "list of node names"),
        (lambda m, b: path_patch(m, b, ["L0H0"], ["logits"], METRIC, direction="up"), "direction"),
        (lambda m, b: path_patch_senders(m, b, ["logits"], METRIC, max_batch=0), "max_batch"),
        (lambda m, b: path_patch(m, b.clean, ["L0H0"], ["logits"], METRIC), "TaskBatch"),
    ],
)
def test_bad_arguments(model, batch, call, message):
    with pytest.raises(ValueError, match=message) as error:
        call(model, batch)
    assert "\n" not in str(error.value)


# --- a pretrained bridge ---------------------------------------------------------------


def test_minilm_sweep_smoke(minilm):
    clean = torch.tensor([[101, 1996, 4937, 2938, 2006, 102], [101, 1037, 3899, 2001, 2182, 102]])
    corrupted = clean.clone()
    corrupted[:, 2] = torch.tensor([3899, 4937])
    batch = TaskBatch(
        clean=clean, corrupted=corrupted, answer=torch.tensor([4937, 3899]),
        wrong=torch.tensor([3899, 4937]), position=torch.tensor([2, 2]),
    )
    result = path_patch_senders(minilm, batch, ["L1H0.q"], METRIC, progress=False)
    n_layers, n_heads = minilm.cfg.n_layers, minilm.cfg.n_heads
    assert result.values.shape == (n_layers, n_heads)
    assert len(result.labels[1]) == n_heads
    assert bool((result.values[1:] == result.metric_clean).all())  # cannot reach L1H0
    assert (result.values[0] - result.metric_clean).abs().max() > 1e-4
    for receivers in (["L1H0.q"], ["mlp2"], ["L3H7.k", "L4H1.v"]):
        empty = path_patch(minilm, batch, [], receivers, METRIC)
        assert empty.value == empty.metric_clean
    to_mlp = path_patch(minilm, batch, ["L0H0", "embed"], ["mlp0"], METRIC, direction="denoise")
    assert abs(to_mlp.value - to_mlp.metric_corrupted) > 1e-4
    single = path_patch(minilm, batch, ["L0H5"], ["L1H0.q"], METRIC)
    assert single.value == pytest.approx(float(result.values[0, 5]), abs=1e-3)
