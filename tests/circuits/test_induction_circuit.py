"""Issue 6, ground truth from training: the induction circuit of the trained 2-layer
attention-only model (experiments/induction_2l.yaml), confirmed by exact edge patching.

The hypothesis (Olsson et al. 2022; Elhage et al. 2021): layer-0 previous-token heads copy
each token's predecessor into the residual stream at its position; layer-1 induction heads
find, by K-composition with them, the position whose predecessor is the current token, and
copy the token there to the logits. As edges: `embed -> P.q/.k/.v`, `P -> I.k`,
`embed -> I.q/.v`, `I -> logits` for previous-token heads P and induction heads I.
"""

from __future__ import annotations

from transformer_lens.model_bridge import TransformerBridge

from circuits.edge_patching import EdgePatcher
from circuits.evaluate import faithfulness, masks_of
from circuits.logit_attribution import direct_logit_attribution
from interp.config import load_config
from interp.heads import induction_probe_scores
from interp.logit_lens import logit_lens
from interp.metrics import logit_diff, mean_metric
from interp.tasks import Induction

METRIC = mean_metric(logit_diff)


def test_the_trained_models_induction_circuit_carries_the_behaviour(
    induction_2l_model: TransformerBridge,
) -> None:
    model = induction_2l_model
    scores = induction_probe_scores(
        model, n_sequences=32, length=15, vocab=(0, 63), bos_token_id=63, seed=0
    )
    previous = [h for h in range(4) if scores["previous_token"][0, h] > 0.3]
    induction = [h for h in range(4) if scores["induction"][1, h] > 0.3]
    assert previous and induction, scores.to_frame()

    _, config = load_config("experiments/induction_2l.yaml", ["device=cpu"])
    task_config = config.task.model_copy(update={"n_examples": 32, "seed": 1})
    batch = Induction(task_config).batch()
    k_edges = {f"L0H{p}->L1H{i}.k" for p in previous for i in induction}
    circuit = set(k_edges)
    for p in previous:
        circuit |= {f"embed->L0H{p}.{part}" for part in "qkv"}
    for i in induction:
        circuit |= {f"embed->L1H{i}.q", f"embed->L1H{i}.v", f"L1H{i}->logits"}

    patcher = EdgePatcher(model)
    result = faithfulness(
        patcher, batch, masks_of(patcher.graph, [sorted(circuit), sorted(circuit - k_edges)]),
        METRIC,
    )
    with_k, without_k = result.faithfulness.tolist()
    assert result.full - result.empty > 5  # the model does induction; ablated it does not
    assert with_k > 0.5, (len(circuit), with_k)  # the circuit alone carries most of it
    assert without_k < 0.15, without_k  # and without K-composition it is gone


def test_direct_effects_sit_on_the_induction_heads_not_the_previous_token_heads(
    induction_2l_model: TransformerBridge,
) -> None:
    """Direct logit attribution on the same model: the induction heads write the answer
    (Olsson et al. 2022), the previous-token heads act only through them (their direct
    effect is small beside), and the logit lens shows the answer only after layer 1."""
    model = induction_2l_model
    scores = induction_probe_scores(
        model, n_sequences=32, length=15, vocab=(0, 63), bos_token_id=63, seed=0
    )
    previous = [h for h in range(4) if scores["previous_token"][0, h] > 0.3]
    induction = [h for h in range(4) if scores["induction"][1, h] > 0.3]
    _, config = load_config("experiments/induction_2l.yaml", ["device=cpu"])
    batch = Induction(config.task.model_copy(update={"n_examples": 32, "seed": 1})).batch()

    direct = direct_logit_attribution(model, batch)
    heads = direct.heads()
    induction_effect = sum(float(heads[1, i]) for i in induction)
    assert induction_effect > 0.5 * float(direct.total.mean()), direct.to_frame()
    assert direct.top(1)[0][0] in {f"L1H{i}" for i in induction}, direct.top(4)
    assert all(abs(float(heads[0, p])) < 0.05 * induction_effect for p in previous), heads
    lens = logit_lens(model, batch).to_frame().set_index("stage")
    assert lens.loc["final_post", "top1"] > 0.8, lens
    assert lens.loc["1_pre", "top1"] < 0.2, lens  # before the induction heads: not yet
