"""Per-head scores read off attention patterns, for every (layer, head) at once.

Scores, one value per head (means over the queries that have a valid target; a query with
no valid target, e.g. position 0 for `previous_token`, is left out, not counted as zero;
padding queries and keys are left out):

    previous_token    attention from position i to i-1
    next_token        attention from i to i+1 (bidirectional encoders; NaN for causal models)
    duplicate_token   attention to earlier positions holding the same token as i
    induction         attention to the position right after an earlier occurrence of the
                      token at i (prefix matching on repeated random tokens, Olsson et al.
                      2022, "In-context Learning and Induction Heads")
    first_token       attention to the first (non-padding) position: the "sink" mass
    special_token     attention to positions whose token id is in a given set ([CLS], [SEP])
                      (Clark et al. 2019, "What Does BERT Look At?")
    entropy           entropy of each query's attention row in nats (Clark et al. 2019)
    confidence        the largest attention weight of each query (Voita et al. 2019,
                      "Analyzing Multi-Head Self-Attention")
    positional_prev   share of queries whose argmax key is at relative offset -1; Voita et
    positional_next   al. call a head positional at offset d when this share is >= 0.9
    tl_previous_token, tl_duplicate_token, tl_induction
                      TransformerLens `head_detector` scores (see `pattern_sums`)

plus `offset_profile[layer, head, j]`: the mean attention at relative offset
`offsets[j]` (key - query), over the queries whose key at that offset exists.

Causal models: a key after the query is not a valid target, so `next_token` and positive
offsets are NaN. Whether patterns are causal is read from the model config, or inferred
from the patterns when only patterns are given: causal when every real key after a real
query gets exactly zero attention (padded query rows, which Hugging Face models fill
uniformly, are not read). Patterns must be probabilities (>= 0, rows summing to 1 on real
queries); raw scores raise ValueError. Entropy and confidence read each real query's row
over its visible real keys, renormalised to sum to 1 (a no-op when the model gave
padding keys no attention). Every sum is accumulated batch by batch, so a run in batches
gives the same numbers as one big batch. Nothing given in (patterns, cache, model) is ever
modified.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.activations.inputs import check_token_tensor
from interp.heads.head_scores import (
    DEFAULT_OFFSETS,
    DETECTOR_SCORES,
    MASS_SCORES,
    SCORE_NAMES,
    HeadScores,
)
from interp.heads.pattern_sums import ErrorMeasure, ScoreAccumulator

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "DEFAULT_OFFSETS",
    "DETECTOR_SCORES",
    "MASS_SCORES",
    "SCORE_NAMES",
    "ErrorMeasure",
    "HeadScores",
    "eval_mode",
    "induction_probe_scores",
    "model_pattern_scores",
    "pattern_scores",
    "repeated_random_tokens",
]


# -- inputs


def _pattern_layers(patterns: Any) -> list[Float[Tensor, "batch head query key"]]:
    """[batch layer head q k] tensor, or a dict/cache of `blocks.{l}.attn.hook_pattern`."""
    if isinstance(patterns, Tensor):
        if patterns.ndim != 5:
            raise ValueError(
                "patterns must be [batch, layer, head, query, key]; "
                f"got a {patterns.ndim}-d tensor {tuple(patterns.shape)}"
            )
        return list(patterns.unbind(1))
    if not (hasattr(patterns, "keys") and hasattr(patterns, "__getitem__")):
        raise ValueError(
            "patterns must be a tensor [batch, layer, head, query, key] or a dict/cache of "
            f"blocks.{{l}}.attn.hook_pattern; got {type(patterns).__name__}"
        )
    names = set(patterns.keys())
    layers = []
    while f"blocks.{len(layers)}.attn.hook_pattern" in names:
        layers.append(patterns[f"blocks.{len(layers)}.attn.hook_pattern"])
    if not layers:
        raise ValueError("patterns has no 'blocks.0.attn.hook_pattern' entry")
    shapes = {tuple(p.shape) for p in layers}
    if len(shapes) != 1 or len(next(iter(shapes))) != 4:
        raise ValueError(f"hook_pattern entries must all be [batch, head, q, k]; got {shapes}")
    return layers


def _check_inputs(layers: Sequence[Tensor], tokens: Tensor, padding_mask: Tensor | None) -> None:
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.is_floating_point():
        raise ValueError("tokens must be an integer tensor [batch, pos]")
    batch, _, n_query, n_key = layers[0].shape
    if batch == 0 or n_query == 0:
        raise ValueError(f"patterns hold no sequences or no positions: {tuple(layers[0].shape)}")
    if n_query != n_key or (batch, n_query) != tuple(tokens.shape):
        raise ValueError(
            f"patterns are [batch={batch}, head, {n_query}, {n_key}] but tokens are "
            f"{tuple(tokens.shape)}; they must agree on batch and positions"
        )
    _check_padding_mask(padding_mask, tokens)


def _check_padding_mask(padding_mask: Tensor | None, tokens: Tensor) -> None:
    """None, or a mask of the tokens' shape that marks at least one real token."""
    if padding_mask is None:
        return
    if tuple(padding_mask.shape) != tuple(tokens.shape):
        raise ValueError(
            f"padding_mask is {tuple(padding_mask.shape)}, tokens {tuple(tokens.shape)}"
        )
    if not bool(padding_mask.bool().any()):
        raise ValueError("padding_mask marks no real token: there is nothing to score")


def _check_options(offsets: Sequence[int], error_measure: str) -> tuple[int, ...]:
    """The offsets as a tuple of ints (a non-empty sequence of integers is required), after
    checking the detector's error measure ("mul" or "abs")."""
    if isinstance(offsets, str | bytes) or not isinstance(offsets, Iterable):
        raise ValueError(f"offsets must be a sequence of ints, got {offsets!r}")
    values = list(offsets)
    if not values:
        raise ValueError("offsets must name at least one relative offset")
    not_int = [value for value in values if _as_int(value) is None]
    if not_int:
        raise ValueError(f"offsets must be ints, got {not_int[0]!r}")
    if error_measure not in ("mul", "abs"):
        raise ValueError(f"tl_error_measure must be 'mul' or 'abs', got {error_measure!r}")
    return tuple(operator.index(value) for value in values)


def _as_int(value: Any) -> int | None:
    """`value` as an int when it is an integer (not a bool, not a float), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def pattern_scores(
    patterns: Float[Tensor, "batch layer head query key"] | Mapping[str, Tensor] | Any,
    tokens: Int[Tensor, "batch pos"],
    *,
    padding_mask: Int[Tensor, "batch pos"] | None = None,
    special_token_ids: Sequence[int] = (),
    offsets: Sequence[int] = DEFAULT_OFFSETS,
    causal: bool | None = None,
    tl_exclude_bos: bool = False,
    tl_exclude_current_token: bool = False,
    tl_error_measure: ErrorMeasure = "mul",
) -> HeadScores:
    """Every pattern score of every head (see the module docstring).

    Args:
        patterns: `[batch, layer, head, query, key]`, or a dict / `ActivationCache` holding
            `blocks.{l}.attn.hook_pattern` `[batch, head, query, key]`. Read only.
        tokens: The token ids the patterns were computed on.
        padding_mask: 1 (or True) for real tokens, 0 for padding; None = all real.
        special_token_ids: Token ids counted by `special_token` (e.g. [CLS], [SEP]).
        offsets: Relative offsets (key - query) of the offset profile, ints.
        causal: Whether keys after the query are out of reach; None infers it from the
            patterns (zero attention from every real query to every later real key).
        tl_exclude_bos, tl_exclude_current_token, tl_error_measure: The options of
            TransformerLens `detect_head` for the `tl_*` scores.
    """
    layers = _pattern_layers(patterns)
    _check_inputs(layers, tokens, padding_mask)
    offsets = _check_options(offsets, tl_error_measure)
    detector = (tl_exclude_bos, tl_exclude_current_token, tl_error_measure)
    accumulator = ScoreAccumulator(special_token_ids, offsets, causal, detector)
    with torch.no_grad():
        accumulator.add(layers, tokens, padding_mask)
    return accumulator.result()


# -- running a model


@contextmanager
def eval_mode(model: TransformerBridge) -> Iterator[None]:
    """Eval mode for the block; every module's own training flag is restored afterwards."""
    modules = list(model.modules())
    original = getattr(model, "original_model", None)
    if isinstance(original, torch.nn.Module):
        modules.extend(original.modules())
    flags = [(module, module.training) for module in modules]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def _model_causal(model: TransformerBridge) -> bool | None:
    direction = getattr(model.cfg, "attention_dir", None)
    if direction == "causal":
        return True
    if direction == "bidirectional":
        return False
    return None


def _is_pattern_hook(name: str) -> bool:
    return name.endswith("attn.hook_pattern")


def model_pattern_scores(
    model: TransformerBridge,
    tokens: Int[Tensor, "batch pos"],
    *,
    padding_mask: Int[Tensor, "batch pos"] | None = None,
    batch_size: int = 32,
    special_token_ids: Sequence[int] | None = None,
    offsets: Sequence[int] = DEFAULT_OFFSETS,
    tl_exclude_bos: bool = False,
    tl_exclude_current_token: bool = False,
    tl_error_measure: ErrorMeasure = "mul",
) -> HeadScores:
    """Run `model` on `tokens` in batches and score every head's attention patterns.

    Only `hook_pattern` is cached (`run_with_cache(..., names_filter=...)`) under
    `torch.inference_mode()`, with the model in eval mode; every module's training flag is
    restored afterwards, and weights and hooks are left as they were. With a
    `padding_mask`, it is passed to the model as `attention_mask`.

    Args:
        model: Any `TransformerBridge`.
        tokens: Token ids `[batch, pos]`.
        padding_mask: 1 for real tokens, 0 for padding; None = all real.
        batch_size: Sequences per forward pass.
        special_token_ids: Ids counted by `special_token`; None = the tokenizer's special
            ids when the model has a tokenizer, else none.
        offsets, tl_exclude_bos, tl_exclude_current_token, tl_error_measure: As in
            `pattern_scores`.
    """
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.is_floating_point():
        raise ValueError("tokens must be an integer tensor [batch, pos]")
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"tokens is empty: {tuple(tokens.shape)}")
    check_token_tensor(tokens, "tokens", model)
    _check_padding_mask(padding_mask, tokens)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    offsets = _check_options(offsets, tl_error_measure)
    if special_token_ids is None:
        tokenizer = getattr(model, "tokenizer", None)
        special_token_ids = sorted(set(getattr(tokenizer, "all_special_ids", None) or ()))
    accumulator = ScoreAccumulator(
        special_token_ids,
        offsets,
        _model_causal(model),
        (tl_exclude_bos, tl_exclude_current_token, tl_error_measure),
    )
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    with eval_mode(model), torch.inference_mode():
        for start in range(0, tokens.shape[0], batch_size):
            batch = tokens[start : start + batch_size].to(device)
            extra: dict[str, Tensor] = {}
            mask = None
            if padding_mask is not None:
                mask = padding_mask[start : start + batch_size].to(device)
                extra["attention_mask"] = mask
            _, cache = model.run_with_cache(batch, names_filter=_is_pattern_hook, **extra)
            accumulator.add(_pattern_layers(cache), batch, mask)
            del cache
    return accumulator.result()


# -- the standard probe


def repeated_random_tokens(
    n_sequences: int,
    length: int,
    vocab: int | tuple[int, int],
    *,
    bos_token_id: int | None = None,
    seed: int = 0,
) -> Int[Tensor, "batch pos"]:
    """`[BOS] + r + r` for random token sequences r: the induction / duplicate-token probe
    of Olsson et al. 2022 (prefix matching on repeated random tokens).

    Args:
        n_sequences: Number of sequences.
        length: Length of r; the result has `2 * length` positions (+1 with a BOS).
        vocab: Draw ids from `range(vocab)`, or from `range(low, high)` for a pair.
        bos_token_id: Token put first, or None for none.
        seed: Seed of the generator (the same seed gives the same tokens).
    """
    low, high = (0, vocab) if isinstance(vocab, int) else vocab
    if n_sequences < 1 or length < 1:
        raise ValueError(f"n_sequences and length must be >= 1, got {n_sequences}, {length}")
    if not 0 <= low < high:
        raise ValueError(f"vocab range must be 0 <= low < high, got ({low}, {high})")
    generator = torch.Generator().manual_seed(seed)
    half = torch.randint(low, high, (n_sequences, length), generator=generator)
    parts = [half, half]
    if bos_token_id is not None:
        parts.insert(0, torch.full((n_sequences, 1), int(bos_token_id), dtype=half.dtype))
    return torch.cat(parts, dim=1)


def induction_probe_scores(
    model: TransformerBridge,
    *,
    n_sequences: int = 16,
    length: int | None = None,
    vocab: int | tuple[int, int] | None = None,
    bos_token_id: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    special_token_ids: Sequence[int] | None = None,
) -> HeadScores:
    """`model_pattern_scores` on `repeated_random_tokens`: induction and duplicate-token
    scores as in Olsson et al. 2022.

    `length` defaults to min(32, the longest that fits `n_ctx`); `vocab` to the model's
    whole vocabulary (pass a range to skip special tokens of a pretrained tokenizer).
    """
    n_ctx = int(model.cfg.n_ctx)
    room = n_ctx - (1 if bos_token_id is not None else 0)
    length = min(32, room // 2) if length is None else length
    if length < 1 or 2 * length > room:
        raise ValueError(f"2 * length (+ BOS) must fit n_ctx={n_ctx}; got length={length}")
    tokens = repeated_random_tokens(
        n_sequences,
        length,
        int(model.cfg.d_vocab) if vocab is None else vocab,
        bos_token_id=bos_token_id,
        seed=seed,
    )
    return model_pattern_scores(
        model, tokens, batch_size=batch_size, special_token_ids=special_token_ids
    )
