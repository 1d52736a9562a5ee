"""Tests for circuits.patching: batched activation patching against TransformerLens's."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import pytest
import torch
from patching_reference import METRIC, REFERENCES, assert_no_hooks, hook_counts, reference
from torch import Tensor

from circuits.attribution import attribute
from circuits.patching import TARGETS, PatchingResult, patch
from circuits.patching.incremental import IncrementalPatcher
from interp import models
from interp.dispatch_count import count_dispatch, dispatch_of
from interp.metrics import logit_diff, normalise
from interp.runs import RunStore
from interp.tasks.base import TaskBatch


def test_every_target_has_a_reference() -> None:
    assert set(TARGETS) == set(REFERENCES)


@pytest.mark.parametrize("engine", ["incremental", "hooks"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("target", sorted(REFERENCES))
def test_matches_transformer_lens(model, batch, target, direction, engine) -> None:
    result = patch(
        model, batch, target, METRIC, direction=direction, max_batch=7, progress=False,
        engine=engine,
    )
    expected = reference(model, batch, target, direction)
    assert result.values.shape == expected.shape
    assert result.values.std() > 1e-4  # the patches really change the metric
    torch.testing.assert_close(result.values, expected.cpu().float(), atol=1e-4, rtol=0)
    assert result.axes[0] == "layer" and len(result.axes) == result.values.ndim
    assert_no_hooks(model)


@pytest.mark.parametrize("engine", ["incremental", "hooks"])
@pytest.mark.parametrize("target", ["resid_pre", "attn_out", "z_by_pos", "q_by_pos"])
def test_max_batch_does_not_change_values(model, batch, target, engine) -> None:
    """Chunks of several indices (for the incremental engine, copies patched at different
    positions of one pass) give each index the values of a pass of its own."""

    def run(max_batch: int) -> Tensor:
        return patch(
            model, batch, target, METRIC, max_batch=max_batch, progress=False, engine=engine
        ).values

    one = run(1)
    torch.testing.assert_close(one, run(1000), atol=1e-5, rtol=0)
    torch.testing.assert_close(one, run(15), atol=1e-5, rtol=0)  # 5 indices per pass


VARIANTS = {
    "attn-only, no norm": dict(attn_only=True, normalization=None),
    "RMS, solu_ln": dict(normalization="RMS", act_fn="solu_ln", d_mlp=48),
    "LNPre, relu, 3 layers": dict(normalization="LNPre", act_fn="relu", n_layers=3),
    "rotary, RMS": dict(positional_embedding="rotary", normalization="RMS"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_incremental_engine_equals_hook_engine_on_model_variants(batch, variant) -> None:
    """The hook engine equals TransformerLens (above); the incremental engine must equal it
    for every architecture it accepts, every target, both directions."""
    spec = dict(n_layers=2, d_model=32, n_heads=4, d_vocab=20, n_ctx=8, seed=3)
    model = models.build(spec | VARIANTS[variant], device="cpu")
    for target in sorted(TARGETS):
        if model.cfg.attn_only and target in ("resid_mid", "mlp_out"):
            continue
        for direction in ("denoise", "noise"):
            fast, slow = (
                patch(
                    model, batch, target, METRIC, direction=direction, max_batch=30,
                    progress=False, engine=engine,
                )
                for engine in ("incremental", "hooks")
            )
            base = fast.metric_corrupted if direction == "denoise" else fast.metric_clean
            assert (fast.values - base).abs().max() > 1e-5, (target, direction)  # not a no-op
            torch.testing.assert_close(fast.values, slow.values, atol=1e-5, rtol=0)


@pytest.mark.parametrize("positions", [[5, 4, 6], [6, 3, 6]])
def test_head_targets_where_some_read_positions_come_before_the_first_difference(
    model, positions: list[int]
) -> None:
    """Head targets run the last layer at the read positions only; with clean and corrupted
    prompts equal up to position 5, a read before it is not recomputed, one from it on is
    (the rows of the cached last layer must still line up, also when the read positions
    are not one run, as 3 and 6)."""
    generator = torch.Generator().manual_seed(5)
    clean = torch.randint(0, 20, (3, 7), generator=generator)
    corrupted = clean.clone()
    corrupted[:, 5:] = (corrupted[:, 5:] + 9) % 20
    batch = TaskBatch(
        clean=clean,
        corrupted=corrupted,
        answer=torch.tensor([1, 2, 3]),
        wrong=torch.tensor([4, 5, 6]),
        position=torch.tensor(positions),
    )
    for target in ("z", "q", "k", "v", "pattern", "z_by_pos", "resid_pre"):
        fast, slow = (
            patch(model, batch, target, METRIC, max_batch=30, progress=False, engine=engine)
            for engine in ("incremental", "hooks")
        )
        assert (fast.values - fast.metric_corrupted).abs().max() > 1e-5, target
        torch.testing.assert_close(fast.values, slow.values, atol=1e-5, rtol=0)


def test_incremental_engine_refuses_metrics_that_read_other_positions(model, batch) -> None:
    def mean_over_positions(logits: Tensor, batch: TaskBatch) -> Tensor:
        return logits[:, :, 0].mean()

    with pytest.raises(ValueError, match="positions other than batch.position.*engine='hooks'"):
        patch(model, batch, "resid_pre", mean_over_positions, progress=False)
    hooks = patch(model, batch, "resid_pre", mean_over_positions, progress=False, engine="hooks")
    assert hooks.values.isfinite().all()

    def top_token_at_3(logits: Tensor, batch: TaskBatch) -> Tensor:
        """A comparison, through which NaN does not pass: `argmax` of a NaN row is its
        first NaN, so without a check the engine would return wrong numbers silently."""
        return (logits[:, 3].argmax(-1) == batch.answer).float().mean()

    assert 3 not in batch.position  # no example reads position 3
    with pytest.raises(ValueError, match="positions other than batch.position.*engine='hooks'"):
        patch(model, batch, "resid_pre", top_token_at_3, progress=False)
    compared = patch(model, batch, "resid_pre", top_token_at_3, progress=False,
                     engine="hooks")
    expected = reference(model, batch, "resid_pre", "denoise", metric=top_token_at_3)
    torch.testing.assert_close(compared.values, expected.float())


def test_hooks_attached_to_the_model_are_honoured_or_refused(model, batch) -> None:
    """The incremental engine and edge patching compute the model without its hooks: with
    a hook attached, engine="auto" takes the hook engine (equal to TransformerLens, which
    runs it), engine="incremental" and edge patching refuse in one line."""
    from circuits.edge_patching import EdgePatcher

    def silence_head(z: Tensor, hook) -> Tensor:
        z = z.clone()
        z[:, :, 0] = 0.0
        return z

    plain = patch(model, batch, "resid_pre", METRIC, progress=False)
    model.add_hook("blocks.1.attn.hook_z", silence_head, is_permanent=True)
    try:
        assert models.attached_hooks(model) == ["blocks.1.attn.hook_z"]
        hooked = patch(model, batch, "resid_pre", METRIC, progress=False)
        expected = reference(model, batch, "resid_pre", "denoise")
        torch.testing.assert_close(hooked.values, expected.float(), atol=1e-4, rtol=0)
        assert (hooked.values - plain.values).abs().max() > 1e-3  # the hook changes them
        with pytest.raises(ValueError, match=r"the model has hooks attached "
                                             r"\(blocks.1.attn.hook_z\), which "
                                             r"engine='incremental' would not run"):
            patch(model, batch, "resid_pre", METRIC, progress=False, engine="incremental")
        with pytest.raises(ValueError, match="which edge patching, EAP and ACDC would not run"):
            EdgePatcher(model)
    finally:
        model.reset_hooks(including_permanent=True)
    assert models.attached_hooks(model) == []


def test_pattern_patching_is_refused_where_the_hook_only_observes(minilm, minilm_batch) -> None:
    """On MiniLM (BERT) the bridge fires hook_pattern after the HF module used the pattern:
    TransformerLens's own pattern patching returns the unpatched metric for every head."""
    expected = reference(minilm, minilm_batch, "pattern", "denoise")
    assert expected.std() < 1e-5  # the silent no-op we refuse to reproduce
    with pytest.raises(ValueError, match="target 'pattern' cannot be patched on this model"):
        patch(minilm, minilm_batch, "pattern", METRIC, progress=False)
    with pytest.raises(ValueError, match="target 'pattern' cannot be patched on this model"):
        attribute(minilm, minilm_batch, "pattern", METRIC)


def test_incremental_engine_is_refused_where_it_does_not_apply(minilm, minilm_batch) -> None:
    with pytest.raises(ValueError, match="'incremental' cannot run here: .*model is a Bert"):
        patch(minilm, minilm_batch, "z", METRIC, progress=False, engine="incremental")


@pytest.mark.parametrize("engine", ["incremental", "hooks"])
def test_metric_that_vmap_cannot_run_gives_the_same_values(model, batch, engine) -> None:
    """Metrics are read on all copies of a pass at once (`torch.func.vmap`); one that vmap
    refuses (a Python branch on a value of the logits) falls back to one call per copy,
    saying so once per sweep (a warning naming vmap's exception), not once per pass."""

    def branching(logits: Tensor, batch: TaskBatch) -> Tensor:
        value = METRIC(logits, batch)
        return value if float(value) > -1e9 else value * 0  # float() is refused under vmap

    for target in ("resid_pre", "z"):
        plain, fallback = (
            _patch_recording_warnings(
                model, batch, target, metric, max_batch=9, progress=False, engine=engine
            )
            for metric in (METRIC, branching)
        )
        assert plain[1] == []
        (warning,) = fallback[1]  # several passes (3 copies each), one warning
        assert issubclass(warning.category, RuntimeWarning)
        assert "'branching' cannot run under torch.func.vmap (RuntimeError: " in str(
            warning.message
        )
        plain, fallback = plain[0], fallback[0]
        torch.testing.assert_close(fallback.values, plain.values, atol=1e-6, rtol=0)
        assert fallback.metric_clean == pytest.approx(plain.metric_clean, abs=1e-6)
        assert fallback.metric_corrupted == pytest.approx(plain.metric_corrupted, abs=1e-6)


def _patch_recording_warnings(*args, **kwargs) -> tuple[PatchingResult, list]:
    """`patch(*args, **kwargs)` and every warning it gave (none filtered out)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = patch(*args, **kwargs)
    return result, caught


@pytest.mark.parametrize("target", ["resid_pre", "z", "z_by_pos"])
def test_incremental_engine_runs_few_ops_and_no_sync_per_index(model, batch, target) -> None:
    """On a GPU small sweeps are bound by host-side dispatch: the metric is read once per
    pass of copies and no index waits for the device, so neither the op count nor the host
    syncs grow by a metric call per index (as they did: 724 and 532 ops with 51 and 39
    syncs here, against 320 and 266 with 5), and no tensor is made from host data (a
    blocking copy to the device; `z_by_pos` made two per layer here)."""
    with torch.inference_mode():
        with count_dispatch() as forward:
            model(batch.clean)
        patch(model, batch, target, METRIC, max_batch=300, progress=False)  # warm
        with count_dispatch() as counter:
            patch(model, batch, target, METRIC, max_batch=300, progress=False)
    assert counter.syncs <= 8, counter.syncs
    assert counter.ops <= 4 * forward.ops, (counter.ops, forward.ops)
    assert counter.by_op["lift_fresh"] == 0, counter.by_op  # torch.tensor of Python values


@pytest.mark.parametrize("target", ["z_by_pos", "q_by_pos", "v_by_pos", "resid_pre"])
def test_incremental_chunks_make_no_tensor_from_host_data(model, batch, target) -> None:
    """Chunks of by-position head targets index their copies' positions and heads with
    views of one index grid made per sweep, not with a tensor of Python values per chunk,
    on a GPU a blocking copy from the host (`z_by_pos` made one per chunk: 12 here), and
    the values stay those of the hook engine."""
    run = functools.partial(patch, model, batch, target, METRIC, max_batch=12, progress=False)
    with torch.inference_mode():
        counted = dispatch_of(run)  # 4 indices per chunk: 12 or more chunks
    assert counted.by_op["lift_fresh"] == 0, counted.by_op
    torch.testing.assert_close(run().values, run(engine="hooks").values, atol=1e-5, rtol=0)


def test_a_chunk_in_any_order_gives_each_index_its_own_logits(model, batch) -> None:
    """A chunk that does not run in row-major order (not one `patch` cuts) is indexed by
    tensors of its own values instead of views of the index grid: the same logits, in its
    order."""
    space = TARGETS["z_by_pos"]
    patcher = IncrementalPatcher(model, batch.corrupted, batch.clean, batch.position.tolist())
    chunk = [(0, pos, head) for pos in range(6) for head in range(4)][6:15]
    with torch.inference_mode():
        in_order = patcher.patched_logits(space, chunk)
        reversed_ = patcher.patched_logits(space, chunk[::-1])
    assert (in_order - in_order[:1]).abs().max() > 1e-4  # the copies differ
    torch.testing.assert_close(reversed_, in_order.flip(0), atol=1e-6, rtol=0)


def test_patch_resolves_the_architecture_and_checks_the_tokens_once(
    model, batch, monkeypatch
) -> None:
    """`patch` checks the batch (`TaskBatch.check_fits`) and resolves the architecture
    when it picks the engine; the incremental engine it builds does neither again."""
    from interp import functional

    calls: list[str] = []
    architecture_of, check_tokens = functional.architecture_of, functional.check_tokens

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(functional, "architecture_of", counted("arch", architecture_of))
    monkeypatch.setattr(functional, "check_tokens", counted("tokens", check_tokens))
    for engine in ("auto", "incremental"):
        calls.clear()
        patch(model, batch, "z", METRIC, progress=False, engine=engine)
        assert calls == ["arch"], (engine, calls)


def test_metric_of_wrong_shape_raises(model, batch) -> None:
    def per_position(logits: Tensor, batch: TaskBatch) -> Tensor:
        return logits[..., 0]

    with pytest.raises(ValueError, match="scalar or one value per example"):
        patch(model, batch, "resid_pre", per_position, progress=False)
    assert_no_hooks(model)


def test_clean_and_corrupted_metrics_and_normalisation(model, batch) -> None:
    raw = patch(model, batch, "resid_pre", METRIC, progress=False)
    with torch.no_grad():
        model.eval()
        clean = float(METRIC(model(batch.clean), batch))
        corrupted = float(METRIC(model(batch.corrupted), batch))
    assert raw.metric_clean == pytest.approx(clean, abs=1e-5)
    assert raw.metric_corrupted == pytest.approx(corrupted, abs=1e-5)
    # Denoising the whole residual stream at layer 0 restores the clean run everywhere it
    # is patched: positions that do not differ between clean and corrupted change nothing.
    assert raw.values[0, 0].item() == pytest.approx(corrupted, abs=1e-5)
    normed = patch(model, batch, "resid_pre", METRIC, normalise=True, progress=False)
    torch.testing.assert_close(normed.values, normalise(raw.values, clean, corrupted))
    noised = patch(model, batch, "resid_pre", METRIC, direction="noise", progress=False)
    assert noised.values[0, 0].item() == pytest.approx(clean, abs=1e-5)


def test_per_example_metric_is_averaged(model, batch) -> None:
    scalar = patch(model, batch, "attn_out", METRIC, progress=False)
    per_example = patch(model, batch, "attn_out", logit_diff, progress=False)
    torch.testing.assert_close(scalar.values, per_example.values)


def test_hooks_removed_and_mode_restored_after_metric_raises(model, batch) -> None:
    calls = []

    def failing(logits: Tensor, batch: TaskBatch) -> Tensor:
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("metric failed")
        return METRIC(logits, batch)

    model.train()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(RuntimeError, match="metric failed"):
                patch(model, batch, "z", failing, max_batch=6, progress=False)
        # a metric that fails is not one that vmap cannot run: its error, and no warning
        assert not [warning for warning in caught if "vmap" in str(warning.message)]
        assert model.training
    finally:
        model.eval()
    assert_no_hooks(model)


def test_inputs_are_not_modified(model, batch) -> None:
    before = {name: getattr(batch, name).clone() for name in ("clean", "corrupted", "answer")}
    patch(model, batch, "resid_post", METRIC, progress=False)
    for name, tensor in before.items():
        assert torch.equal(getattr(batch, name), tensor), name


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target="nope"), "unknown patching target"),
        (dict(direction="sideways"), "direction"),
        (dict(max_batch=0), "max_batch"),
        (dict(engine="fast"), "engine must be"),
    ],
)
def test_bad_arguments_raise_one_line(model, batch, kwargs, message) -> None:
    arguments = dict(target="resid_pre", direction="denoise", max_batch=8) | kwargs
    with pytest.raises(ValueError, match=message):
        patch(model, batch, metric=METRIC, progress=False, **arguments)


def test_frame_and_save_load_round_trip(model, batch, tmp_path: Path) -> None:
    result = patch(model, batch, "z_by_pos", METRIC, progress=False)
    frame = result.to_frame()
    assert len(frame) == result.values.numel()
    assert list(frame.columns) == [
        "layer",
        "layer_label",
        "pos",
        "pos_label",
        "head",
        "head_label",
        "value",
    ]
    row = frame.iloc[7]
    assert row["value"] == pytest.approx(
        result.values[row["layer"], row["pos"], row["head"]].item()
    )
    run = RunStore(tmp_path / "runs").create("exp", "patching", {"target": "z_by_pos"})
    result.save(run)
    loaded = PatchingResult.load(run.path)
    torch.testing.assert_close(loaded.values, result.values)
    assert loaded.axes == result.axes and loaded.labels == result.labels
    assert loaded.metric_clean == result.metric_clean and loaded.target == "z_by_pos"


@pytest.mark.parametrize(
    "target, direction",
    [(target, "denoise") for target in sorted(REFERENCES) if target != "pattern"]
    + [("resid_pre", "noise"), ("z", "noise")],
)
def test_matches_transformer_lens_on_minilm(minilm, minilm_batch, target, direction) -> None:
    before = hook_counts(minilm)
    result = patch(
        minilm,
        minilm_batch,
        target,
        METRIC,
        direction=direction,
        max_batch=16,
        tokenizer=minilm.tokenizer,
        progress=False,
    )
    assert hook_counts(minilm) == before
    expected = reference(minilm, minilm_batch, target, direction)
    torch.testing.assert_close(result.values, expected.cpu().float(), atol=1e-4, rtol=0)
    assert result.values.std() > 1e-4
    if target == "resid_pre":
        assert result.labels[1][0] == "0:[CLS]"
