"""The stacked trainer itself: exact resumption (also through a safetensors file, with
Grokfast), the warm-up schedule, the checked inputs and states, the CUDA-graph guard."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

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


def _straight_and_stopped(vectorize: bool) -> tuple[StackedTrainer, StackedTrainer]:
    """A trainer run for 12 epochs, and one stopped after 5."""
    straight, stopped = _trainer(vectorize), _trainer(vectorize)
    for _ in range(12):
        straight.step()
    for _ in range(5):
        stopped.step()
    return straight, stopped


@pytest.mark.parametrize("vectorize", [True, False])
def test_a_resumed_trainer_continues_bit_for_bit(vectorize: bool) -> None:
    straight, stopped = _straight_and_stopped(vectorize)
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


@pytest.mark.parametrize("vectorize", [True, False])
def test_resuming_from_a_safetensors_file_with_grokfast_matches_a_straight_run(
    vectorize: bool, tmp_path: Path
) -> None:
    """safetensors reads keys back sorted, unlike the trainer's parameter order: the
    Grokfast EMA must still be paired with its own parameter's gradient."""
    straight, stopped = _straight_and_stopped(vectorize)
    save_file(stopped.state_dict(), tmp_path / "state.safetensors")
    loaded = load_file(tmp_path / "state.safetensors")
    ema_order = [k.removeprefix("ema/") for k in loaded if k.startswith("ema/")]
    assert ema_order == sorted(stopped.trainable) != list(stopped.trainable)  # the hard case
    resumed = _trainer(vectorize)
    resumed.load_state_dict(loaded)
    assert list(resumed.ema) == list(resumed.trainable)
    for _ in range(7):
        resumed.step()
    assert resumed.epoch == straight.epoch == 12
    ends = resumed.state_dict()
    assert ends.keys() == straight.state_dict().keys()
    for key, value in straight.state_dict().items():
        assert torch.equal(ends[key], value), key


def test_warmup_matches_nandas_lambda_lr() -> None:
    """Nanda et al. 2023: `LambdaLR(opt, lambda step: min(step / 10, 1))`, stepped after
    each update, so the first update has lr 0 and the 11th the full lr."""
    lr, warmup = 1e-3, 10
    weight = torch.nn.Parameter(torch.zeros(1))
    reference_opt = torch.optim.AdamW([weight], lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(reference_opt, lambda step: min(step / 10, 1))
    reference = []
    for _ in range(14):
        reference.append(reference_opt.param_groups[0]["lr"])
        reference_opt.step()
        schedule.step()
    train, test = ModularArithmetic(p=11, frac_train=0.5, seed=0).train_test()
    trainer = StackedTrainer(
        SPEC, [0], train, test, OptimSettings(lr=lr, warmup_epochs=warmup), GrokfastSettings(),
        torch.device("cpu"), vectorize=False,
    )
    initial = {k: v.detach().clone() for k, v in trainer.params.items()}
    ours = []
    for update in range(14):
        trainer.step()
        ours.append(trainer.optimizer.param_groups[0]["lr"])
        if update == 0:  # lr 0: AdamW starts its moments but moves nothing
            for key, value in trainer.params.items():
                assert torch.equal(value.detach(), initial[key]), key
    assert ours == pytest.approx(reference, rel=1e-12, abs=0)
    assert ours[0] == 0.0 and ours[1] == pytest.approx(1e-4) and ours[10:] == [lr] * 4
    no_warmup = StackedTrainer(
        SPEC, [0], train, test, OptimSettings(lr=lr, warmup_epochs=0), GrokfastSettings(),
        torch.device("cpu"), vectorize=False,
    )
    no_warmup.step()
    assert no_warmup.optimizer.param_groups[0]["lr"] == lr


def test_a_state_of_another_number_of_models_is_refused_unchanged() -> None:
    train, test = ModularArithmetic(p=11, frac_train=0.5, seed=0).train_test()

    def trainer(seeds: list[int]) -> StackedTrainer:
        return StackedTrainer(SPEC, seeds, train, test, OptimSettings(), GrokfastSettings(),
                              torch.device("cpu"))

    one, three = trainer([0]), trainer([0, 1, 2])
    before = {k: v.detach().clone() for k, v in three.params.items()}
    with pytest.raises(ValueError, match=r"'param/embed.weight' is \[1, 13, 16\], this trainer's "
                       r"is \[3, 13, 16\] \(3 models\)"):
        three.load_state_dict(one.state_dict())
    for key, value in three.params.items():  # nothing was loaded
        assert torch.equal(value.detach(), before[key]), key
    assert three.epoch == 0
    state = three.state_dict()
    del state["param/embed.weight"]
    with pytest.raises(ValueError, match="the trainer state has no 'param/embed.weight'"):
        three.load_state_dict(state)
    with pytest.raises(ValueError, match="no 'epoch'"):
        three.load_state_dict({})


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("betas", (1.0, 0.98), "less than 1"),
        ("betas", (0.9, -0.5), "greater than or equal to 0"),
        ("lr", float("inf"), "finite number"),
        ("eps", float("nan"), "finite number"),
    ],
)
def test_optim_settings_torch_would_refuse_mid_run_are_refused_up_front(
    field: str, value, needle: str
) -> None:
    with pytest.raises(ValueError, match=needle):  # AdamW raises only when it is built
        OptimSettings(**{field: value})


def test_model_spec_carries_each_models_own_seed() -> None:
    train, test = ModularArithmetic(p=11, frac_train=0.5, seed=0).train_test()
    trainer = StackedTrainer(SPEC.model_copy(update={"seed": 9}), [4, 7], train, test,
                             OptimSettings(), GrokfastSettings(), torch.device("cpu"))
    assert [trainer.model_spec(i).seed for i in range(2)] == [4, 7]
    assert trainer.model_spec(1).model_copy(update={"seed": 9}) == trainer.spec


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
