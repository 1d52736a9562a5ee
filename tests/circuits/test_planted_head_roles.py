"""Issue 5's hand-built check: on the planted induction model (circuits.planted), whose heads
are set by hand, interp.heads gives each head the role it was built with."""

from __future__ import annotations

import torch

from circuits.planted import planted
from interp.heads import (
    assign_roles,
    composition_scores,
    copying_scores,
    head_weights,
    induction_probe_scores,
)


def test_every_planted_head_gets_the_role_it_was_built_with() -> None:
    case = planted("induction")  # tokens 0..15 on the task; 16..23 wake a distractor
    scores = induction_probe_scores(case.model, n_sequences=32, length=6, vocab=(0, 16), seed=0)
    weights = head_weights(case.model)
    roles = assign_roles(scores, copying=copying_scores(weights))
    found = {
        (int(row.layer), int(row.head)): set(filter(None, row.roles.split(",")))
        for row in roles.itertuples()
    }
    assert {"previous_token", "positional-1"} <= found[0, 0]  # L0H0: attends to i - 1
    assert found[0, 1] == {"first_token"}  # L0H1: attends to position 0
    assert {"induction", "copying"} <= found[1, 0]  # L1H0: K-composes with L0H0, copies
    assert "copying" not in found[1, 2]  # L1H2 writes minus its token: it suppresses
    assert "induction" not in found[0, 0] | found[0, 1] | found[0, 2]
    k_composition = composition_scores(weights, "K")
    into_induction = k_composition[0, :, 1, 0]
    assert int(torch.argmax(into_induction)) == 0  # the previous-token head feeds its key
