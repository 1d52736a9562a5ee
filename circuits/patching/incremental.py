"""Incremental activation patching: rerun only the part of the forward pass a patch can change.

A patch at layer l cannot change any earlier layer; under causal attention, a patch at
position p cannot change any position before p; and a metric that reads the logits at
`batch.position` needs the last layer and the unembedding at those positions only. So for
a chunk of indices of one layer, starting from the base run's cached activations, this
engine reruns:

- layer l from the patched activation on (the layers before it are skipped);
- positions >= p0, the smallest position patched in the chunk (0 for targets over all
  positions), or the first position where the clean and corrupted tokens differ if that
  is later (before it both runs are the same); the keys and values of earlier positions
  come from the base run's cache;
- the last layer and the unembedding at the read positions only; for targets without a
  position axis (each head's z, q, k, v or pattern over every position) the base and
  source runs do the same, since no patch then needs their last layer elsewhere;
- for a patch of one row of the residual stream (`resid_pre`, `attn_out`, ... by layer x
  position, and one head's `z` or `q` at one position), that row alone up to the next
  attention, and there the norm and the query, key and value projections of that row
  alone (`incremental_rows`): the other positions' are the base run's;
- for a head's output or values (`z`, `v`, `v_by_pos`), no attention at all: the change
  of the head's output (for values, through the base run's pattern) times its `W_O` is
  added to the residual stream (`Step.after_head_outputs_patched`, `incremental_values`).

The arithmetic is `interp.functional`'s, which equals the bridge's, so the values equal
those of the hook engine (and of TransformerLens) to float rounding. It covers the causal
models that `interp.functional` computes (`supports(model)`): native models of
`interp.models.build` and pretrained GPT-2, GPT-NeoX, GPT-J, OPT, GPT-Neo, Phi, BLOOM, Llama,
Mistral, Qwen2, Qwen3, Phi-3 and Gemma 1-3 (`functional.architecture_of`; rotary models rotate
the cached, unrotated q and k of every position, grouped keys and values are repeated for the heads
of their group, a parallel block's MLP output stays the base run's when only its attention
changes, and where a norm follows the attention (Gemma 2 and 3), a patched head's z goes
through it with the other heads'); other models go through the hook engine. Hooks a user
attached to the bridge are not run here.

The metric sees full `[batch, pos, vocab]` logits holding the patched logits at the read
positions and NaN everywhere else, so that a metric reading other positions gives NaN,
which `patch` reports instead of returning wrong numbers. `patch` reads it on many copies
at once (`metric.CopyMetric`), from one `[copy, batch, pos, vocab]` buffer.

On a GPU a small model's sweep is bound by host-side work, one dispatch per op, and by
host syncs, which stall that pipeline: so chunks are answered from Python-side bookkeeping
(slices rather than index tensors where the indices run consecutively, views of index
tensors made once per sweep where they do not, a `where` over all copies rather than a
setter per copy): no chunk copies data from the host or waits for the device.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from circuits.patching.incremental_step import Step
from circuits.patching.targets import IndexSpace
from interp import functional

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

Params = dict[str, Tensor]


def supports(model: TransformerBridge) -> bool:
    """Whether this engine reproduces `model` exactly: a causal model that
    `interp.functional` covers (native, or pretrained GPT-2, GPT-NeoX, Llama, Mistral,
    Qwen2, Qwen3, Phi-3, Gemma 1-3, GPT-J, OPT, GPT-Neo, Phi, BLOOM)."""
    return covered_architecture(model)[0] is not None


def covered_architecture(
    model: TransformerBridge,
) -> tuple[functional.Architecture | None, str | None]:
    """`model`'s architecture and None where this engine covers it, else None and why not
    (one line)."""
    try:
        arch = functional.architecture_of(model)
    except ValueError as error:
        return None, str(error)
    if not arch.causal:
        return None, "the incremental engine needs causal attention"
    return arch, None


def first_position(space: IndexSpace, index: tuple[int, ...]) -> int:
    """The first position a patch at `index` (layer first) can change: its `pos`, else 0."""
    return index[space.axes.index("pos")] if "pos" in space.axes else 0


class _Half(Mapping[str, Tensor]):
    """One run's rows of the activations of the joint base + source forward pass, each
    sliced when first asked for (a sweep reads a few of them, not all)."""

    def __init__(self, both: dict[str, Tensor], rows: slice) -> None:
        self._both = both
        self._rows = rows
        self._sliced: dict[str, Tensor] = {}

    def __getitem__(self, name: str) -> Tensor:
        sliced = self._sliced.get(name)
        if sliced is None:
            sliced = self._sliced[name] = self._both[name][self._rows]
        return sliced

    def __iter__(self) -> Iterator[str]:
        return iter(self._both)

    def __len__(self) -> int:
        return len(self._both)


def patterns_needed(space: IndexSpace) -> bool:
    """Whether patching `space` reads the runs' attention patterns: a pattern target, or a
    value target (`z = pattern @ v` with the base run's pattern)."""
    return space.hook_name(0).endswith(("attn.hook_pattern", "attn.hook_v"))


class IncrementalPatcher:
    """Patched logits at the read positions for chunks of indices of one layer.

    Built once per sweep: runs the base and source prompts through `interp.functional`,
    caching every activation, then `patched_logits(space, chunk)` answers each chunk.
    With `patterns=False` the attention patterns are neither formed nor cached (each
    attention one fused kernel): for sweeps whose target is neither a pattern nor a
    value, the only ones that read them (`patterns_needed`).
    Host-side bookkeeping (which positions a chunk computes, which it patches) stays in
    Python numbers, so answering a chunk never waits for the device.

    `arch` and `validate=False` are for a caller that has done the checks already
    (`patch`): `arch` is the model's architecture from `covered_architecture` (default:
    resolved here, refusing a model this engine does not cover), and `validate=False`
    skips the check of the tokens against it (one host sync).
    """

    def __init__(
        self,
        model: TransformerBridge,
        base_tokens: Tensor,
        source_tokens: Tensor,
        read_positions: Sequence[int],
        *,
        last_layer_at_read: bool = False,
        patterns: bool = True,
        arch: functional.Architecture | None = None,
        validate: bool = True,
    ) -> None:
        if arch is None:
            arch, reason = covered_architecture(model)
            if arch is None:
                raise ValueError(f"{reason}; use engine='hooks'")
        self.arch = arch
        self.params: Params = functional.live_params(model)
        self.n_examples, self.n_pos = base_tokens.shape
        device = base_tokens.device
        self._device = device
        self.read_positions = sorted({int(position) for position in read_positions})
        """The read positions, sorted, as Python ints."""
        if not all(0 <= position < self.n_pos for position in self.read_positions or [-1]):
            raise ValueError(f"read positions must lie in [0, {self.n_pos}), got {read_positions}")
        first, last = self.read_positions[0], self.read_positions[-1]
        self.read_contiguous = last - first + 1 == len(self.read_positions)
        self._arange = torch.arange(self.n_pos, device=device)
        self.positions = self.arange(self.n_pos)
        """`0 .. n_pos - 1` on the device."""
        self.read = (
            self.positions[first : last + 1]
            if self.read_contiguous
            else torch.tensor(self.read_positions, device=device)
        )
        self.last_layer_at_read = last_layer_at_read
        """Whether the base and source runs computed the last layer at the read positions
        only (then its cached q, z, pattern, ... hold those rows; its k and v all)."""
        # Base and source prompts in one forward pass (half the per-op overhead).
        tokens = torch.cat([base_tokens, source_tokens])
        if validate:
            functional.check_tokens(tokens, arch)
        both: dict[str, Tensor] = {}
        logits = functional.forward(
            self.params,
            tokens,
            arch,
            cache=both,
            validate=False,  # the weights are the model's own; the tokens were checked
            patterns=patterns,
            **(
                {"last_layer_positions": self.read}
                if last_layer_at_read
                else {"logit_positions": self.read}
            ),
        )
        self.base_logits, self.source_logits = logits.split(self.n_examples)
        self.base: Mapping[str, Tensor] = _Half(both, slice(None, self.n_examples))
        self.source: Mapping[str, Tensor] = _Half(both, slice(self.n_examples, None))
        differs = (base_tokens != source_tokens).any(dim=0).tolist()
        self.first_difference = next(
            (position for position, differ in enumerate(differs) if differ), self.n_pos
        )
        """Positions before it hold the same tokens in both runs, hence (causal attention)
        the same activations: patches there change nothing."""
        self._buffer: Tensor | None = None
        """`[copy, batch, pos, vocab]`, NaN but at the read positions; grown on demand."""
        self._read_in_buffer = slice(first, last + 1) if self.read_contiguous else self.read
        """The read positions along the buffer's position axis, a slice where it can be."""
        self._grids: dict[tuple[int, ...], Tensor] = {}
        """`index_grid` by shape, made once per sweep."""

    def rope(self, layer: int) -> tuple[Tensor, Tensor] | None:
        """Cos and sin of every position for `layer` (rotary models; the cached q and k are
        unrotated), None without rotary embeddings."""
        return functional.rope_of(self.arch, layer, self.n_pos, self._device)

    def arange(self, n: int) -> Tensor:
        """`torch.arange(n)` on the device, a view of one kept tensor (grown on demand)."""
        if n > len(self._arange):
            self._arange = torch.arange(n, device=self._arange.device)
        return self._arange[:n]

    def index_grid(self, sizes: tuple[int, ...]) -> Tensor:
        """Every index over axes of `sizes`, in row-major order, `[prod(sizes), len(sizes)]`
        on the device: made once per shape from `arange` (no copy from the host), so that
        the indices of a chunk that runs consecutively in that order are a view of its rows.
        """
        grid = self._grids.get(sizes)
        if grid is None:
            flat = self.arange(math.prod(sizes))
            strides = [math.prod(sizes[axis + 1 :]) for axis in range(len(sizes))]
            columns = [flat // stride % size for stride, size in zip(strides, sizes, strict=True)]
            grid = self._grids[sizes] = torch.stack(columns, dim=1)
        return grid

    def full_logits(
        self, at_read: Float[Tensor, "copy batch n_read vocab"]
    ) -> Float[Tensor, "copy batch pos vocab"]:
        """Logits of every position holding `at_read` at the read positions and NaN
        everywhere else, for the metric to read (at most as many copies as a chunk of the
        hook engine runs, hence no more memory than its logits). One buffer is reused:
        read the result before the next call."""
        n_copies = at_read.shape[0]
        if self._buffer is None or self._buffer.shape[0] < n_copies:
            shape = (n_copies, self.n_examples, self.n_pos, at_read.shape[-1])
            self._buffer = None  # free the smaller one first
            self._buffer = at_read.new_full(shape, torch.nan)
        buffer = self._buffer[:n_copies]
        buffer[:, :, self._read_in_buffer] = at_read
        return buffer

    def patched_logits(
        self, space: IndexSpace, chunk: Sequence[tuple[int, ...]]
    ) -> Float[Tensor, "copy batch n_read vocab"]:
        """Logits of each copy at the read positions after patching its index (copy k of
        the base batch patched at `chunk[k]`; every index of `chunk` has the same layer).
        Read positions before the chunk's first patched position keep the base logits."""
        layer = chunk[0][0]
        if any(index[0] != layer for index in chunk):
            raise ValueError("a chunk of incremental patching must stay within one layer")
        p0 = max(min(first_position(space, index) for index in chunk), self.first_difference)
        n_copies = len(chunk)
        n_before = bisect.bisect_left(self.read_positions, p0)
        """Read positions before p0 keep the base run's logits."""
        kept = self.base_logits[:, :n_before].expand(n_copies, -1, -1, -1)
        if n_before == len(self.read_positions):
            return kept
        if self.last_layer_at_read and "pos" in space.axes:
            raise ValueError(
                "an IncrementalPatcher built with last_layer_at_read patches targets without "
                f"a position axis only, not {space.name!r}"
            )
        step = Step(self, n_copies, p0, n_before)
        resid = step.run(space, chunk)
        patched = functional.unembed(self.params, resid, self.arch)
        patched = patched.unflatten(0, (n_copies, self.n_examples))
        return patched if n_before == 0 else torch.cat([kept, patched], dim=2)
