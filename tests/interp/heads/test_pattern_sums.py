"""The pattern-score engine: its per-layer sums and counts, read through one matrix
product, against the direct forms."""

from __future__ import annotations

import pytest
import torch

from interp.heads.pattern_sums import _detector_sums, _layer_sums, _target_matrix, _targets


@pytest.mark.parametrize("exclude", [(False, False), (True, True)])
def test_matrix_product_sums_equal_the_direct_detector_sums(exclude: tuple[bool, bool]) -> None:
    """`_layer_sums` reads every mask through one matrix product; the detector "mul" scores
    it gives equal the direct elementwise form of `_detector_sums`, padding included."""
    generator = torch.Generator().manual_seed(5)
    n = 12
    logits = torch.randn(3, 2, n, n, generator=generator)
    pattern = torch.softmax(logits.masked_fill(torch.ones(n, n).triu(1).bool(), -1e9), -1)
    tokens = torch.randint(0, 5, (3, n), generator=generator)
    valid = torch.ones(3, n, dtype=torch.bool)
    valid[0, 9:] = False
    targets = _targets(tokens, valid, torch.tensor([2]), causal=True)
    detector = (*exclude, "mul")
    via_matrix = _layer_sums(pattern, targets, _target_matrix(targets, (-1, 0), detector), detector)
    direct = _detector_sums(pattern.double(), targets, *detector)
    for name, (total, count) in direct.items():
        torch.testing.assert_close(via_matrix[name][0], total)
        torch.testing.assert_close(via_matrix[name][1], count)
    # the offset profile at -1 is the previous-token mass over the same queries
    profile_at_minus_one = via_matrix["offset_profile"][0][:, 0]
    torch.testing.assert_close(profile_at_minus_one, via_matrix["previous_token"][0])
