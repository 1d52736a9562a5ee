"""Tests for circuits.acdc on cases whose answer is fixed by the threshold."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from circuits.acdc import ACDCResult, FullPassTests, acdc
from circuits.edge_patching import EdgePatcher
from circuits.evaluate import circuit_kl
from circuits.planted import PLANTED, planted
from circuits.pruning_state import PruningState
from interp.dispatch_count import count_dispatch
from interp.metrics import logit_diff, mean_metric
from interp.runs import RunStore


def test_threshold_bounds_keep_everything_or_nothing(model, batch) -> None:
    keep = acdc(model, batch, threshold=-1.0, progress=False)  # KL never drops by 1 nat
    assert bool(keep.kept.all()) and keep.n_tests == len(keep.graph)
    assert keep.damage == pytest.approx(0.0, abs=1e-6)
    drop = acdc(model, batch, threshold=float("inf"), progress=False)
    assert not bool(drop.kept.any())
    assert drop.n_tests < len(drop.graph)  # inputs of cut-off components go untested
    assert torch.isnan(drop.scores).sum() == len(drop.graph) - drop.n_tests


def test_damage_of_the_result_is_the_kl_of_its_circuit(model, batch, tmp_path: Path) -> None:
    result = acdc(model, batch, threshold=0.02, progress=False)
    assert 0 < len(result.edges) < len(result.graph)
    kl = circuit_kl(EdgePatcher(model), batch, result.kept.float()[None])
    assert result.damage == pytest.approx(kl.item(), abs=1e-5)
    tested = ~torch.isnan(result.scores)
    removed = tested & ~result.kept
    assert bool((result.scores[removed] < 0.02).all())  # removed: below tau when tested
    run = RunStore(tmp_path / "runs").create("exp", "acdc", {})
    result.save(run)
    again = ACDCResult.load(run.path)
    assert again.edges == result.edges and again.threshold == 0.02


def test_task_metric_objective(model, batch) -> None:
    result = acdc(model, batch, 0.05, objective=mean_metric(logit_diff), progress=False)
    assert result.objective == "mean_logit_diff"
    with pytest.raises(ValueError, match="objective must be 'kl' or a metric function"):
        acdc(model, batch, 0.05, objective="loss", progress=False)
    with pytest.raises(ValueError, match="threshold must be a number"):
        acdc(model, batch, "high", progress=False)  # type: ignore[arg-type]
    numpy = acdc(model, batch, np.float32(0.05), objective=mean_metric(logit_diff),
                 progress=False)
    assert numpy.edges == result.edges and numpy.threshold == pytest.approx(0.05)


@pytest.mark.parametrize("speculation", [1, 8])
@pytest.mark.parametrize("objective", ["kl", "metric"])
def test_incremental_acdc_finds_the_same_circuit_as_the_plain_loop(
    model, batch, objective, speculation
) -> None:
    """With speculation, a metric objective reads a batch's trials in one vectorised call
    (`PruningState`): the circuit and scores are still the plain loop's."""
    chosen = "kl" if objective == "kl" else mean_metric(logit_diff)
    fast = acdc(model, batch, 0.01, objective=chosen, progress=False, speculation=speculation)
    plain = acdc(model, batch, 0.01, objective=chosen, progress=False, incremental=False)
    assert torch.equal(fast.kept, plain.kept) and fast.n_tests == plain.n_tests
    torch.testing.assert_close(fast.scores, plain.scores, atol=1e-5, rtol=0, equal_nan=True)


@pytest.mark.parametrize(("kind", "speculation"), [("rotary", 4), ("neox", 1), ("neox", 8),
                                                   ("llama", 8), ("qwen2", 1), ("qwen3", 8),
                                                   ("gemma", 1), ("phi3", 4), ("gptj", 8),
                                                   ("opt", 1), ("gpt_neo", 8), ("phi", 4),
                                                   ("bloom", 4), ("bloom", 1),
                                                   ("mistral_windowed", 4), ("gemma2", 4),
                                                   ("gemma3", 1)])
def test_incremental_acdc_equals_the_plain_loop_on_each_architecture(
    request, batch, kind: str, speculation: int
) -> None:
    """Rotary models' queries (at the read positions in the last block) and keys rotated by
    position; GPT-NeoX's MLPs reading their block's input; Llama's and Qwen2's grouped key
    and value weights repeated per head: the same circuit, scores and tests as full
    edge-patched passes, and the damage is the KL of the circuit kept."""
    model = request.getfixturevalue(kind)
    fast = acdc(model, batch, 0.01, progress=False, speculation=speculation)
    plain = acdc(model, batch, 0.01, progress=False, incremental=False)
    assert 0 < int(fast.kept.sum()) < len(fast.graph)
    assert torch.equal(fast.kept, plain.kept) and fast.n_tests == plain.n_tests
    torch.testing.assert_close(fast.scores, plain.scores, atol=1e-5, rtol=0, equal_nan=True)
    kl = circuit_kl(EdgePatcher(model), batch, fast.kept.float()[None])
    assert fast.damage == pytest.approx(kl.item(), abs=1e-5)


@pytest.mark.parametrize("kind", ["model", "llama", "gemma2", "gemma3"])
def test_edges_dropped_untested_could_not_matter(request, batch, kind: str) -> None:
    """ACDC removes the incoming edges of a component that feeds nothing kept without
    testing them: restoring them must leave the circuit's output as it is. Under Gemma 2's
    and 3's norm after the attention a head feeding nothing still scales its block-mates'
    outputs, so its edges are dropped only once its whole block feeds nothing."""
    model = request.getfixturevalue(kind)
    result = acdc(model, batch, 0.03, progress=False, incremental=False)
    untested = ~result.kept & result.scores.isnan()
    assert untested.any() and result.kept.any()  # the check below has something to check
    masks = torch.stack([result.kept, result.kept | untested]).float()
    kl = circuit_kl(EdgePatcher(model), batch, masks)
    assert kl[1].item() == pytest.approx(kl[0].item(), abs=1e-7)


def test_plain_loop_edits_its_masks_on_the_models_device(model, batch) -> None:
    """`incremental=False` holds the circuit's mask on the model's device and makes each
    batch of trial masks there by scalar fills: no tensor made from host data (on a GPU a
    blocking copy per batch, and per commit)."""
    patcher = EdgePatcher(model)
    tests = FullPassTests(patcher, batch, "kl", "resample")
    measured: list[torch.Tensor] = []

    def measure(masks: torch.Tensor) -> list[float]:
        measured.append(masks.clone())
        return [0.0] * len(masks)

    tests.measure = measure
    with count_dispatch() as counted:
        trials = tests.trials([5, 3, 1], [False, True, False])
        tests.commit(trials[2])  # edge 1 and the earlier 5 (3 was assumed kept)
        tests.drop_untested([7, 8])
    assert counted.by_op["lift_fresh"] == counted.by_op["_to_copy"] == 0, counted.by_op
    assert tests.kept.device == measured[0].device == patcher.device
    removed = [[5], [3, 5], [1, 5]]  # sorted
    for mask, edges in zip(measured[0], removed, strict=True):
        assert torch.nonzero(mask == 0).flatten().tolist() == edges
    assert torch.nonzero(tests.kept == 0).flatten().tolist() == [1, 5, 7, 8]


# -- speculation ---------------------------------------------------------------------------


def _assert_same_result(ours: ACDCResult, sequential: ACDCResult) -> None:
    assert torch.equal(ours.kept, sequential.kept)
    torch.testing.assert_close(ours.scores, sequential.scores, atol=1e-5, rtol=0, equal_nan=True)
    assert ours.n_tests == sequential.n_tests
    assert ours.damage == pytest.approx(sequential.damage, abs=1e-5)


@pytest.mark.parametrize("speculation", [2, 3, 8, 64])
@pytest.mark.parametrize(("objective", "threshold"), [("kl", 0.003), ("metric", 0.01)])
def test_speculative_batches_give_the_sequential_circuit_and_scores(
    model, batch, speculation: int, objective: str, threshold: float
) -> None:
    chosen = "kl" if objective == "kl" else mean_metric(logit_diff)
    sequential = acdc(model, batch, threshold, objective=chosen, progress=False)
    assert sequential.speculation == 1 and sequential.n_trials == sequential.n_tests
    assert 0 < int(sequential.kept.sum()) < sequential.n_tests  # kept and removed, mixed
    ours = acdc(model, batch, threshold, objective=chosen, progress=False, speculation=speculation)
    _assert_same_result(ours, sequential)
    assert ours.speculation == speculation
    # edges were kept inside batches: speculative trials after them were discarded
    assert ours.n_trials > ours.n_tests


def test_speculation_on_the_plain_loop_runs_masks_as_one_batch(model, batch) -> None:
    sequential = acdc(model, batch, 0.003, progress=False)
    plain = acdc(model, batch, 0.003, progress=False, incremental=False, speculation=3)
    _assert_same_result(plain, sequential)
    assert plain.n_trials > plain.n_tests


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_speculation_finds_the_same_circuit_on_planted_models(name: str) -> None:
    case = planted(name)
    for threshold in (0.01, 0.3):
        run = functools.partial(
            acdc, case.model, case.batch, threshold, objective=mean_metric(logit_diff)
        )
        _assert_same_result(run(progress=False, speculation=16), run(progress=False))


def test_batches_span_a_blocks_heads_and_assume_the_measured_decisions(
    model, batch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A speculative batch runs over the inputs of all of a block's heads, and after a
    wrong assumption the next batch assumes kept the edges whose rise it measured above
    tau; the circuit and scores stay those of one test at a time."""
    batches: list[tuple[int, list[bool]]] = []
    trials = PruningState.trials

    def recorded(state: PruningState, edges, assume_kept=None):
        destinations = {int(state.edge_pairs[edge, 0]) for edge in edges}
        batches.append((len(destinations), list(assume_kept or [])))
        return trials(state, edges, assume_kept)

    sequential = acdc(model, batch, 0.003, progress=False)
    monkeypatch.setattr(PruningState, "trials", recorded)
    ours = acdc(model, batch, 0.003, progress=False, speculation=64)
    _assert_same_result(ours, sequential)
    assert len(batches) < sequential.n_tests / 3
    assert any(n_destinations > 1 for n_destinations, _ in batches)
    assert any(any(assumed) for _, assumed in batches)


@pytest.mark.parametrize("threshold", [-1.0, float("inf")])
def test_speculation_where_every_edge_is_kept_or_removed(model, batch, threshold) -> None:
    sequential = acdc(model, batch, threshold, progress=False)
    ours = acdc(model, batch, threshold, progress=False, speculation=16)
    _assert_same_result(ours, sequential)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "4"])
def test_bad_speculation_is_refused(model, batch, bad: object) -> None:
    with pytest.raises(ValueError, match="speculation must be an int >= 1"):
        acdc(model, batch, 0.01, progress=False, speculation=bad)  # type: ignore[arg-type]


def test_default_speculation_is_one_off_the_gpu(model, batch) -> None:
    assert acdc(model, batch, 0.003, progress=False).speculation == 1  # the model is on CPU
    plain = acdc(model, batch, 0.003, progress=False, incremental=False)
    assert plain.speculation == 1 and plain.n_trials == plain.n_tests


def test_speculation_and_trials_are_saved_and_old_results_load(
    model, batch, tmp_path: Path
) -> None:
    result = acdc(model, batch, 0.003, progress=False, speculation=4)
    run = RunStore(tmp_path / "runs").create("exp", "acdc", {})
    result.save(run)
    again = ACDCResult.load(run.path)
    assert (again.speculation, again.n_trials) == (4, result.n_trials)
    meta = run.load_json("acdc")  # as written before these fields existed
    del meta["speculation"], meta["n_trials"]
    run.save_json("acdc", meta)
    old = ACDCResult.load(run.path)
    assert (old.speculation, old.n_trials) == (1, result.n_tests)
