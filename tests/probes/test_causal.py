"""Tests for probes.causal: interventions along directions, LEACE, and their effect on a model.

Known answers: projections checked against their definition on hand-made vectors; LEACE
against its guarantee (zero cross-covariance, no linear probe beats chance); and a
one-layer attention-only model without normalisation, whose logits are exactly
`resid_post @ W_U + b_U`, so removing W_U's column space leaves only `b_U`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import replace

import pytest
import torch
from torch import Tensor

from interp.metrics import logit_diff
from interp.models import ModelSpec, build
from interp.tasks.base import TaskBatch
from probes.causal import (
    Intervention,
    InterventionResult,
    LeaceEraser,
    add_along,
    intervention_effect,
    orthonormal_basis,
    project_out,
    run_with_intervention,
    set_along,
)
from probes.linear import fit_probes

HOOK = "blocks.0.hook_resid_post"
D_MODEL, D_VOCAB, N_CTX = 32, 8, 6


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -- directions


def test_project_out_removes_the_span_and_nothing_else() -> None:
    acts, basis = _randn(4, 5, 16), _randn(16, 3, seed=1)
    out = project_out(acts, basis)
    assert out.shape == acts.shape
    assert (out @ basis).abs().max() < 1e-12  # orthogonal to every basis vector
    assert torch.allclose(project_out(out, basis), out, atol=1e-12)  # idempotent
    # a vector of the orthogonal complement is left as it is
    complement = out[0, 0]
    assert torch.allclose(project_out(complement[None], basis)[0], complement, atol=1e-12)
    # the removed part lies in the span: acts - out = basis @ c for some c
    removed = (acts - out).reshape(-1, 16)
    coefficients = torch.linalg.lstsq(basis, removed.T).solution
    assert torch.allclose(basis @ coefficients, removed.T, atol=1e-10)


def test_project_out_by_hand_and_rank_deficient_bases() -> None:
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    e1, e2 = torch.eye(3, dtype=torch.float64)[:, :1], torch.eye(3, dtype=torch.float64)[:, 1:2]
    assert torch.equal(project_out(x, 5 * e1), torch.tensor([0.0, 2.0, 3.0], dtype=torch.float64))
    # [e1, e1, e2] has rank 2: QR without pivoting would invent a third direction
    deficient = torch.cat([e1, e1, e2], dim=1)
    assert orthonormal_basis(deficient).shape == (3, 2)
    assert torch.allclose(project_out(x, deficient), torch.tensor([0.0, 0.0, 3.0]).double())
    basis = _randn(10, 2, seed=2)
    dependent = torch.cat([basis, basis @ _randn(2, 3, seed=3)], dim=1)  # rank 2, 5 columns
    acts = _randn(7, 10, seed=4)
    assert torch.allclose(project_out(acts, dependent), project_out(acts, basis), atol=1e-10)
    assert orthonormal_basis(torch.zeros(4, 2)).shape == (4, 0)
    assert torch.equal(project_out(acts[:, :4], torch.zeros(4, 2)), acts[:, :4])


def test_edits_of_integer_activations_are_refused() -> None:
    ints, e1 = torch.tensor([[1, 2, 3]]), torch.eye(3)[:, :1]
    # the same edit on floats has a known answer; on integers it used to return the input
    assert torch.equal(project_out(ints.float(), e1), torch.tensor([[0.0, 2.0, 3.0]]))
    edits = [
        lambda: project_out(ints, e1),
        lambda: set_along(ints, e1[:, 0], 0.0),
        lambda: add_along(ints, e1[:, 0], 1.0),
    ]
    for edit in edits:
        with pytest.raises(ValueError, match="acts must be floating point, got torch.int64"):
            edit()


def test_set_and_add_along_on_hand_made_vectors() -> None:
    x = torch.tensor([[3.0, 4.0, 0.0], [1.0, 3.0, 0.0]], dtype=torch.float64)
    out = set_along(x, torch.tensor([2.0, 0.0, 0.0]), 5.0)
    assert torch.allclose(out, torch.tensor([[5.0, 4.0, 0.0], [5.0, 3.0, 0.0]]).double())
    # along (1, 1, 0)/sqrt(2): [1, 3, 0] has component 4/sqrt(2); setting it to 0 leaves [-1, 1, 0]
    zeroed = set_along(x[1], torch.tensor([1.0, 1.0, 0.0]), 0.0)
    assert torch.allclose(zeroed, torch.tensor([-1.0, 1.0, 0.0]).double())
    added = add_along(x, torch.tensor([0.0, 0.0, 3.0]), 2.0)
    assert torch.allclose(added, torch.tensor([[3.0, 4.0, 2.0], [1.0, 3.0, 2.0]]).double())


@pytest.mark.parametrize(
    "intervention",
    [
        Intervention("project_out", basis=_randn(16, 2, seed=5)),
        Intervention("set", direction=_randn(16, seed=6), value=3.0),
        Intervention("add", direction=_randn(16, seed=7), alpha=-2.0),
        Intervention("erase", eraser=LeaceEraser.fit(_randn(50, 16), torch.arange(50) % 3)),
    ],
    ids=lambda i: i.kind,
)
def test_positions_are_respected_and_input_untouched(intervention: Intervention) -> None:
    acts = _randn(3, 5, 16, seed=8)
    original = acts.clone()
    everywhere = intervention.apply(acts)
    assert torch.equal(acts, original)
    assert not torch.equal(everywhere, acts)
    assert torch.allclose(everywhere, intervention.edit(acts.reshape(-1, 16)).reshape(acts.shape))
    per_example = torch.tensor([0, 4, 2])
    for positions, edited in [(1, [1, 1, 1]), (-1, [4, 4, 4]), (per_example, [0, 4, 2])]:
        out = replace(intervention, positions=positions).apply(acts)
        assert torch.equal(acts, original)
        for row, col in enumerate(edited):
            assert torch.allclose(out[row, col], everywhere[row, col], atol=1e-12)
            keep = [c for c in range(5) if c != col]
            assert torch.equal(out[row, keep], acts[row, keep])  # bit-identical


# -- LEACE


def _planted(n: int = 600, d: int = 16, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Gaussian features with `3 * (+-1)` added along a random unit direction per class."""
    x, labels = _randn(n, d, seed=seed), torch.arange(n) % 2
    direction = _randn(d, seed=seed + 1)
    x += 3.0 * (2 * labels - 1).double()[:, None] * direction / direction.norm()
    return x.float(), labels


def test_leace_zeroes_the_cross_covariance() -> None:
    x, labels = _planted()
    real_z = x.double() @ _randn(16, 2, seed=9) + _randn(600, 2, seed=10)
    for z, onehot in [(labels, torch.nn.functional.one_hot(labels).double()), (real_z, real_z)]:
        eraser = LeaceEraser.fit(x, z)
        erased = eraser(x)
        assert erased.dtype == x.dtype and erased.shape == x.shape
        xc, zc = erased.double() - erased.double().mean(0), onehot - onehot.mean(0)
        before = (x.double() - x.double().mean(0)).T @ zc / len(x)
        assert before.abs().max() > 0.5
        assert (xc.T @ zc / len(x)).abs().max() < 1e-6
        assert eraser.rank == (1 if z is labels else 2)
        assert torch.allclose(eraser(erased), erased, atol=1e-5)  # idempotent


def test_leace_with_a_singular_covariance() -> None:
    x, labels = _planted()
    x = torch.cat([x, x[:, :2] + x[:, 2:4], torch.zeros(len(x), 1)], dim=1).double()
    erased = LeaceEraser.fit(x, labels)(x)
    onehot = torch.nn.functional.one_hot(labels).double()
    cross = (erased - erased.mean(0)).T @ (onehot - onehot.mean(0)) / len(x)
    assert cross.abs().max() < 1e-9
    assert torch.equal(erased[:, -1], x[:, -1])  # the constant feature is left alone


def test_leace_takes_a_linear_probe_to_chance() -> None:
    x, labels = _planted()
    before = fit_probes(x[None], labels, backend="torch")
    assert before.test_score[0] > 0.95
    after = fit_probes(LeaceEraser.fit(x, labels)(x)[None], labels, backend="torch")
    assert after.test_score[0] < 0.62
    assert after.train_score[0] < 0.62


def test_leace_leaves_uncorrelated_data_alone() -> None:
    x, z = _randn(400, 12, seed=11), _randn(400, 1, seed=12)
    zc = z - z.mean(0)
    x -= zc @ torch.linalg.lstsq(zc, x - x.mean(0)).solution  # now exactly uncorrelated
    eraser = LeaceEraser.fit(x, z)
    assert eraser.rank == 0
    assert torch.allclose(eraser(x), x, atol=1e-12)


def test_leace_bad_input() -> None:
    with pytest.raises(ValueError, match="x must be"):
        LeaceEraser.fit(torch.zeros(5), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="z must be"):
        LeaceEraser.fit(torch.zeros(5, 3), torch.zeros(4, dtype=torch.long))
    eraser = LeaceEraser.fit(_randn(20, 4), torch.arange(20) % 2)
    with pytest.raises(ValueError, match="d=4"):
        eraser(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="proj_left"):
        LeaceEraser(torch.zeros(4), torch.zeros(4, 1), torch.zeros(1, 3))


# -- on a model


@pytest.fixture(scope="module")
def model():
    spec = ModelSpec(
        n_layers=1,
        d_model=D_MODEL,
        n_heads=4,
        d_vocab=D_VOCAB,
        n_ctx=N_CTX,
        normalization=None,
        attn_only=True,
        seed=3,
    )
    return build(spec, device="cpu").eval()


def _batch(n: int = 5) -> TaskBatch:
    tokens = torch.randint(0, D_VOCAB, (n, N_CTX), generator=torch.Generator().manual_seed(0))
    return TaskBatch(
        clean=tokens,
        corrupted=tokens.flip(0),
        answer=tokens[:, 0],
        wrong=tokens[:, 1],
        position=torch.arange(n) % N_CTX,
    )


def test_intervention_effect_refuses_a_batch_the_model_cannot_run(model) -> None:
    good = _batch()
    bad = TaskBatch(clean=good.clean + D_VOCAB, corrupted=good.corrupted, answer=good.answer,
                    wrong=good.wrong, position=good.position)
    edit = Intervention("project_out", model.W_U.detach())
    with pytest.raises(ValueError, match=r"TaskBatch.clean spans \d+..\d+, outside 0..7"):
        intervention_effect(model, bad, HOOK, edit, max_logit_gap)


def max_logit_gap(logits: Tensor, batch: TaskBatch) -> Tensor:
    """Per example: top logit minus the mean logit at `batch.position`."""
    final = logits[torch.arange(len(batch)), batch.position]
    return final.max(-1).values - final.mean(-1)


def test_projecting_out_the_unembedding_leaves_the_bias(model) -> None:
    tokens = _batch().clean
    original = tokens.clone()
    with torch.no_grad():
        plain = model(tokens)
        w_u, b_u = model.W_U.detach(), model.b_U.detach()
        removed = run_with_intervention(model, tokens, HOOK, Intervention("project_out", w_u))
        generator = torch.Generator().manual_seed(0)
        control = Intervention("project_out", w_u).random_like(generator)
        assert control.basis.shape == (D_MODEL, D_VOCAB)
        randomised = run_with_intervention(model, tokens, HOOK, control)
        after = model(tokens)
    assert torch.equal(tokens, original)
    assert torch.allclose(removed, b_u.expand_as(removed), atol=1e-5)
    assert (plain - b_u).abs().max() > 0.1
    assert (randomised - plain).norm() < 0.75 * (removed - plain).norm()
    assert torch.equal(after, plain)  # the hook is gone


def test_per_example_positions_at_a_hook(model) -> None:
    tokens, positions = _batch(3).clean, torch.tensor([5, 0, 2])
    with torch.no_grad():
        plain = model(tokens)
        edit = Intervention("project_out", model.W_U.detach(), positions=positions)
        out = run_with_intervention(model, tokens, HOOK, edit)
    for row, col in enumerate(positions.tolist()):
        assert torch.allclose(out[row, col], model.b_U.detach(), atol=1e-5)
        keep = [c for c in range(N_CTX) if c != col]
        assert torch.equal(out[row, keep], plain[row, keep])


def test_intervention_effect_reports_before_after_and_controls(model) -> None:
    batch = _batch()
    edit = Intervention("project_out", model.W_U.detach())
    result = intervention_effect(model, batch, HOOK, edit, max_logit_gap, n_random=4, seed=1)
    with torch.no_grad():
        plain = model(batch.clean)
    assert result.before == pytest.approx(float(max_logit_gap(plain, batch).mean()), rel=1e-6)
    assert result.before > 0.1
    assert result.after == pytest.approx(0.0, abs=1e-5)  # every logit equals b_U = 0
    assert len(result.random_values) == 4
    assert result.random_mean == pytest.approx(statistics.fmean(result.random_values))
    assert result.random_std == pytest.approx(statistics.stdev(result.random_values))
    assert result.after < result.random_mean < result.before
    assert result.effect == pytest.approx(result.after - result.before)
    again = intervention_effect(model, batch, HOOK, edit, max_logit_gap, n_random=4, seed=1)
    assert again == result
    other = intervention_effect(model, batch, HOOK, edit, max_logit_gap, n_random=4, seed=2)
    assert other.random_values != result.random_values
    row = result.to_frame()
    assert len(row) == 1 and row.loc[0, "after"] == result.after and row.loc[0, "n_random"] == 4
    assert result.to_dict()["random_values"] == list(result.random_values)
    assert math.isnan(
        intervention_effect(model, batch, HOOK, edit, max_logit_gap, n_random=0).random_mean
    )
    assert isinstance(result, InterventionResult) and result.metric == "max_logit_gap"
    # a task metric: the logit difference is exactly 0 once every logit equals b_U = 0
    by_task = intervention_effect(model, batch, HOOK, edit, logit_diff, n_random=2)
    with torch.no_grad():
        assert by_task.before == pytest.approx(float(logit_diff(plain, batch).mean()), rel=1e-6)
    assert by_task.after == pytest.approx(0.0, abs=1e-5) and by_task.metric == "logit_diff"


def test_random_controls_keep_rank_and_norm() -> None:
    generator = torch.Generator().manual_seed(0)
    basis = torch.cat([_randn(16, 2), _randn(16, 2)], dim=1)  # rank 2
    control = Intervention("project_out", basis).random_like(generator)
    assert orthonormal_basis(control.basis).shape == (16, 2)
    direction = 5.0 * _randn(16, seed=1)
    moved = Intervention("add", direction=direction, alpha=1.0).random_like(generator)
    assert moved.direction.norm() == pytest.approx(float(direction.norm()))
    assert abs(float(moved.direction @ direction)) < float(direction.norm() ** 2)
    eraser = LeaceEraser.fit(_randn(60, 16), torch.arange(60) % 4)
    erase = Intervention("erase", eraser=eraser).random_like(generator)
    assert erase.eraser.rank == eraser.rank == 3
    q = erase.eraser.proj_left
    assert torch.allclose(q.T @ q, torch.eye(3, dtype=q.dtype), atol=1e-12)


def test_the_hook_is_removed_when_the_metric_or_the_hook_raises(model) -> None:
    batch = _batch()
    with torch.no_grad():
        plain = model(batch.clean)
    calls = []

    def failing(logits: Tensor, batch: TaskBatch) -> Tensor:
        calls.append(1)
        if len(calls) == 2:  # the first metric call after an intervention
            raise RuntimeError("metric failed")
        return max_logit_gap(logits, batch)

    edit = Intervention("project_out", model.W_U.detach())
    with pytest.raises(RuntimeError, match="metric failed"):
        intervention_effect(model, batch, HOOK, edit, failing)
    wrong_d = Intervention("add", direction=torch.ones(D_MODEL + 1), alpha=1.0)
    with pytest.raises(ValueError, match="d=33"):
        run_with_intervention(model, batch.clean, HOOK, wrong_d)
    with torch.no_grad():
        assert torch.equal(model(batch.clean), plain)
    assert not model.hook_dict[HOOK].fwd_hooks


def test_bad_input(model) -> None:
    tokens = _batch().clean
    edit = Intervention("add", direction=torch.ones(D_MODEL), alpha=1.0)
    with pytest.raises(ValueError, match="blocks.0.hook_nope"):
        run_with_intervention(model, tokens, "blocks.0.hook_nope", edit)
    with pytest.raises(ValueError, match="blocks.9.hook_resid_post"):
        intervention_effect(model, _batch(), "blocks.9.hook_resid_post", edit, max_logit_gap)
    with pytest.raises(ValueError, match="unknown intervention kind 'rotate'"):
        Intervention("rotate", direction=torch.ones(3))
    with pytest.raises(ValueError, match="needs `basis`"):
        Intervention("project_out", direction=torch.ones(3))
    with pytest.raises(ValueError, match="direction must be"):
        Intervention("set", direction=torch.ones(3, 1))
    with pytest.raises(ValueError, match="finite nonzero norm"):
        set_along(torch.ones(2, 3), torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="d=3"):
        project_out(torch.ones(2, 4), torch.ones(3, 1))
    with pytest.raises(ValueError, match="positions"):
        Intervention("add", direction=torch.ones(4), positions=7).apply(torch.ones(2, 5, 4))
    with pytest.raises(ValueError, match="positions"):
        Intervention("add", direction=torch.ones(4), positions=torch.ones(3)).apply(
            torch.ones(2, 5, 4)
        )
    with pytest.raises(ValueError, match=r"\[batch, pos, d\]"):
        edit.apply(torch.ones(2, D_MODEL))
    with pytest.raises(ValueError, match="n_random"):
        intervention_effect(model, _batch(), HOOK, edit, max_logit_gap, n_random=-1)


def test_activation_patterns_find_the_written_direction_not_the_read_one() -> None:
    """x = z * u + noise along v, where the noise is shared by the readout: the best linear
    readout of z subtracts the noise (weights lean on v), but z is written along u only."""
    from probes.causal import activation_patterns

    generator = torch.Generator().manual_seed(0)
    n = 4000
    z = torch.randn(n, 1, generator=generator, dtype=torch.float64)
    noise = torch.randn(n, 1, generator=generator, dtype=torch.float64)
    u, v = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), torch.tensor(
        [0.6, 0.8, 0.0], dtype=torch.float64
    )
    x = z * u + noise * v
    pattern = activation_patterns(x, z)[:, 0]
    assert torch.allclose(pattern / pattern.norm(), u, atol=0.05)
    # the least-squares readout is not along u: it cancels the noise through v's second axis
    # (gelsd, SVD-based: torch's default gelsy, on this rank-deficient x with its zero third
    # column, returned all-zero weights in a few calls of 300 on the CPU build we install)
    weights = torch.linalg.lstsq(x - x.mean(0), z - z.mean(0), driver="gelsd").solution[:, 0]
    assert abs(float(weights[1])) > 0.5
    # classes: the pattern of each one-hot column is the class mean minus the overall mean
    labels = torch.arange(n) % 2
    shifted = x + labels[:, None] * torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64)
    patterns = activation_patterns(shifted, labels)
    assert patterns.shape == (3, 2)
    assert float(patterns[2, 1]) == pytest.approx(0.5, abs=0.01)  # 2 * p(1 - p), p = 1/2
    with pytest.raises(ValueError, match="x must be a float tensor"):
        activation_patterns(torch.ones(3, dtype=torch.long), z[:3])
