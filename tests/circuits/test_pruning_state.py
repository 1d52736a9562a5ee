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


def test_a_metric_reading_other_positions_is_refused() -> None:
    model = models.build(dict(SHAPES["mlp_causal"], seed=3), device="cpu")

    def every_position(logits: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        return logits.mean()

    with pytest.raises(ValueError, match="reads logits away from batch.position"):
        PruningState(EdgePatcher(model), _batch(), "resample", every_position)
