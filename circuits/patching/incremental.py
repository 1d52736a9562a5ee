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
  source runs do the same, since no patch then needs their last layer elsewhere.

The arithmetic is `interp.functional`'s, which equals the bridge's, so the values equal
those of the hook engine (and of TransformerLens) to float rounding. It covers the causal
native models of `interp.models.build` without rotary embeddings (`supports(model)`);
other models go through the hook engine. Hooks a user attached to the bridge are not run here.

The metric sees full `[batch, pos, vocab]` logits holding the patched logits at the read
positions and NaN everywhere else, so that a metric reading other positions gives NaN,
which `patch` reports instead of returning wrong numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from circuits.patching.targets import IndexSpace
from interp import functional
from interp.functional import Architecture
from interp.models import spec_of

Params = dict[str, Tensor]


def supports(model: TransformerBridge) -> bool:
    """Whether `model` is a native model this engine reproduces exactly."""
    return _architecture_of(model) is not None


def _architecture_of(model: TransformerBridge) -> Architecture | None:
    spec = spec_of(model)
    if spec is None:
        return None
    try:
        arch = functional.architecture(spec)
    except ValueError:
        return None
    return None if arch.rotary or not arch.causal else arch


def first_position(space: IndexSpace, index: tuple[int, ...]) -> int:
    """The first position a patch at `index` (layer first) can change: its `pos`, else 0."""
    return index[space.axes.index("pos")] if "pos" in space.axes else 0


class IncrementalPatcher:
    """Patched logits at the read positions for chunks of indices of one layer.

    Built once per sweep: runs the base and source prompts through `interp.functional`,
    caching every activation, then `logits(space, chunk, sources)` answers each chunk.
    """

    def __init__(
        self,
        model: TransformerBridge,
        base_tokens: Tensor,
        source_tokens: Tensor,
        read_positions: Sequence[int],
        *,
        last_layer_at_read: bool = False,
    ) -> None:
        arch = _architecture_of(model)
        if arch is None:
            raise ValueError(
                "the incremental patching engine covers causal native models built by "
                "interp.models.build without rotary embeddings; use engine='hooks'"
            )
        self.arch = arch
        self.params: Params = functional.live_params(model)
        spec = spec_of(model)
        assert spec is not None  # checked by _architecture_of
        self.n_examples, self.n_pos = base_tokens.shape
        self.read = torch.tensor(sorted(set(read_positions)), device=base_tokens.device)
        self.last_layer_at_read = last_layer_at_read
        """Whether the base and source runs computed the last layer at the read positions
        only (then its cached q, z, pattern, ... hold those rows; its k and v all)."""
        # Base and source prompts in one forward pass (half the per-op overhead).
        both: dict[str, Tensor] = {}
        logits = functional.forward(
            self.params,
            torch.cat([base_tokens, source_tokens]),
            spec,
            cache=both,
            **(
                {"last_layer_positions": self.read}
                if last_layer_at_read
                else {"logit_positions": self.read}
            ),
        )
        self.base_logits, self.source_logits = logits.split(self.n_examples)
        self.base = {name: t[: self.n_examples] for name, t in both.items()}
        self.source = {name: t[self.n_examples :] for name, t in both.items()}
        differs = (base_tokens != source_tokens).any(dim=0).nonzero()
        self.first_difference = int(differs[0]) if len(differs) else self.n_pos
        """Positions before it hold the same tokens in both runs, hence (causal attention)
        the same activations: patches there change nothing."""
        vocab = self.base_logits.shape[-1]
        self._buffer = self.base_logits.new_full((self.n_examples, self.n_pos, vocab), torch.nan)
        first, last = int(self.read[0]), int(self.read[-1])
        contiguous = last - first + 1 == len(self.read)
        self._read_in_buffer = slice(first, last + 1) if contiguous else self.read
        """The read positions along the buffer's position axis, a slice where it can be."""

    def full_logits(self, at_read: Tensor) -> Tensor:
        """`[batch, pos, vocab]` logits holding `at_read` (`[batch, n_read, vocab]`) at the
        read positions and NaN everywhere else, for the metric to read. One buffer is
        reused: read the result before the next call."""
        self._buffer[:, self._read_in_buffer] = at_read
        return self._buffer

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
        logits = self.base_logits.repeat(n_copies, 1, 1).unflatten(0, (n_copies, -1))
        computed = self.read >= p0
        if not bool(computed.any()):
            return logits
        if self.last_layer_at_read and "pos" in space.axes:
            raise ValueError(
                "an IncrementalPatcher built with last_layer_at_read patches targets without "
                f"a position axis only, not {space.name!r}"
            )
        step = _Step(self, n_copies, p0, computed)
        resid = step.run(space, chunk)
        patched = functional.unembed(self.params, resid, self.arch)
        logits[:, :, computed] = patched.unflatten(0, (n_copies, self.n_examples))
        return logits


def _activation_name(space: IndexSpace) -> str:
    """`resid_pre`, `z`, `pattern`, ... from the hook name of `space`."""
    return space.hook.rsplit("hook_", 1)[1]


class _Step:
    """One chunk's forward pass from the patched activation on (K copies of the batch)."""

    def __init__(self, patcher: IncrementalPatcher, n_copies: int, p0: int, computed: Tensor):
        self.patcher = patcher
        self.params = patcher.params
        self.arch = patcher.arch
        self.n_copies = n_copies
        self.p0 = p0
        read = patcher.read[computed]
        self.read = read
        self.read_rows = computed.nonzero().flatten()
        """Where `read` sits among all read positions: its rows in the last layer's cache
        when that holds the read positions only."""
        self.live = torch.arange(p0, patcher.n_pos, device=read.device)

    def repeat(self, tensor: Tensor) -> Tensor:
        """`[batch, ...]` -> `[K * batch, ...]`, copy-major like the patched batch."""
        return tensor.repeat(self.n_copies, *([1] * (tensor.ndim - 1)))

    def base(self, name: str) -> Tensor:
        return self.repeat(self.patcher.base[name])

    def rows(self, layer: int, start: int = 0) -> slice | Tensor:
        """Where the positions layer `layer` computes (`queries(layer)`) sit along an axis
        holding positions `start..`: a slice from p0 on (a view), or the read positions in
        the last layer."""
        if layer == self.arch.n_layers - 1:
            return self.read - start
        return slice(self.p0 - start, None)

    def cache_rows(self, layer: int) -> slice | Tensor:
        """`rows(layer)` in the base and source runs' q, z, pattern and resid_mid of
        `layer` (the last layer's hold the read positions only when the patcher was built
        with `last_layer_at_read`)."""
        if self.patcher.last_layer_at_read and layer == self.arch.n_layers - 1:
            return self.read_rows
        return self.rows(layer)

    def at_rows(self, tensor: Tensor, layer: int, start: int = 0) -> Tensor:
        """`tensor[:, rows(layer, start)]`."""
        return tensor[:, self.rows(layer, start)]

    def queries(self, layer: int) -> Tensor:
        """Positions whose output layer `layer` must compute: all from p0 on, or, in the
        last layer, the read positions."""
        return self.read if layer == self.arch.n_layers - 1 else self.live

    def patched(self, space: IndexSpace, chunk: Sequence[tuple[int, ...]]) -> Tensor:
        """The hooked activation of the chunk's layer, `[K * batch, ...]`, with copy k
        patched at `chunk[k]` from the source run (the setters of `targets.py`)."""
        name = space.hook_name(chunk[0][0])
        full = self.base(name)
        per_copy = full.unflatten(0, (self.n_copies, self.patcher.n_examples))
        source = self.patcher.source[name]
        for copy, index in enumerate(chunk):
            space.setter(per_copy[copy], tuple(index[1:]), source)
        return full

    def run(self, space: IndexSpace, chunk: Sequence[tuple[int, ...]]) -> Tensor:
        """The chunk's forward pass from its patched activation on; returns the final
        residual stream at the read positions, `[K * batch, n_read, d_model]`."""
        name, layer = _activation_name(space), chunk[0][0]
        if name == "z":
            return self.after_mid(layer, self.with_head_outputs_patched(space, chunk))
        return self.enter(name, layer, self.patched(space, chunk))

    def with_head_outputs_patched(
        self, space: IndexSpace, chunk: Sequence[tuple[int, ...]]
    ) -> Tensor:
        """`resid_mid` of the chunk's layer at `queries(layer)`, copy k with the head (and
        position, for `z_by_pos`) of `chunk[k]` patched.

        The attention output is linear in each head's `z`, so patching head h adds
        `(z_source - z_base)[h] @ W_O[h]` to the base run's `resid_mid`: one
        `d_head x d_model` product per copy instead of the whole `W_O` on a patched copy."""
        layer = chunk[0][0]
        rows = self.cache_rows(layer)
        name = space.hook_name(layer)
        change = (self.patcher.source[name] - self.patcher.base[name])[:, rows]
        device = change.device
        heads = torch.tensor([index[space.axes.index("head")] for index in chunk], device=device)
        w_o = self.params[f"blocks.{layer}.attn.o.weight"]  # [d_model, head * d_head]
        w_o = w_o.T.unflatten(0, (self.arch.n_heads, self.arch.d_head))[heads]
        added = torch.einsum("bqkd,kdm->kbqm", change[:, :, heads], w_o)
        if "pos" in space.axes:
            at_pos = [index[space.axes.index("pos")] for index in chunk]
            at = self.queries(layer)[None, :] == torch.tensor(at_pos, device=device)[:, None]
            added = added * at[:, None, :, None]
        block = f"blocks.{layer}"
        resid_mid = self.patcher.base.get(f"{block}.hook_resid_mid")
        if resid_mid is None:  # attention-only: no MLP, resid_post is resid_pre + attn_out
            resid_mid = self.patcher.base[f"{block}.hook_resid_post"]
        return (added + resid_mid[:, rows]).flatten(0, 1)

    def enter(self, name: str, layer: int, full: Tensor) -> Tensor:
        """Continue the forward pass from activation `name` of `layer` (all positions);
        returns the final residual stream at the read positions."""
        block = f"blocks.{layer}"
        if name == "resid_pre":
            return self.layers(layer, full[:, self.p0 :])
        if name == "resid_mid":
            return self.after_mid(layer, self.at_rows(full, layer))
        if name == "attn_out":
            resid_mid = self.plus_base(f"{block}.hook_resid_pre", self.at_rows(full, layer))
            return self.after_mid(layer, resid_mid)
        if name == "mlp_out":
            resid_post = self.plus_base(f"{block}.hook_resid_mid", self.at_rows(full, layer))
            return self.after_post(layer, resid_post)
        if name == "resid_post":
            return self.after_post(layer, self.at_rows(full, layer))
        return self.after_z(layer, self.head_outputs(name, layer, full, self.queries(layer)))

    def head_outputs(self, name: str, layer: int, full: Tensor, rows: Tensor) -> Tensor:
        """Each head's `z` at `rows` when the attention's `name` (z, q, k, v or pattern)
        is `full` and everything else is the base run's."""
        cached = self.cache_rows(layer)
        attn = f"blocks.{layer}.attn"
        q, k, v = (self.base(f"{attn}.hook_{part}") for part in ("q", "k", "v"))
        if name == "pattern":
            pattern = full[:, :, cached]
            z, _ = functional.mix_heads(None, None, v, rows, self.arch, pattern=pattern)
            return z
        if name == "v":
            pattern = self.base(f"{attn}.hook_pattern")[:, :, cached]
            z, _ = functional.mix_heads(None, None, full, rows, self.arch, pattern=pattern)
            return z
        if name == "q":
            q = full
        elif name == "k":
            k = full
        else:
            raise ValueError(f"incremental patching has no rule for activation {name!r}")
        z, _ = functional.mix_heads(q[:, cached], k, v, rows, self.arch)
        return z

    def after_z(self, layer: int, z: Tensor) -> Tensor:
        block = f"blocks.{layer}"
        attn_out = functional.attention_output(self.params, f"{block}.attn", z)
        return self.after_mid(layer, self.plus_base(f"{block}.hook_resid_pre", attn_out))

    def plus_base(self, name: str, change: Tensor) -> Tensor:
        """`change` (`[K * batch, rows, d_model]` at `queries(layer)`) plus the base run's
        activation `name` of that layer (whose cache covers every position) at those rows."""
        layer = int(name.split(".")[1])
        base = self.at_rows(self.patcher.base[name], layer)
        return (change.unflatten(0, (self.n_copies, -1)) + base).flatten(0, 1)

    def after_mid(self, layer: int, resid: Tensor) -> Tensor:
        return self.after_post(layer, self.with_mlp(layer, resid))

    def with_mlp(self, layer: int, resid: Tensor) -> Tensor:
        """`resid_mid` -> `resid_post` of `layer` (the identity in attention-only models)."""
        if self.arch.d_mlp is None:
            return resid
        normed = self.norm(f"blocks.{layer}.ln2", resid)
        return resid + functional.mlp(self.params, f"blocks.{layer}.mlp", normed, self.arch)

    def after_post(self, layer: int, resid: Tensor) -> Tensor:
        if layer == self.arch.n_layers - 1:
            return resid
        return self.layers(layer + 1, resid)

    def layers(self, start: int, resid: Tensor) -> Tensor:
        """Blocks `start..` on the residual stream at positions p0.. (`[K * batch, live,
        d_model]`), reusing the base run's keys and values before p0."""
        for layer in range(start, self.arch.n_layers):
            attn = f"blocks.{layer}.attn"
            rows = self.queries(layer)
            normed = self.norm(f"blocks.{layer}.ln1", resid)
            q = functional.head_projection(
                self.params, attn, "q", self.at_rows(normed, layer, self.p0), self.arch
            )
            k, v = (
                self.with_prefix(
                    f"{attn}.hook_{part}",
                    functional.head_projection(self.params, attn, part, normed, self.arch),
                )
                for part in ("k", "v")
            )
            z, _ = functional.mix_heads(q, k, v, rows, self.arch)
            attn_out = functional.attention_output(self.params, attn, z)
            resid = self.with_mlp(layer, self.at_rows(resid, layer, self.p0) + attn_out)
        return resid

    def with_prefix(self, name: str, live: Tensor) -> Tensor:
        """Keys or values of every position: the base run's before p0, then `live`."""
        if self.p0 == 0:
            return live
        prefix = self.repeat(self.patcher.base[name][:, : self.p0])
        return torch.cat([prefix, live], dim=1)

    def norm(self, prefix: str, resid: Tensor) -> Tensor:
        return functional.normalize(
            self.params, prefix, resid, self.arch.normalization, self.arch.eps
        )
