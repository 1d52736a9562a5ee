"""probes.lbfgs on problems whose minimisers are known in closed form."""

from __future__ import annotations

import torch

from probes.lbfgs import minimise


def test_each_row_reaches_its_own_quadratic_minimiser() -> None:
    """f_i(x) = 1/2 x^T A_i x - b_i^T x, minimised at A_i^{-1} b_i; the rows have very
    different conditioning, and one starts at its minimiser (it must not move)."""
    generator = torch.Generator().manual_seed(0)
    batch, p = 4, 6
    q, _ = torch.linalg.qr(torch.randn(batch, p, p, generator=generator, dtype=torch.float64))
    spectra = torch.stack([torch.logspace(0, k, p, dtype=torch.float64) for k in (0, 1, 2, 3)])
    a = q @ torch.diag_embed(spectra) @ q.transpose(1, 2)
    b = torch.randn(batch, p, generator=generator, dtype=torch.float64)
    solution = torch.linalg.solve(a, b)
    start = torch.zeros(batch, p, dtype=torch.float64)
    start[0] = solution[0]
    evaluated_rows: list[list[int]] = []

    def objective(x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        evaluated_rows.append(rows.tolist())
        ax = torch.einsum("kij,kj->ki", a[rows], x)
        return 0.5 * (x * ax).sum(1) - (b[rows] * x).sum(1), ax - b[rows]

    found = minimise(objective, start, max_iter=200, tolerance_grad=1e-10, tolerance_change=0.0)
    assert (found - solution).abs().max() < 1e-6, (found - solution).abs().amax(1)
    assert torch.equal(found[0], solution[0])
    # row 0 was never searched: it was done from the start
    assert all(0 not in rows for rows in evaluated_rows[1:])


def test_a_row_stops_on_its_own_while_others_go_on() -> None:
    """Rows converge independently: late evaluations cover only the rows still moving."""
    scales = torch.tensor([1.0, 1000.0], dtype=torch.float64)
    counts = torch.zeros(2, dtype=torch.long)

    def objective(x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        counts[rows] += 1
        s = scales[rows, None]
        # a badly scaled 2-d quadratic for row 1, a round one for row 0
        weights = torch.cat([torch.ones_like(s), s], dim=1)
        return 0.5 * (weights * (x - 1) ** 2).sum(1), weights * (x - 1)

    found = minimise(objective, torch.zeros(2, 2, dtype=torch.float64), tolerance_grad=1e-9)
    assert torch.allclose(found, torch.ones(2, 2, dtype=torch.float64), atol=1e-8)
    assert counts[0] < counts[1]
