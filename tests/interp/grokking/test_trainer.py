"""The stacked trainer itself: exact resumption, the checked inputs, the CUDA-graph guard."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from interp import functional
from interp.dispatch_count import count_dispatch
from interp.grokking.trainer import GrokfastSettings, OptimSettings, StackedTrainer
from interp.models import ModelSpec
from interp.tasks.modular import ModularArithmetic

SPEC = ModelSpec(
    n_layers=1, d_model=16, n_heads=2, d_mlp=32, d_vocab=13, d_vocab_out=11, n_ctx=4,
    act_fn="relu", normalization=None,
)


def _trainer(vectorize: bool, grokfast: bool = True, **kwargs) -> StackedTrainer:
    train, test = ModularArithmetic(p=11, frac_train=0.5, seed=0).train_test()
    return StackedTrainer(
        SPEC, [0, 1], train, test, OptimSettings(lr=3e-3, warmup_epochs=3),
        GrokfastSettings(enabled=grokfast), torch.device("cpu"), vectorize=vectorize, **kwargs,
    )


@pytest.mark.parametrize("vectorize", [True, False])
def test_a_resumed_trainer_continues_bit_for_bit(vectorize: bool) -> None:
    straight = _trainer(vectorize)
    for _ in range(12):
        straight.step()
    stopped = _trainer(vectorize)
    for _ in range(5):
        stopped.step()
    state = stopped.state_dict()
    saved = {k: v.clone() for k, v in state.items()}
    resumed = _trainer(vectorize)
    resumed.load_state_dict(state)
    for _ in range(7):
        resumed.step()
    assert resumed.epoch == straight.epoch == 12
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    for key, value in saved.items():  # training on did not write into the loaded state
        assert torch.equal(state[key], value), key


@pytest.mark.parametrize("seeds", [[0], [0, 1, 2]])
def test_models_run_one_by_one_backpropagate_without_zero_filled_copies(seeds) -> None:
    """Per-model weights are views of the stacked tensors whose backward is a view (one
    model) or one stack per tensor (several), not a `select_backward` (a zero-filled copy
    of the whole stacked tensor) per weight per model; the gradients are the same."""
    train, test = ModularArithmetic(p=11, frac_train=0.5, seed=0).train_test()
    trainer = StackedTrainer(
        SPEC, seeds, train, test, OptimSettings(lr=3e-3, warmup_epochs=3), GrokfastSettings(),
        torch.device("cpu"), vectorize=False,
    )
    trainer.step()
    with count_dispatch() as counted:
        trainer.step()
    weights = [tensor for tensor in trainer.params.values() if tensor.requires_grad]
    n_weights = len(weights)
    assert counted.by_op["stack"] == (0 if len(seeds) == 1 else n_weights + 1), counted.by_op
    assert counted.by_op["select_backward"] < n_weights  # was one per weight per model
    # the same gradients as indexing model by model
    loss = sum(
        functional.forward(
            {name: tensor[index] for name, tensor in trainer.params.items()},
            train.clean, SPEC, final_position_only=True,
        )[:, -1].square().mean()
        for index in range(len(seeds))
    )
    expected = torch.autograd.grad(loss, weights)
    per_model = trainer._per_model_params()
    loss = sum(
        functional.forward(params, train.clean, SPEC, final_position_only=True)[:, -1]
        .square()
        .mean()
        for params in per_model
    )
    assert len(weights) > 10
    for ours, reference in zip(torch.autograd.grad(loss, weights), expected, strict=True):
        assert torch.equal(ours, reference)


def test_out_of_range_tokens_are_refused_once_at_construction() -> None:
    train, test = ModularArithmetic(p=11, frac_train=0.5, seed=0).train_test()
    small = SPEC.model_copy(update={"d_vocab": 12})  # the '=' token (id 12) is out of range
    with pytest.raises(ValueError, match=r"the train set's token ids \(0..12\) fall outside 0..11"):
        StackedTrainer(small, [0], train, test, OptimSettings(), GrokfastSettings(),
                       torch.device("cpu"))
    early = dataclasses.replace(test, position=test.position - 1)
    with pytest.raises(ValueError, match="the test set's answers must be read at the last pos"):
        StackedTrainer(SPEC, [0], train, early, OptimSettings(), GrokfastSettings(),
                       torch.device("cpu"))


def test_the_data_check_reads_the_device_once() -> None:
    """Position and id range come back in one `.tolist()` (one device-to-host copy on a
    GPU), not one `int()` / `bool()` read each (which the dispatch counter sees)."""
    from interp.grokking.trainer import _check_data

    train, _ = ModularArithmetic(p=11, frac_train=0.5, seed=0).train_test()
    with count_dispatch() as counted:
        _check_data("train", train, d_vocab=13)
    assert counted.syncs == 0 and counted.by_op["aminmax"] == 1, counted.by_op


def test_cuda_graph_needs_cuda() -> None:
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device"):
        _trainer(vectorize=True, cuda_graph=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("grokfast", [False, True])
def test_cuda_graph_step_matches_the_eager_step(grokfast: bool) -> None:
    train, test = ModularArithmetic(p=11, frac_train=0.5, seed=0).train_test()
    trainers = [
        StackedTrainer(SPEC, [0, 1], train, test, OptimSettings(lr=3e-3, warmup_epochs=6),
                       GrokfastSettings(enabled=grokfast), torch.device("cuda"),
                       cuda_graph=graph)
        for graph in (False, True)
    ]
    for _ in range(20):
        eager, graph = (t.step() for t in trainers)
        torch.testing.assert_close(graph, eager, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_failed_capture_warns_and_trains_on_eagerly(monkeypatch) -> None:
    """A step that syncs with the host cannot be captured: the trainer warns and goes on
    with eager steps, on the same trajectory as a trainer that never tried."""
    train, test = ModularArithmetic(p=11, frac_train=0.5, seed=0).train_test()
    trainers = [
        StackedTrainer(SPEC, [0, 1], train, test, OptimSettings(lr=3e-3, warmup_epochs=6),
                       GrokfastSettings(enabled=True), torch.device("cuda"), cuda_graph=graph)
        for graph in (False, True)
    ]
    graph_trainer = trainers[1]
    eager_step = graph_trainer._eager_step

    def syncing_step():
        loss = eager_step()
        float(loss.sum())  # a host sync: illegal while capturing
        return loss

    monkeypatch.setattr(graph_trainer, "_eager_step", syncing_step)
    with pytest.warns(RuntimeWarning, match="CUDA graph failed"):
        for _ in range(10):
            eager, graph = (t.step() for t in trainers)
            torch.testing.assert_close(graph, eager, rtol=1e-4, atol=1e-5)
    assert graph_trainer._graph is None
