"""Role labels and groups of hand-built heads come out as constructed."""

from __future__ import annotations

import pytest
import torch

from interp.heads.patterns import HeadScores, pattern_scores
from interp.heads.roles import ROLE_NAMES, RoleThresholds, assign_roles, cluster_heads
from interp.heads.weights import HeadWeights, copying_scores

HALF = 6
EXPECTED_ROLES = [
    "previous_token,positional-1",  # head 0: exact previous token
    "first_token",  # head 1: always position 0
    "induction",  # head 2: the token after the earlier copy of the current one
    "",  # head 3: uniform
    "duplicate_token",  # head 4: the earlier copy of the current token
]


def _hand_scores(n_layers: int = 1) -> HeadScores:
    """Scores of 5 constructed heads per layer on tokens r + r (r distinct)."""
    n = 2 * HALF
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randperm(40, generator=generator)[:HALF] for _ in range(3)]
    tokens = torch.stack([torch.cat([r, r]) for r in rows])
    heads = torch.zeros(5, n, n)
    for q in range(n):
        heads[0, q, max(q - 1, 0)] = 1.0
        heads[1, q, 0] = 1.0
        heads[2, q, q - HALF + 1 if q >= HALF else q] = 1.0
        heads[3, q, : q + 1] = 1.0 / (q + 1)
        heads[4, q, q - HALF if q >= HALF else q] = 1.0
    patterns = heads[None, None].expand(3, n_layers, 5, n, n)
    return pattern_scores(patterns, tokens)


def test_roles_come_out_as_constructed() -> None:
    frame = assign_roles(_hand_scores())
    assert frame["roles"].tolist() == EXPECTED_ROLES
    assert frame["n_roles"].tolist() == [2, 1, 1, 0, 1]
    assert list(frame.columns[:4]) == ["layer", "head", "roles", "n_roles"]
    assert "induction" in frame.columns


def test_copying_column_and_threshold_overrides() -> None:
    copying = torch.tensor([[0.9, 0.1, 0.5, 0.8, float("nan")]])
    frame = assign_roles(_hand_scores(), copying=copying)
    assert frame["copying"].iloc[0] == pytest.approx(0.9)
    assert frame["roles"].tolist() == [
        "previous_token,positional-1,copying",
        "first_token",
        "induction",
        "copying",
        "duplicate_token",
    ]
    strict = RoleThresholds(previous_token=1.01, copying=0.95)
    frame = assign_roles(_hand_scores(), copying=copying, thresholds=strict)
    assert frame["roles"].tolist()[0] == "positional-1"
    assert strict.for_role("positional+1") == 0.9
    with pytest.raises(ValueError, match="unknown role"):
        strict.for_role("name_mover")
    assert set(ROLE_NAMES) >= {"copying", "positional-1", "positional+1"}


def test_a_frame_works_like_head_scores() -> None:
    scores = _hand_scores()
    from_frame = assign_roles(scores.to_frame())
    assert from_frame["roles"].tolist() == EXPECTED_ROLES
    with pytest.raises(ValueError, match="layer"):
        assign_roles(scores.to_frame().drop(columns="layer"))


def test_heads_with_the_same_construction_share_a_group() -> None:
    frame = assign_roles(_hand_scores(n_layers=2))
    grouped = cluster_heads(frame, n_groups=5, seed=0)
    groups = grouped["group"].tolist()
    assert groups[:5] == [0, 1, 2, 3, 4]  # numbered by first appearance
    assert groups[5:] == groups[:5]  # layer 1 repeats layer 0's heads
    assert "group" not in frame.columns  # the input frame is left alone
    again = cluster_heads(frame, n_groups=5, seed=0)
    assert again["group"].tolist() == groups
    two = cluster_heads(frame, n_groups=2, columns=["previous_token", "positional_prev"])
    assert two["group"].tolist() == [0, 1, 1, 1, 1] * 2
    with pytest.raises(ValueError, match="n_groups"):
        cluster_heads(frame, n_groups=11)
    with pytest.raises(ValueError, match="no columns"):
        cluster_heads(frame, n_groups=2, columns=["nonsense"])


def test_random_heads_copy_about_a_third_far_below_the_copying_threshold() -> None:
    """The documented chance level of `RoleThresholds.copying`: 200 Gaussian heads
    (d_model 64, d_head 16) give a positive eigenvalue share of about 0.33, not 0.5 (their
    eigenvalues are mostly complex), and none reaches 0.75; an identity head gives 1."""
    generator = torch.Generator().manual_seed(0)

    def gaussian(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    n_layers, n_heads, d_model, d_head, d_vocab = 25, 8, 64, 16, 200
    per_head = (n_layers, n_heads, d_model, d_head)
    weights = HeadWeights(
        gaussian(*per_head), gaussian(*per_head), gaussian(*per_head),
        gaussian(n_layers, n_heads, d_head, d_model), gaussian(d_vocab, d_model),
        gaussian(d_model, d_vocab),
    )
    scores = copying_scores(weights)
    assert 0.30 < scores.mean() < 0.37
    assert scores.max() < RoleThresholds().copying
    identity = torch.eye(d_model)[:, :d_head].expand(1, 1, d_model, d_head)
    embed = gaussian(d_vocab, d_model)
    copier = HeadWeights(identity, identity, identity, identity.transpose(-1, -2), embed, embed.T)
    torch.testing.assert_close(copying_scores(copier), torch.ones(1, 1))
