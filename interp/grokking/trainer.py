"""Full-batch training of S models at once on modular arithmetic (the grokking setup).

The S models (one per seed; they share the spec, the data and the optimiser settings) are
stacked along a leading axis and trained as one computation: one forward pass over the
stacked parameters (vmapped on CUDA, `interp.functional.batched_forward`; a pass per model
slice on CPU, which is faster there), the sum of the S per-model mean losses (so each model
receives exactly its own gradient), and one AdamW step on the stacked tensors.
AdamW and the Grokfast filter act element by element, so each model follows the same
trajectory as when trained alone (Nanda et al. 2023 train one model full-batch with AdamW,
lr 1e-3, weight decay 1, betas (0.9, 0.98), a linear warm-up over 10 updates whose first
update has lr 0, and the cross-entropy in float64; so do we: `StackedTrainer._lr`,
`answer_loss`).

The arithmetic is cut where it is exact to do so: the last layer runs at the answer
position only, and the first layer's queries, keys and values are computed once per
(position, token) and gathered (`functional.first_layer_tables`; 460 rows instead of
15,324 in the reference run), which leaves the MLP and the unembedding as most of the work.

A small model's epoch on a GPU costs its kernel launches more than its arithmetic, so an
epoch issues few of them: the fixed train and test tokens are checked once, not every
forward (which also drops a host sync per epoch), AdamW is the fused kernel (one launch for
every tensor), and the Grokfast filter uses `torch._foreach_*` ops. `cuda_graph=True`
(CUDA only, opt-in) goes further: after a few eager epochs it captures one whole training
step (forward, backward, Grokfast, AdamW) as a CUDA graph (`torch.cuda.graphs`) and
replays it, with the learning rate held in a device tensor for the warm-up.

Grokfast (Lee et al. 2024, "Grokfast: Accelerated Grokking by Amplifying Slow Gradients"):
an exponential moving average of the gradient, `ema = alpha * ema + (1 - alpha) * grad`,
is added back amplified, `grad = grad + lamb * ema`, before the optimiser step.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from interp import functional, models
from interp.tasks.base import TaskBatch
from interp.validation import Beta


class OptimSettings(BaseModel):
    """AdamW settings (defaults: Nanda et al. 2023). `warmup_epochs`: update n has lr
    `lr * min((n - 1) / warmup_epochs, 1)`, Nanda et al.'s `LambdaLR` schedule."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(default=1e-3, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    betas: tuple[Beta, Beta] = (0.9, 0.98)
    eps: float = Field(default=1e-8, gt=0, allow_inf_nan=False)
    warmup_epochs: int = Field(default=10, ge=0)


class GrokfastSettings(BaseModel):
    """The Grokfast EMA gradient filter; off by default.

    Attributes:
        enabled: Apply the filter.
        alpha: EMA decay of the gradient.
        lamb: Amplification of the slow (EMA) gradient added to the raw gradient.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    alpha: float = Field(default=0.98, ge=0, lt=1)
    lamb: float = Field(default=2.0, ge=0)


@dataclass(frozen=True)
class EpochStats:
    """Losses and accuracies of every model after one epoch, each `[S]`."""

    epoch: int
    train_loss: Tensor
    train_acc: Tensor
    test_loss: Tensor
    test_acc: Tensor


def answer_loss(final: Float[Tensor, "S batch vocab"], batch: TaskBatch) -> Float[Tensor, " S"]:
    """Per-model mean cross-entropy of the answer, from the logits at the answer position,
    in float64 (`F.cross_entropy` over the models' examples stacked: fewer kernels, in both
    directions, than a log-softmax and a gather).

    Float64 as in Nanda et al. 2023's `cross_entropy_high_precision`: once the model is
    confident, float32 rounds the correct answer's log-probability (and so its gradient) to
    a few ulps of 1, which biases the late-training updates that drive the cleanup phase.
    Only the answer-position logits `[S, batch, vocab]` are cast, so it costs little; the
    loss returned is float64, its gradient reaches the logits in their own dtype.
    """
    n_models = final.shape[0]
    answers = batch.answer if n_models == 1 else batch.answer.repeat(n_models)
    per_example = F.cross_entropy(
        final.to(torch.float64).flatten(0, 1), answers, reduction="none"
    )
    return per_example.view(n_models, -1).mean(dim=-1)


def answer_accuracy(final: Float[Tensor, "S batch vocab"], batch: TaskBatch) -> Float[Tensor, " S"]:
    """Per-model fraction of examples whose top logit is the answer."""
    # count / n, not mean(): CUDA's mean multiplies by 1/n, which turns all-correct into
    # 0.99999994 (float32), and "train accuracy 1.0" is a threshold the summary reads.
    correct = (final.argmax(dim=-1) == batch.answer[None]).float().sum(dim=-1)
    return correct / final.shape[1]


def answer_loss_and_accuracy(
    final: Float[Tensor, "S batch vocab"], batch: TaskBatch
) -> tuple[Float[Tensor, " S"], Float[Tensor, " S"]]:
    """`answer_loss` and `answer_accuracy`."""
    return answer_loss(final, batch), answer_accuracy(final, batch)


def _check_data(name: str, data: TaskBatch, d_vocab: int) -> None:
    """Answers read at the last position and token ids inside the vocabulary, checked once
    (one host sync) so that the forward passes of every epoch can skip the check."""
    at_last = (data.position.to(data.clean.device) == data.clean.shape[1] - 1).all()
    ids = data.clean if data.clean.numel() else data.clean.new_zeros(1)
    low, high = torch.aminmax(ids)
    at_last_flag, low, high = torch.stack([at_last.long(), low.long(), high.long()]).tolist()
    if not at_last_flag:
        raise ValueError(f"the {name} set's answers must be read at the last position")
    if low < 0 or high >= d_vocab:
        raise ValueError(
            f"the {name} set's token ids ({low}..{high}) fall outside 0..{d_vocab - 1}"
        )


class StackedTrainer:
    """Trains S native models of one spec together, full batch, on fixed train/test sets.

    The trainer's whole state (parameters, AdamW moments, Grokfast EMA, epoch) is a flat
    dict of tensors (`state_dict`), so a checkpoint is one safetensors file and a resumed
    run continues bit for bit.

    Args:
        vectorize: One vmapped forward over the stacked models (default: on CUDA, for
            more than one model; a single model's plain pass dispatches a quarter fewer
            ops, which is its speed on a GPU).
        cuda_graph: Capture the training step as a CUDA graph after `GRAPH_WARMUP_EPOCHS`
            eager epochs and replay it (CUDA only; a ValueError elsewhere). Opt-in: the
            replayed step does the eager step's arithmetic, to float rounding.
    """

    GRAPH_WARMUP_EPOCHS = 3

    def __init__(
        self,
        spec: models.ModelSpec,
        seeds: Sequence[int],
        train_set: TaskBatch,
        test_set: TaskBatch,
        optim: OptimSettings,
        grokfast: GrokfastSettings,
        device: torch.device,
        vectorize: bool | None = None,
        cuda_graph: bool = False,
    ) -> None:
        if not seeds:
            raise ValueError("seeds must name at least one model")
        if cuda_graph and device.type != "cuda":
            raise ValueError(
                f"cuda_graph=True needs a CUDA device, got {device}: CUDA graphs replay "
                "GPU kernels only (leave it False on CPU)"
            )
        self.spec = spec
        self.seeds = list(seeds)
        arch = functional.architecture(spec)
        for name, data in (("train", train_set), ("test", test_set)):
            _check_data(name, data, arch.d_vocab)
        self.train_set = train_set.to(device)
        self.test_set = test_set.to(device)
        self.optim_settings = optim
        self.grokfast = grokfast
        self.device = device
        if vectorize is None:
            vectorize = device.type == "cuda" and len(self.seeds) > 1
        self.vectorize = vectorize
        # The first layer from per-(position, token) tables: its arithmetic falls from
        # batch x pos rows to pos x d_vocab (4 x 115 against 3,831 x 4 in the reference run),
        # a gain wherever the training set outnumbers the vocabulary.
        self.token_tables = not arch.rotary and len(train_set) >= arch.d_vocab
        initial = [
            functional.params_of(models.build(self.model_spec(index), device="cpu"))
            for index in range(len(self.seeds))
        ]
        stacked = functional.stack_params(initial)
        # Buffers of the bridge (the zero unembedding bias) stay fixed, as in the bridge.
        self.params = {
            k: v.to(device).requires_grad_(k not in functional.TRAINABLE_EXCLUDED)
            for k, v in stacked.items()
        }
        self.trainable = {k: v for k, v in self.params.items() if v.requires_grad}
        self.cuda_graph = cuda_graph
        # With a graph, the lr lives in a device tensor that the replayed step reads.
        self._lr_tensor = torch.tensor(optim.lr, device=device) if cuda_graph else None
        self._lr_value = optim.lr
        self.optimizer = torch.optim.AdamW(
            list(self.trainable.values()),
            lr=self._lr_tensor if self._lr_tensor is not None else optim.lr,
            betas=optim.betas,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            fused=True,  # one kernel for every tensor; CPU and CUDA
            capturable=cuda_graph,
        )
        self.ema: dict[str, Tensor] | None = None
        self.epoch = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_out: Tensor | None = None
        self._graph_failed = False
        self._eager_since_load = 0

    @property
    def n_models(self) -> int:
        return len(self.seeds)

    def _lr(self, epoch: int) -> float:
        """The learning rate of the update of `epoch` (1-based): linear warm-up exactly as
        Nanda et al. 2023's `LambdaLR(optimizer, lambda step: min(step / 10, 1))`, stepped
        after each update, so update n has `lr * min((n - 1) / warmup_epochs, 1)`: the first
        update has lr 0 (AdamW then only starts its moments) and the full lr is reached at
        update `warmup_epochs + 1`. `warmup_epochs: 0` means the full lr from the start."""
        warmup = self.optim_settings.warmup_epochs
        scale = min(1.0, (epoch - 1) / warmup) if warmup else 1.0
        return self.optim_settings.lr * scale

    def step(self) -> Tensor:
        """One full-batch epoch; returns the per-model train loss before it, `[S]` (the
        accuracy is `evaluate`'s: an epoch computes only what its update needs)."""
        self.epoch += 1
        lr = self._lr(self.epoch)
        if self._lr_tensor is not None:
            if lr != self._lr_value:  # a launch only while the warm-up changes it
                self._lr_tensor.fill_(lr)
                self._lr_value = lr
            if self._eager_since_load >= self.GRAPH_WARMUP_EPOCHS and self.ema_ready:
                return self._graph_step()
            self._eager_since_load += 1
            return self._side_stream_step()
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        return self._eager_step()

    @property
    def ema_ready(self) -> bool:
        """Whether the Grokfast EMA exists (or is not used): its first epoch is eager."""
        return self.ema is not None or not self.grokfast.enabled

    def _eager_step(self) -> Tensor:
        loss = answer_loss(self._final_logits(self.train_set), self.train_set)
        self.optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        if self.grokfast.enabled:
            self._apply_grokfast()
        self.optimizer.step()
        return loss.detach()

    def _side_stream_step(self) -> Tensor:
        """An eager step on a side stream, as PyTorch's recipe for capturing a whole
        training step asks of the warm-up steps before a capture (state made lazily, such
        as cuBLAS workspaces and the optimiser's, is then not tied to the default stream);
        the default stream waits for it."""
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            loss = self._eager_step()
        current.wait_stream(side)
        loss.record_stream(current)  # read on the default stream from now on
        return loss

    def _graph_step(self) -> Tensor:
        """Replay the captured step (capturing it first); the outputs are copied out, since
        the next replay overwrites them. A capture that fails (an op CUDA graphs cannot
        hold) warns once and the run goes on with eager steps: nothing a capture records
        runs, so the state is as before it."""
        if self._graph is None:
            if self._graph_failed:
                return self._eager_step()
            # After the eager warm-up (lazy optimiser state, the Grokfast EMA, cuBLAS set up),
            # capture with no gradients yet: backward allocates them in the graph's pool,
            # and every replay overwrites them (as `zero_grad(set_to_none=True)` would).
            torch.cuda.synchronize(self.device)
            self.optimizer.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            stream = torch.cuda.current_stream(self.device)
            try:
                with torch.cuda.graph(graph):
                    self._graph_out = self._eager_step()
            except RuntimeError as error:
                self._graph_failed, self._graph_out = True, None
                torch.cuda.set_stream(stream)  # a failed capture_end leaves its stream set
                torch.cuda.synchronize(self.device)
                reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
                warnings.warn(
                    f"capturing the training step as a CUDA graph failed "
                    f"({type(error).__name__}: {reason}); training on with eager steps",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return self._eager_step()
            self._graph = graph
        self._graph.replay()
        assert self._graph_out is not None
        return self._graph_out.clone()

    def _apply_grokfast(self) -> None:
        """Grokfast's EMA filter on the gradients, each EMA paired with its own parameter
        by name (not by the order of `self.ema`, which a loaded state may not share)."""
        alpha, lamb = self.grokfast.alpha, self.grokfast.lamb
        names = [k for k, p in self.trainable.items() if p.grad is not None]
        grads = [self.trainable[k].grad for k in names]
        if self.ema is None:
            self.ema = {k: p.grad.detach().clone() for k, p in self.trainable.items()}
        else:
            emas = [self.ema[k] for k in names]
            torch._foreach_mul_(emas, alpha)
            torch._foreach_add_(emas, grads, alpha=1 - alpha)
        torch._foreach_add_(grads, [self.ema[k] for k in names], alpha=lamb)

    def _final_logits(self, data: TaskBatch) -> Float[Tensor, "S batch vocab"]:
        """Every model's logits at the answer (last) position; only that position's
        queries, MLP and unembedding are computed in the last layer. When `token_tables`
        is on (no rotary embedding, and at least as many training examples as tokens), the
        first layer's queries, keys and values come from per-(position, token) tables
        (`functional.first_layer_tables`); otherwise they are computed per example.

        On CUDA (or with `vectorize=True`) the S models run as one vmapped computation.
        On CPU, where the work is
        compute-bound and the batched kernels measured slower than S separate passes
        (benchmarks/grokking.py), each model runs on its slice of the stacked parameters;
        the gradients land in the same stacked tensors and one AdamW step updates all.
        """
        if self.vectorize:
            logits = functional.batched_forward(
                self.params, data.clean, self.spec, final_position_only=True, validate=False,
                token_tables=self.token_tables,
            )
            return logits.squeeze(2)  # [S, batch, 1, vocab]: a view both ways
        per_model = [
            functional.forward(
                params, data.clean, self.spec, validate=False, final_position_only=True,
                token_tables=self.token_tables,
            ).squeeze(1)
            for params in self._per_model_params()
        ]
        return per_model[0][None] if len(per_model) == 1 else torch.stack(per_model)

    def _per_model_params(self) -> list[dict[str, Tensor]]:
        """Each model's parameters as views of the stacked tensors. One model's are a
        squeeze, whose backward is a view too; several models' come from one `unbind` per
        tensor, whose backward is one stack, where indexing model by model would
        backpropagate through a zero-filled copy of the whole stacked tensor per model
        (two kernels per weight per model on a GPU)."""
        if self.n_models == 1:
            return [{name: tensor.squeeze(0) for name, tensor in self.params.items()}]
        unbound = {name: tensor.unbind(0) for name, tensor in self.params.items()}
        return [
            {name: parts[index] for name, parts in unbound.items()}
            for index in range(self.n_models)
        ]

    @torch.no_grad()
    def evaluate(self) -> EpochStats:
        """Loss and accuracy of every model on the train and test sets, now."""
        train = answer_loss_and_accuracy(self._final_logits(self.train_set), self.train_set)
        test = answer_loss_and_accuracy(self._final_logits(self.test_set), self.test_set)
        return EpochStats(self.epoch, train[0], train[1], test[0], test[1])

    def weight_norms(self) -> Tensor:
        """The L2 norm of all parameters of each model, `[S]`."""
        squares = [p.detach().pow(2).flatten(1).sum(dim=1) for p in self.params.values()]
        return torch.stack(squares).sum(dim=0).sqrt()

    def model_spec(self, index: int) -> models.ModelSpec:
        """The spec model `index` was built from: the shared spec with that model's seed."""
        return self.spec.model_copy(update={"seed": self.seeds[index]})

    def model_params(self, index: int) -> functional.Params:
        """The parameters of model `index` (detached, on the trainer's device)."""
        return {k: v[index].detach() for k, v in self.params.items()}

    def state_dict(self) -> dict[str, Tensor]:
        """Everything needed to continue training exactly, as a flat dict of tensors."""
        state: dict[str, Tensor] = {"epoch": torch.tensor(self.epoch)}
        for key, param in self.params.items():
            state[f"param/{key}"] = param.detach()
        for key, param in self.trainable.items():
            moments = self.optimizer.state.get(param, {})
            for moment in ("exp_avg", "exp_avg_sq", "step"):
                if moment in moments:
                    state[f"adam/{moment}/{key}"] = torch.as_tensor(moments[moment])
        if self.ema is not None:
            for key, value in self.ema.items():
                state[f"ema/{key}"] = value
        return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore a state written by `state_dict` (same spec and number of models), in
        any key order (safetensors reads keys back sorted). A state of another shape (a
        different spec or number of models) raises a one-line ValueError, before anything
        is changed."""
        self._check_state(state)
        self.epoch = int(state["epoch"])
        with torch.no_grad():
            for key, param in self.params.items():
                param.copy_(state[f"param/{key}"])
        for key, param in self.trainable.items():
            if f"adam/step/{key}" in state:
                # The fused AdamW keeps its step count as a float32 tensor on the device.
                # Copies: the optimiser updates them in place.
                self.optimizer.state[param] = {
                    moment: state[f"adam/{moment}/{key}"].to(self.device, copy=True)
                    for moment in ("exp_avg", "exp_avg_sq")
                } | {"step": state[f"adam/step/{key}"].to(self.device, torch.float32, copy=True)}
        has_ema = any(k.startswith("ema/") for k in state)
        # Keyed and ordered as the trainer's own parameters, whatever the state's order.
        self.ema = (
            {k: state[f"ema/{k}"].to(self.device, copy=True) for k in self.trainable}
            if has_ema else None
        )
        # A captured graph reads the old optimiser and EMA tensors: capture anew.
        self._graph, self._graph_out, self._eager_since_load = None, None, 0

    def _check_state(self, state: Mapping[str, Tensor]) -> None:
        """A one-line ValueError unless `state` fits this trainer: its epoch, and every
        parameter, AdamW moment and Grokfast EMA present with this trainer's shapes."""
        if "epoch" not in state:
            raise ValueError("the trainer state has no 'epoch': not a StackedTrainer state")
        expected = {f"param/{k}": tuple(v.shape) for k, v in self.params.items()}
        if any(k.startswith("ema/") for k in state):
            expected |= {f"ema/{k}": tuple(v.shape) for k, v in self.trainable.items()}
        for key, param in self.trainable.items():
            if f"adam/step/{key}" in state:
                expected |= {f"adam/{m}/{key}": tuple(param.shape)
                             for m in ("exp_avg", "exp_avg_sq")}
        for key, shape in expected.items():
            if key not in state:
                raise ValueError(f"the trainer state has no {key!r}: it was saved by another spec")
            if tuple(state[key].shape) != shape:
                raise ValueError(
                    f"the trainer state's {key!r} is {list(state[key].shape)}, this trainer's "
                    f"is {list(shape)} ({self.n_models} models): saved with another spec or "
                    "number of models"
                )
