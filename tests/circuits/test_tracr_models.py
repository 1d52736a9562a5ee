"""Tests for circuits.tracr_models: the shipped tracr programs compute their RASP programs,
and their ground-truth circuits are faithful and minimal under each ablation. The
conversion itself is tested in test_tracr_compile.py."""

from __future__ import annotations

import math

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge

from circuits import tracr_models
from circuits.edge_patching import ABLATIONS
from circuits.graph import ComputationalGraph
from circuits.tracr_models import (
    PROGRAMS,
    TracrProgram,
    check_circuit,
    derive_truth,
    load_tracr,
    structural_edges,
    tracr_program,
)
from interp import functional

# ACDC's ground truth (Conmy et al. 2023, acdc/tracr_task/utils.py), zero ablation on one
# sequence length, in this graph's names (its hook_embed and hook_pos_embed are our embed).
ACDC_REVERSE = {
    "embed->L0H0.v",
    "embed->mlp0",
    "L0H0->mlp0",
    "embed->mlp1",
    "mlp0->mlp1",
    "mlp1->mlp2",
    "mlp2->L3H0.q",
    "embed->L3H0.k",
    "embed->L3H0.v",
    "L3H0->logits",
}
ACDC_FRAC_PREVS = {
    "embed->mlp0",
    "embed->L1H0.q",
    "embed->L1H0.k",
    "mlp0->L1H0.v",
    "L1H0->logits",
}


@pytest.fixture(scope="module")
def loaded() -> dict[str, tuple[TracrProgram, TransformerBridge]]:
    return {name: (tracr_program(name), load_tracr(name)) for name in PROGRAMS}


def logits_of(model: TransformerBridge, tokens: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(tokens)


def test_reverse_reverses_known_inputs(loaded) -> None:
    program, model = loaded["reverse"]
    cases = {(1, 2, 3): ["3", "2", "1"], (2, 1): ["1", "2"], (3, 3, 1, 2, 1): list("12133")}
    for sequence, expected in cases.items():
        for n_pos in (len(sequence) + 1, program.spec.n_ctx):  # unpadded and padded
            tokens = program.encode(sequence, n_pos)[None]
            assert program.decode(logits_of(model, tokens), tokens) == [expected]
    # The read-out is tracr's output space: exactly one-hot at every output position.
    tokens = program.encode([1, 2, 3])[None]
    readout = program.readout(logits_of(model, tokens))[0, 1:]
    assert torch.allclose(readout, torch.eye(3).flip(0), atol=1e-5)


def test_frac_prevs_gives_known_fractions(loaded) -> None:
    program, model = loaded["frac_prevs"]
    cases = {
        ("x", "w", "x", "x"): [1.0, 0.5, 2 / 3, 0.75],
        ("w", "y", "z"): [0.0, 0.0, 0.0],
        ("y", "x", "z", "x", "x"): [0.0, 0.5, 1 / 3, 0.5, 0.6],
    }
    for sequence, expected in cases.items():
        for n_pos in (len(sequence) + 1, program.spec.n_ctx):
            tokens = program.encode(sequence, n_pos)[None]
            logits = logits_of(model, tokens)
            assert program.decode(logits, tokens)[0] == pytest.approx(expected, abs=1e-6)
            assert torch.all(logits[..., program.n_outputs :] == 0)


@pytest.mark.parametrize("name", PROGRAMS)
def test_every_input_gives_the_rasp_output(loaded, name) -> None:
    program, model = loaded[name]
    batch = program.batch()
    expected_size = sum(len(program.vocab) ** n for n in range(1, program.max_seq_len + 1))
    assert len(batch) == expected_size
    logits = logits_of(model, batch.clean)
    mask = program.output_mask(batch.clean)
    expected = program.expected(batch.clean)
    if program.numerical:
        assert (program.readout(logits)[..., 0] - expected).abs()[mask].max() < 1e-6
    else:
        assert torch.equal(program.readout(logits).argmax(-1)[mask], expected[mask])
        assert (expected[:, 0] == -1).all()  # BOS carries no output
    # The bridge and the functional forward pass agree.
    params = functional.params_of(model)
    reference = functional.forward(params, batch.clean, program.spec)
    assert torch.allclose(logits, reference, atol=1e-6)


def test_batch_fields(loaded) -> None:
    program, _ = loaded["reverse"]
    batch = program.batch()
    assert batch.clean.shape == (363, 6)
    assert (batch.clean != batch.corrupted).any(1).all()  # every example is corrupted
    lengths = program.output_mask(batch.clean).sum(1)
    assert torch.equal(batch.position, lengths)
    # answer: the reversed token at the last position is the first token of the sequence
    first = torch.tensor(
        [program.output_tokens.index(program.input_tokens[t]) for t in batch.clean[:, 1].tolist()]
    )
    assert torch.equal(batch.answer, first)
    assert torch.equal(program.batch(seed=0).corrupted, batch.corrupted)
    assert program.batch(lengths=[2], n_examples=5, seed=1).clean.shape == (5, 3)


@pytest.mark.parametrize("name", PROGRAMS)
def test_metric_of_the_full_model(loaded, name) -> None:
    program, model = loaded[name]
    batch = program.batch()
    value = program.metric()(logits_of(model, batch.clean), batch)
    assert value.shape == (len(batch),)
    if program.numerical:
        assert value.abs().max() < 1e-10  # the model's fractions are exact
    else:  # one-hot read-out of 3 logits: log(e / (e + 2)) at every position
        assert torch.allclose(value, torch.full_like(value, -math.log(1 + 2 / math.e)))


@pytest.mark.parametrize(("name", "n_edges"), [("reverse", 77), ("frac_prevs", 23)])
def test_graph_and_structural_edges(loaded, name, n_edges) -> None:
    program, model = loaded[name]
    graph = ComputationalGraph.from_model(model)
    assert len(graph) == n_edges
    assert structural_edges(model, program.spec) == program.structural_edges
    for ablation in ABLATIONS:
        for truth in (program.truth_edges(ablation), program.acdc_truth[ablation]):
            assert set(truth) <= set(program.structural_edges)
            assert [graph.edge(edge).name for edge in truth] == list(truth)


@pytest.mark.parametrize("ablation", ABLATIONS)
@pytest.mark.parametrize("name", PROGRAMS)
@pytest.mark.parametrize("acdc", [False, True], ids=["all_lengths", "acdc_length"])
def test_truth_is_faithful_and_every_edge_is_needed(loaded, name, ablation, acdc) -> None:
    program, model = loaded[name]
    lengths = [program.acdc_length] if acdc else None
    batch = program.batch(lengths=lengths)
    truth = program.truth_edges(ablation, lengths)
    check = check_circuit(model, program, batch, truth, ablation)
    assert check.max_deviation <= tracr_models.FAITHFUL_TOLERANCE
    assert check.metric_circuit == pytest.approx(check.metric_full, abs=1e-4)
    assert min(check.removal_effects.values()) > 0.5  # each removal breaks an output


def test_truth_depends_on_the_ablation_as_the_program_says(loaded) -> None:
    reverse, frac_prevs = loaded["reverse"][0], loaded["frac_prevs"][0]
    # Zero ablation on ACDC's data gives ACDC's ground truth exactly.
    assert set(reverse.acdc_truth["zero"]) == ACDC_REVERSE
    assert set(frac_prevs.acdc_truth["zero"]) == ACDC_FRAC_PREVS
    # Mean and resample ablation keep what is the same on every input (positions, BOS,
    # the "one" direction): the query and key of frac_prevs' head read only those.
    assert set(frac_prevs.truth["resample"]) == ACDC_FRAC_PREVS - {
        "embed->L1H0.q",
        "embed->L1H0.k",
    }
    # With every length in the batch, reverse needs the length count to ignore padding
    # (L0H0 reads the tokens); with one length, resample leaves only the copying head.
    assert set(reverse.truth["zero"]) == ACDC_REVERSE | {"embed->L0H0.q", "embed->L0H0.k"}
    assert set(reverse.acdc_truth["resample"]) == {"embed->L3H0.v", "L3H0->logits"}
    for program in (reverse, frac_prevs):
        assert set(program.truth["resample"]) <= set(program.truth["zero"])


def test_derive_truth_recovers_the_stored_truth(loaded) -> None:
    program, model = loaded["frac_prevs"]
    batch = program.batch(n_examples=200, seed=3)
    for ablation in ABLATIONS:
        assert derive_truth(model, program, batch, ablation) == program.truth_edges(ablation)


def test_bad_input_is_refused(loaded) -> None:
    program, _ = loaded["reverse"]
    with pytest.raises(ValueError, match="not in reverse's vocab"):
        program.encode([1, 4])
    with pytest.raises(ValueError, match="at most 5"):
        program.encode([1] * 6)
    with pytest.raises(ValueError, match="unknown tracr program"):
        tracr_program("sort")
    with pytest.raises(ValueError, match="ablation must be one of"):
        program.truth_edges("gaussian")
    with pytest.raises(ValueError, match="no stored truth"):
        program.truth_edges("zero", lengths=[2])
    with pytest.raises(ValueError, match="lengths must lie"):
        program.batch(lengths=[0])

