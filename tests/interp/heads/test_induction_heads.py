"""Acceptance (issue 5): on the trained 2-layer attention-only induction model of
experiments/induction_2l.yaml, a previous-token head is found in layer 0 and an induction
head in layer 1, and the induction head's strongest K-composition (Elhage et al. 2021) is
with that previous-token head, above the random baseline (Olsson et al. 2022)."""

from __future__ import annotations

import torch
from transformer_lens.model_bridge import TransformerBridge

from interp.heads import (
    assign_roles,
    composition_baseline,
    composition_scores,
    head_weights,
    induction_probe_scores,
)


def test_previous_token_head_k_composes_with_the_induction_head(
    induction_2l_model: TransformerBridge,
) -> None:
    model = induction_2l_model
    # repeated random tokens [BOS] + r + r, BOS id 63 as in training, r from ids 0..62
    scores = induction_probe_scores(
        model, n_sequences=64, length=15, vocab=(0, 63), bos_token_id=63, seed=0
    )
    roles = assign_roles(scores)  # default thresholds: >= 0.5 of the attention on the target
    has = roles["roles"].str.split(",")

    previous = roles[(roles["layer"] == 0) & has.apply(lambda r: "previous_token" in r)]
    induction = roles[(roles["layer"] == 1) & has.apply(lambda r: "induction" in r)]
    assert len(previous) >= 1, roles[["layer", "head", "previous_token"]]
    assert len(induction) >= 1, roles[["layer", "head", "induction"]]
    # the roles are not shared: no layer-0 head does induction, no layer-1 head is a
    # previous-token head
    assert not has[roles["layer"] == 0].apply(lambda r: "induction" in r).any()
    assert not has[roles["layer"] == 1].apply(lambda r: "previous_token" in r).any()

    weights = head_weights(model)
    k_composition = composition_scores(weights, "K")  # [layer, head, later_layer, later_head]
    baseline_mean, baseline_std = composition_baseline(weights, n_samples=4, seed=0)
    top_induction = int(induction.loc[induction["induction"].idxmax(), "head"])
    into = k_composition[0, :, 1, top_induction]  # every layer-0 head into it
    top_previous = int(previous.loc[previous["previous_token"].idxmax(), "head"])
    assert int(into.argmax()) == top_previous, into
    assert into[top_previous] > baseline_mean["K"] + 3 * baseline_std["K"], (
        into, baseline_mean, baseline_std
    )
    # and it is the strongest for every induction head of layer 1, not only the top one
    for head in induction["head"]:
        assert int(k_composition[0, :, 1, int(head)].argmax()) == top_previous
    assert torch.isnan(k_composition[1]).all()  # nothing composes into a layer above the top
