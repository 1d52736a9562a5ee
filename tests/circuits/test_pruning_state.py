"""Tests for circuits.pruning_state against full edge-patched forward passes
(`EdgePatcher.run`), the definition of a circuit's output."""

from __future__ import annotations

import pytest
import torch

from circuits.edge_patching import EdgePatcher
from circuits.evaluate import circuit_kl
from circuits.pruning_state import PruningState
from interp import models
from interp.metrics import logit_diff, mean_metric
from interp.tasks.base import TaskBatch

SHAPES = {
    "mlp_causal": dict(n_layers=3, d_model=24, n_heads=3, d_vocab=20, n_ctx=8),
    "attn_only": dict(n_layers=3, d_model=24, n_heads=3, d_vocab=20, n_ctx=8, attn_only=True),
    "bidirectional": dict(
        n_layers=2, d_model=32, n_heads=2, d_vocab=20, n_ctx=8, attention="bidirectional"
    ),
}


def _batch() -> TaskBatch:
    generator = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 20, (4, 7), generator=generator)
    return TaskBatch(
        clean=clean,
        corrupted=torch.randint(0, 20, (4, 7), generator=generator),
        answer=torch.tensor([1, 2, 3, 4]),
        wrong=torch.tensor([5, 6, 7, 8]),
        position=torch.tensor([6, 3, 6, 4]),  # reads at different positions, none at the end
    )


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_removals_in_any_order_match_full_edge_patched_passes(shape: str, ablation: str) -> None:
    model = models.build(dict(SHAPES[shape], seed=3), device="cpu")
    patcher, batch = EdgePatcher(model), _batch()
    state = PruningState(patcher, batch, ablation)  # type: ignore[arg-type]
    assert state.damage == pytest.approx(0.0, abs=1e-6)
    mask = torch.ones(patcher.n_edges)
    order = torch.randperm(patcher.n_edges, generator=torch.Generator().manual_seed(0))
    for step, edge in enumerate(order[: patcher.n_edges // 2].tolist()):
        trial = state.trial(edge)
        mask[edge] = 0.0
        if step % 3 == 2:  # kept after all: the state must not have moved
            mask[edge] = 1.0
            expected = circuit_kl(patcher, batch, mask[None], ablation=ablation)  # type: ignore[arg-type]
            assert state.damage == pytest.approx(expected.item(), abs=1e-5)
            continue
        expected = circuit_kl(patcher, batch, mask[None], ablation=ablation)  # type: ignore[arg-type]
        assert trial.damage == pytest.approx(expected.item(), abs=1e-5), (step, edge)
        state.commit(trial)
    assert state.damage > 0.01  # half the edges gone: the check above was not vacuous


def test_task_metric_damage_is_the_distance_from_the_full_model() -> None:
    model = models.build(dict(SHAPES["mlp_causal"], seed=3), device="cpu")
    patcher, batch = EdgePatcher(model), _batch()
    metric = mean_metric(logit_diff)
    state = PruningState(patcher, batch, "resample", metric)
    mask = torch.ones(1, patcher.n_edges)
    mask[0, -5:] = 0.0  # the last edges: into the logits
    for edge in range(patcher.n_edges - 5, patcher.n_edges):
        state.commit(state.trial(edge))
    (full, circuit) = patcher.evaluate(batch, torch.cat([torch.ones_like(mask), mask]), metric)
    assert state.damage == pytest.approx(abs(circuit - full).item(), abs=1e-5)


@pytest.mark.parametrize("names", [["logits"], ["L2H1.v", "L2H0.q", "L2H2.k"]])
def test_a_metric_objective_reads_a_batch_of_trials_in_one_call(names: list[str]) -> None:
    """A speculative batch's trials go to the metric as one `[trial, batch, pos, vocab]`
    buffer in one vectorised call (it ran once per trial, its ops and the buffer's fill
    each time): each trial's damage is still |m(circuit) - m(full)| of full edge-patched
    passes."""
    model = models.build(dict(SHAPES["mlp_causal"], seed=3), device="cpu")
    patcher, batch = EdgePatcher(model), _batch()
    calls: list[tuple[int, ...]] = []

    def metric(logits: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        calls.append(tuple(logits.shape))  # under vmap: once per call, one copy's shape
        return mean_metric(logit_diff)(logits, batch)

    state = PruningState(patcher, batch, "resample", metric)
    edges = [edge for name in names for edge in _incoming(patcher, name)[:4]]
    calls.clear()
    trials = state.trials(edges)
    assert len(calls) == 1, calls
    masks = torch.ones(len(edges) + 1, patcher.n_edges)
    for j, edge in enumerate(edges):
        masks[j + 1 :, edge] = 0.0  # row j + 1: trial j, without edges 0..j
    full, *circuits = patcher.evaluate(batch, masks, metric).tolist()
    for trial, value in zip(trials, circuits, strict=True):
        assert trial.damage == pytest.approx(abs(value - full), abs=1e-5)
    assert max(trial.damage for trial in trials) > 1e-3  # the check was not vacuous
    state.commit(trials[-1])
    calls.clear()
    assert state.trial(_incoming(patcher, "mlp0")[0]).damage >= 0.0
    assert len(calls) == 1  # one trial: one plain call


def test_a_metric_reading_other_positions_is_refused() -> None:
    model = models.build(dict(SHAPES["mlp_causal"], seed=3), device="cpu")

    def every_position(logits: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        return logits.mean()

    with pytest.raises(ValueError, match="the metric read logits at positions other than "
                                         "batch.position, which incremental ACDC does not "
                                         "compute; run acdc with incremental=False"):
        PruningState(EdgePatcher(model), _batch(), "resample", every_position)

    def top_token_at_0(logits: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        """A comparison, through which NaN does not pass."""
        return (logits[:, 0].argmax(-1) == batch.answer).float()

    batch = _batch()
    assert 0 not in batch.position  # no example reads position 0
    with pytest.raises(ValueError, match="the metric read logits at positions other than"):
        PruningState(EdgePatcher(model), batch, "resample", top_token_at_0)


def _incoming(patcher: EdgePatcher, name: str) -> list[int]:
    """Edges into destination `name`, latest source first (ACDC's order)."""
    graph = patcher.graph
    return [i for i, edge in enumerate(graph.edges) if edge.destination.name == name][::-1]


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_batch_of_trials_is_the_chain_of_sequential_removals(shape: str) -> None:
    """Trial j of `trials(edges)` removes edges 0..j: its damage is the j-th of sequential
    trial-and-commit steps and of a full pass; committing it leaves the state those steps
    leave."""
    model = models.build(dict(SHAPES[shape], seed=3), device="cpu")
    patcher, batch = EdgePatcher(model), _batch()
    last = SHAPES[shape]["n_layers"] - 1
    names = ["logits", f"L{last}H1.q", f"L{last}H0.v", "L0H1.k"]  # read rows, all rows
    if "attn_only" not in SHAPES[shape] and shape != "bidirectional":
        names += [f"mlp{last}", "mlp0"]  # the last MLP reads last-block heads at reads only
    ours = PruningState(patcher, batch, "resample")
    sequential = PruningState(patcher, batch, "resample")
    mask = torch.ones(patcher.n_edges)
    for name in names:
        edges = _incoming(patcher, name)[:6]
        trials = ours.trials(edges)
        accepted = min(2, len(edges) - 1)  # the state moves on by the first removals only
        assert [trial.edge for trial in trials] == edges
        for j, (edge, trial) in enumerate(zip(edges, trials, strict=True)):
            assert trial.earlier == tuple(edges[:j])
            mask[edge] = 0.0
            full = circuit_kl(patcher, batch, mask[None], ablation="resample")
            assert trial.damage == pytest.approx(full.item(), abs=1e-5), (name, j)
            if j <= accepted:
                step = sequential.trial(edge)
                assert trial.damage == pytest.approx(step.damage, abs=1e-5), (name, j)
                sequential.commit(step)
        mask[edges[accepted + 1 :]] = 1.0
        ours.commit(trials[accepted])
        assert ours.damage == pytest.approx(sequential.damage, abs=1e-6)
        assert (ours.kept == sequential.kept).all()
    # the committed states agree on what follows: every further test
    for edge in range(0, patcher.n_edges, 7):
        assert ours.trial(edge).damage == pytest.approx(sequential.trial(edge).damage, abs=1e-5)
    assert ours.damage > 1e-3  # removals happened: the checks were not vacuous


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_trials_across_a_blocks_heads_with_edges_assumed_kept(shape: str) -> None:
    """One batch over edges into several q / k / v inputs of one block, some assumed kept:
    trial j removes edge j and the earlier edges not assumed kept, and equals a full
    edge-patched pass of that circuit; committing one leaves the state of sequential
    commits of those removals."""
    model = models.build(dict(SHAPES[shape], seed=3), device="cpu")
    patcher, batch = EdgePatcher(model), _batch()
    last = SHAPES[shape]["n_layers"] - 1
    cases = [  # the last block holds its queries at the read rows only
        [f"L{layer}H1.v", f"L{layer}H1.q", f"L{layer}H0.k", f"L{layer}H1.k"]
        for layer in sorted({0, last})
    ]
    for names in [*cases, ["logits"]]:  # and one destination alone
        per_name = 6 // len(names) + 1
        edges = [edge for name in names for edge in _incoming(patcher, name)[:per_name]]
        assume_kept = [j % 3 == 1 for j in range(len(edges))]
        ours = PruningState(patcher, batch, "resample")
        trials = ours.trials(edges, assume_kept)
        removed: list[int] = []
        for j, (edge, trial) in enumerate(zip(edges, trials, strict=True)):
            assert trial.earlier == tuple(removed), (names, j)
            mask = torch.ones(patcher.n_edges)
            mask[[*removed, edge]] = 0.0
            full = circuit_kl(patcher, batch, mask[None], ablation="resample")
            assert trial.damage == pytest.approx(full.item(), abs=1e-5), (names, j)
            if not assume_kept[j]:
                removed.append(edge)
        chosen = trials[-2]
        sequential = PruningState(patcher, batch, "resample")
        for edge in (*chosen.earlier, chosen.edge):
            sequential.commit(sequential.trial(edge))
        ours.commit(chosen)
        assert ours.damage == pytest.approx(sequential.damage, abs=1e-6)
        assert (ours.kept == sequential.kept).all()
        for edge in range(0, patcher.n_edges, 5):  # every further test agrees
            assert ours.trial(edge).damage == pytest.approx(
                sequential.trial(edge).damage, abs=1e-5
            )
        assert ours.damage > 1e-4  # removals happened: the checks were not vacuous


def test_trials_of_several_stages_are_refused() -> None:
    model = models.build(dict(SHAPES["mlp_causal"], seed=3), device="cpu")
    patcher = EdgePatcher(model)
    state = PruningState(patcher, _batch(), "resample")
    message = "into one destination, or into the q, k and v inputs of heads of one block"
    for names in (["logits", "mlp2"], ["L2H0.q", "L1H0.q"], ["L2H0.q", "mlp2"]):
        edges = [_incoming(patcher, name)[0] for name in names]
        with pytest.raises(ValueError, match=message):
            state.trials(edges)
    with pytest.raises(ValueError, match=message):
        state.trials([])
    with pytest.raises(ValueError, match="one flag per edge"):
        state.trials(_incoming(patcher, "logits")[:2], [True])
