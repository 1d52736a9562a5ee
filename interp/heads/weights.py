"""Per-head scores read off the weights alone: copying and Q/K/V composition.

Conventions are TransformerLens's (row vectors, `x @ W`): per head,
`W_Q, W_K, W_V: [d_model, d_head]`, `W_O: [d_head, d_model]`, `W_E: [d_vocab, d_model]`,
`W_U: [d_model, d_vocab_out]`, and the two circuits of Elhage et al. 2021, "A Mathematical
Framework for Transformer Circuits":

    W_QK = W_Q W_K^T     [d_model, d_model]   (score of query x, key y: x W_QK y^T)
    W_OV = W_V W_O       [d_model, d_model]   (what a head writes for an attended y: y W_OV)

Composition of an earlier head A into a later head B (Elhage et al. 2021):

    Q-composition  ||W_OV^A W_QK^B||_F   / (||W_OV^A||_F ||W_QK^B||_F)   A feeds B's queries
    K-composition  ||W_OV^A W_QK^B^T||_F / (||W_OV^A||_F ||W_QK^B||_F)   A feeds B's keys
    V-composition  ||W_OV^A W_OV^B||_F   / (||W_OV^A||_F ||W_OV^B||_F)   A feeds B's values

(the same matrices as TransformerLens's `all_composition_scores`). Each product is a
rank-d_head matrix, so its norm is computed from d_head x d_head factors (QR), never
forming d_model x d_model products for every pair. A random baseline (Gaussian weights of
the same shapes, seeded) tells signal from the score that unrelated subspaces give.

Copying (Olsson et al. 2022, after Elhage et al. 2021): the full OV circuit
`W_E W_V W_O W_U` ([d_vocab, d_vocab], the paper's W_U W_O W_V W_E transposed) maps a token
to the logits the head adds. A copying head raises the logit of the token it attends to,
i.e. the circuit has mostly positive eigenvalues. Its nonzero eigenvalues are those of the
d_head x d_head matrix `W_O W_U W_E W_V` (cyclic permutation), so

    copying = sum_i max(Re lambda_i, 0) / sum_i |lambda_i|        in [0, 1]

(`signed=True`: Elhage et al.'s `sum_i lambda_i / sum_i |lambda_i|`, in [-1, 1]). Identity
through embed/unembed gives 1; a negating head 0 (signed: -1).

Layer norms are not folded in unless asked (`fold_layer_norm`, pre-norm native models
only: each norm's scale multiplies the rows of the matrices that read its output). What
the weights alone cannot carry is left out: the per-head query and key norms of Qwen3 and
Gemma 3 (they rescale each query and key by its own norm, so W_QK is read before them),
and the norms after attention of Gemma 2 and 3 (W_OV is read before them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import pandas as pd
import torch
from jaxtyping import Complex, Float
from torch import Tensor

from interp.functional import architecture_of, dense_params, live_params
from interp.runs import Run

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

CompositionKind = Literal["Q", "K", "V"]
COMPOSITION_KINDS: tuple[CompositionKind, ...] = ("Q", "K", "V")


@dataclass(frozen=True)
class HeadWeights:
    """Per-head weight matrices of a model (detached float copies).

    Attributes:
        W_Q, W_K, W_V: `Float[Tensor, "layer head d_model d_head"]`.
        W_O: `Float[Tensor, "layer head d_head d_model"]`.
        W_E: `Float[Tensor, "d_vocab d_model"]` token embedding.
        W_U: `Float[Tensor, "d_model d_vocab_out"]` unembedding.
    """

    W_Q: Tensor
    W_K: Tensor
    W_V: Tensor
    W_O: Tensor
    W_E: Tensor
    W_U: Tensor

    def __post_init__(self) -> None:
        shape = tuple(self.W_Q.shape)
        if len(shape) != 4:
            raise ValueError(f"W_Q must be [layer, head, d_model, d_head], got {shape}")
        n_layers, n_heads, d_model, d_head = shape
        expected = {
            "W_K": shape,
            "W_V": shape,
            "W_O": (n_layers, n_heads, d_head, d_model),
        }
        for name, want in expected.items():
            if tuple(getattr(self, name).shape) != want:
                raise ValueError(f"{name} is {tuple(getattr(self, name).shape)}, expected {want}")
        if self.W_E.ndim != 2 or self.W_E.shape[1] != d_model:
            raise ValueError(f"W_E must be [d_vocab, {d_model}], got {tuple(self.W_E.shape)}")
        if self.W_U.ndim != 2 or self.W_U.shape[0] != d_model:
            raise ValueError(f"W_U must be [{d_model}, d_vocab_out], got {tuple(self.W_U.shape)}")

    @property
    def n_layers(self) -> int:
        return int(self.W_Q.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.W_Q.shape[1])


def weights_from_params(
    params: Mapping[str, Tensor],
    n_heads: int,
    *,
    fold_layer_norm: bool = False,
    norm_offset: float = 0.0,
) -> HeadWeights:
    """Per-head weights from a native model's state dict (the layout at the top of
    `interp.functional`: `blocks.{l}.attn.q.weight` is `[n_heads * d_head, d_model]`,
    head h in rows `h * d_head : (h + 1) * d_head`; `attn.o.weight` `[d_model, n_heads *
    d_head]`).

    With `fold_layer_norm`, `blocks.{l}.ln1.weight` scales the rows of layer l's W_Q, W_K,
    W_V and `ln_final.weight` those of W_U (centering and biases are ignored); each scale
    is `norm_offset + weight` (Gemma's norms: 1 + weight).
    """
    if "embed.weight" not in params or "unembed.weight" not in params:
        raise ValueError("params must hold 'embed.weight' and 'unembed.weight' (a native model)")
    n_layers = 0
    while f"blocks.{n_layers}.attn.q.weight" in params:
        n_layers += 1
    if n_layers == 0:
        raise ValueError("params has no 'blocks.0.attn.q.weight' (a native model's layout)")

    def per_head(weight: Tensor) -> Tensor:  # [H * d_head, d_model] -> [H, d_model, d_head]
        rows, d_model = weight.shape
        if rows % n_heads:
            raise ValueError(f"{rows} rows of a q/k/v weight do not split into {n_heads} heads")
        return weight.detach().float().reshape(n_heads, rows // n_heads, d_model).transpose(1, 2)

    stacks: dict[str, list[Tensor]] = {"q": [], "k": [], "v": [], "o": []}
    for layer in range(n_layers):
        prefix = f"blocks.{layer}"
        scale = params.get(f"{prefix}.ln1.weight") if fold_layer_norm else None
        for name in ("q", "k", "v"):
            weight = per_head(params[f"{prefix}.attn.{name}.weight"])
            if scale is not None:
                weight = weight * (norm_offset + scale.detach().float())[None, :, None]
            stacks[name].append(weight)
        out = params[f"{prefix}.attn.o.weight"].detach().float()  # [d_model, H * d_head]
        d_model = out.shape[0]
        stacks["o"].append(out.T.reshape(n_heads, -1, d_model))
    unembed = params["unembed.weight"].detach().float().T.clone()  # [d_model, d_vocab_out]
    final_scale = params.get("ln_final.weight") if fold_layer_norm else None
    if final_scale is not None:
        unembed = unembed * (norm_offset + final_scale.detach().float())[:, None]
    return HeadWeights(
        W_Q=torch.stack(stacks["q"]).clone(),
        W_K=torch.stack(stacks["k"]).clone(),
        W_V=torch.stack(stacks["v"]).clone(),
        W_O=torch.stack(stacks["o"]).clone(),
        W_E=params["embed.weight"].detach().float().clone(),
        W_U=unembed,
    )


def head_weights(model: TransformerBridge, *, fold_layer_norm: bool = False) -> HeadWeights:
    """Per-head weights of a bridge.

    Native models (built by `interp.models.build`) and the pretrained classes
    `interp.functional` covers are read from their weights in the native layout
    (`weights_from_params` on `dense_params`: grouped key and value heads repeated).
    Any other bridge is read through TransformerLens's stacked properties `model.W_Q` /
    `W_K` / `W_V` `[layer, head, d_model, d_head]`, `model.W_O`, `model.W_E`, `model.W_U`
    (grouped K/V heads are repeated to n_heads). `fold_layer_norm` is for the pre-norm
    models of the first kind only.
    """
    try:
        arch = architecture_of(model)
    except ValueError:
        arch = None
    if arch is not None:  # grouped keys and values repeated for each head of their group
        params = dense_params(live_params(model), arch)
        return weights_from_params(params, arch.n_heads, fold_layer_norm=fold_layer_norm,
                                   norm_offset=1.0 if arch.normalization == "RMS1P" else 0.0)
    if fold_layer_norm:
        raise ValueError(
            "fold_layer_norm is only supported for pre-norm models that interp.functional "
            "covers (native, GPT-2, GPT-NeoX, the Llama family); this bridge's norms may "
            "sit elsewhere (BERT is post-norm)"
        )
    try:
        with torch.no_grad():
            n_heads = int(model.cfg.n_heads)

            def kv(w: Tensor) -> Tensor:
                if w.shape[1] != n_heads:
                    w = w.repeat_interleave(n_heads // w.shape[1], dim=1)
                return w

            return HeadWeights(
                W_Q=model.W_Q.detach().float().clone(),
                W_K=kv(model.W_K.detach().float()).clone(),
                W_V=kv(model.W_V.detach().float()).clone(),
                W_O=model.W_O.detach().float().clone(),
                W_E=model.W_E.detach().float().clone(),
                W_U=model.W_U.detach().float().clone(),
            )
    except (AttributeError, NotImplementedError, RuntimeError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"this bridge does not expose per-head weights: {first}") from None


# -- copying


def full_ov_eigenvalues(
    weights: HeadWeights,
) -> Complex[Tensor, "layer head d_head"]:
    """Eigenvalues of `W_O W_U W_E W_V` per head: the nonzero eigenvalues of the full OV
    circuit `W_E W_V W_O W_U` (complex; computed in float64)."""
    if weights.W_E.shape[0] != weights.W_U.shape[1]:
        raise ValueError(
            f"the full OV circuit is square only when d_vocab == d_vocab_out; got "
            f"{weights.W_E.shape[0]} and {weights.W_U.shape[1]}"
        )
    unembed_embed = weights.W_U.double() @ weights.W_E.double()  # [d_model, d_model]
    small = weights.W_O.double() @ unembed_embed @ weights.W_V.double()  # [L, H, dh, dh]
    return torch.linalg.eigvals(small)


def copying_scores(weights: HeadWeights, *, signed: bool = False) -> Float[Tensor, "layer head"]:
    """Copying score per head (module docstring): share of the eigenvalue mass of the full
    OV circuit that is positive, or with `signed` `sum(lambda) / sum(|lambda|)`.
    NaN for a head whose OV circuit is zero."""
    eigenvalues = full_ov_eigenvalues(weights)
    real = eigenvalues.real
    numerator = real.sum(-1) if signed else real.clamp_min(0).sum(-1)
    total = eigenvalues.abs().sum(-1)
    nan = torch.full_like(total, float("nan"))
    return torch.where(total > 0, numerator / total.clamp_min(1e-300), nan).float()


# -- composition


def _r_factor(matrix: Float[Tensor, "n d_model d_head"]) -> Float[Tensor, "n r d_head"]:
    """R of `matrix = Q R` (Q with orthonormal columns): `||matrix @ X||_F = ||R @ X||_F`."""
    return torch.linalg.qr(matrix, mode="r")[1]


def composition_scores(
    weights: HeadWeights, kind: CompositionKind
) -> Float[Tensor, "layer head later_layer later_head"]:
    """Q-, K- or V-composition score of every head (layer, head) into every head of a later
    layer (Elhage et al. 2021; formulas in the module docstring). NaN where the second head
    is not in a later layer."""
    if kind not in COMPOSITION_KINDS:
        raise ValueError(f"kind must be one of {COMPOSITION_KINDS}, got {kind!r}")
    n_layers, n_heads, d_model, d_head = weights.W_Q.shape
    n = n_layers * n_heads

    def flat(w: Tensor) -> Tensor:
        return w.detach().double().reshape(n, *w.shape[2:])

    w_q, w_k, w_v, w_o = flat(weights.W_Q), flat(weights.W_K), flat(weights.W_V), flat(weights.W_O)
    # The later head's matrix as left @ right^T, both [n, d_model, d_head].
    if kind == "Q":
        left, right = w_q, w_k
    elif kind == "K":
        left, right = w_k, w_q
    else:
        left, right = w_v, w_o.transpose(1, 2)
    r_value = _r_factor(w_v)  # [n, r, d_head]
    r_right = _r_factor(right)  # [n, r, d_head]
    r_out = _r_factor(w_o.transpose(1, 2))
    earlier_norm = (r_value @ r_out.transpose(1, 2)).flatten(1).norm(dim=1)  # ||W_OV^A||_F
    later_norm = (_r_factor(left) @ r_right.transpose(1, 2)).flatten(1).norm(dim=1)

    scores = torch.full((n_layers, n_heads, n_layers, n_heads), float("nan"), dtype=torch.float64)
    for layer in range(n_layers - 1):
        earlier = slice(layer * n_heads, (layer + 1) * n_heads)
        later = slice((layer + 1) * n_heads, n)
        # W_OV^A M^B = V_A (O_A left_B) right_B^T, normed through the R factors
        n_later = n - (layer + 1) * n_heads
        middle = w_o[earlier].reshape(-1, d_model) @ left[later].permute(1, 0, 2).reshape(
            d_model, -1
        )  # [heads * d_head, later heads * d_head]
        middle = middle.reshape(n_heads, d_head, n_later, d_head).transpose(1, 2)
        product = r_value[earlier][:, None] @ middle @ r_right[later][None].transpose(-1, -2)
        norms = product.flatten(2).norm(dim=-1)  # [heads, later heads]
        denominator = earlier_norm[earlier][:, None] * later_norm[later][None, :]
        ratio = norms / denominator
        scores[layer, :, layer + 1 :] = ratio.reshape(n_heads, n_layers - layer - 1, n_heads)
    return scores.float()


def _random_like(weights: HeadWeights, generator: torch.Generator) -> HeadWeights:
    """Gaussian head weights of `weights`' shapes (drawn on the CPU from `generator`, so the
    same on every device, then moved to the weights' device), with its W_E and W_U."""
    def gaussian(t: Tensor) -> Tensor:
        drawn = torch.randn(t.shape, generator=generator, dtype=torch.float64).float()
        return drawn.to(t.device)

    return HeadWeights(
        W_Q=gaussian(weights.W_Q),
        W_K=gaussian(weights.W_K),
        W_V=gaussian(weights.W_V),
        W_O=gaussian(weights.W_O),
        W_E=weights.W_E,
        W_U=weights.W_U,
    )


def composition_baseline(
    weights: HeadWeights, *, n_samples: int = 4, seed: int = 0
) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and standard deviation of each composition score over every downstream pair of
    `n_samples` draws of i.i.d. Gaussian W_Q, W_K, W_V, W_O with `weights`' shapes (the
    scores are scale-free, so the variance does not matter). NaN with one layer."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    generator = torch.Generator().manual_seed(seed)
    pooled: dict[str, list[Tensor]] = {kind: [] for kind in COMPOSITION_KINDS}
    for _ in range(n_samples):
        random = _random_like(weights, generator)
        for kind in COMPOSITION_KINDS:
            values = composition_scores(random, kind)
            pooled[kind].append(values[~values.isnan()])
    means, stds = {}, {}
    for kind, parts in pooled.items():
        values = torch.cat(parts).double()
        means[kind] = float(values.mean()) if values.numel() else float("nan")
        stds[kind] = float(values.std()) if values.numel() > 1 else float("nan")
    return means, stds


@dataclass(frozen=True)
class HeadComposition:
    """Composition scores between heads, with their random baseline.

    Attributes:
        scores: "Q", "K", "V" -> `Float[Tensor, "layer head later_layer later_head"]`
            (NaN where the second head is not in a later layer).
        baseline_mean: Per kind, the mean score of random Gaussian weights.
        baseline_std: Per kind, its standard deviation over head pairs and draws.
    """

    scores: dict[str, Tensor]
    baseline_mean: dict[str, float] = field(default_factory=dict)
    baseline_std: dict[str, float] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """Long format, downstream pairs only: columns kind, layer, head, later_layer,
        later_head, score, baseline (the kind's random mean), ratio (score / baseline)."""
        frames = []
        for kind, values in self.scores.items():
            index = (~values.isnan()).nonzero()
            score = values[~values.isnan()].double()
            baseline = self.baseline_mean.get(kind, float("nan"))
            frames.append(
                pd.DataFrame(
                    {
                        "kind": kind,
                        "layer": index[:, 0].tolist(),
                        "head": index[:, 1].tolist(),
                        "later_layer": index[:, 2].tolist(),
                        "later_head": index[:, 3].tolist(),
                        "score": score.tolist(),
                        "baseline": baseline,
                        "ratio": (score / baseline).tolist(),
                    }
                )
            )
        return pd.concat(frames, ignore_index=True)

    def save(self, run: Run | str | os.PathLike[str], name: str = "head_composition") -> None:
        """Write `artifacts/<name>.safetensors` (scores) and `artifacts/<name>.json`."""
        run = Run.open(run)
        run.save_tensors(name, dict(self.scores))
        run.save_json(
            name,
            {
                "kinds": list(self.scores),
                "baseline_mean": self.baseline_mean,
                "baseline_std": self.baseline_std,
            },
        )

    @classmethod
    def load(
        cls, run: Run | str | os.PathLike[str], name: str = "head_composition"
    ) -> HeadComposition:
        """The scores written by `save(run, name)`."""
        run = Run.open(run)
        meta = run.load_json(name)
        tensors = run.load_tensors(name)

        def floats(d: Mapping[str, object]) -> dict[str, float]:
            return {k: float("nan") if v is None else float(v) for k, v in d.items()}

        return cls(
            scores={kind: tensors[kind] for kind in meta["kinds"]},
            baseline_mean=floats(meta["baseline_mean"]),
            baseline_std=floats(meta["baseline_std"]),
        )


def head_composition(
    source: TransformerBridge | HeadWeights, *, baseline_samples: int = 4, seed: int = 0
) -> HeadComposition:
    """Q-, K- and V-composition scores of every downstream head pair, with the random
    baseline (`composition_baseline`, `baseline_samples` draws seeded with `seed`)."""
    weights = source if isinstance(source, HeadWeights) else head_weights(source)
    scores = {kind: composition_scores(weights, kind) for kind in COMPOSITION_KINDS}
    mean, std = composition_baseline(weights, n_samples=baseline_samples, seed=seed)
    return HeadComposition(scores=scores, baseline_mean=mean, baseline_std=std)
