"""Pattern scores on hand-built patterns (known answers), against TransformerLens's
head_detector, and on native / pretrained bridges (batching, padding, no mutation)."""

from __future__ import annotations

import math

import pytest
import torch
from transformer_lens import head_detector

from interp import models
from interp.heads.patterns import (
    SCORE_NAMES,
    HeadScores,
    induction_probe_scores,
    model_pattern_scores,
    pattern_scores,
    repeated_random_tokens,
)
from interp.runs import RunStore

HALF = 6  # length of the repeated random block r in r + r


def _hand_patterns(n_sequences: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens r + r (r distinct) and patterns [batch, 1 layer, 5 heads, pos, pos]:
    head 0 previous token, 1 first token, 2 induction, 3 uniform causal, 4 duplicate."""
    n = 2 * HALF
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randperm(50, generator=generator)[:HALF] for _ in range(n_sequences)]
    tokens = torch.stack([torch.cat([r, r]) for r in rows])
    heads = torch.zeros(5, n, n)
    for q in range(n):
        heads[0, q, max(q - 1, 0)] = 1.0
        heads[1, q, 0] = 1.0
        heads[2, q, q - HALF + 1 if q >= HALF else q] = 1.0
        heads[3, q, : q + 1] = 1.0 / (q + 1)
        heads[4, q, q - HALF if q >= HALF else q] = 1.0
    patterns = heads[None, None].expand(n_sequences, 1, 5, n, n).clone()
    return patterns, tokens


def test_hand_built_patterns_score_their_role() -> None:
    patterns, tokens = _hand_patterns()
    scores = pattern_scores(patterns, tokens)
    n = 2 * HALF
    values = {name: scores[name][0] for name in SCORE_NAMES}
    close = torch.testing.assert_close
    close(values["previous_token"][0], torch.tensor(1.0))
    close(values["first_token"][1], torch.tensor(1.0))
    close(values["induction"][2], torch.tensor(1.0))
    close(values["duplicate_token"][4], torch.tensor(1.0))
    # the other heads score low on each of these roles
    assert values["previous_token"][[2, 4]].max() == 0
    assert values["induction"][[0, 1, 4]].max() == 0
    assert values["duplicate_token"][[0, 2]].max() == 0
    # the first-token head hits a duplicate only at query HALF (a copy of position 0)
    close(values["duplicate_token"][1], torch.tensor(1.0 / HALF))
    close(values["first_token"][0], torch.tensor(2.0 / n))  # queries 0 and 1 only
    # previous_token of the first-token head: only query 1 attends to its predecessor 0
    close(values["previous_token"][1], torch.tensor(1.0 / (n - 1)))
    # uniform attention: entropy log(number of visible keys), confidence 1 / that
    close(values["entropy"][3], torch.tensor(sum(math.log(q + 1) for q in range(n)) / n))
    close(values["confidence"][3], torch.tensor(sum(1 / (q + 1) for q in range(n)) / n))
    close(values["entropy"][[0, 1, 2, 4]], torch.zeros(4))
    close(values["confidence"][[0, 1, 2, 4]], torch.ones(4))
    # positional test (Voita et al.): only the previous-token head has >= 90% at -1
    positional = values["positional_prev"] >= 0.9
    assert positional.tolist() == [True, False, False, False, False]
    # causal patterns: nothing after the query is a valid target
    assert scores.settings["causal"] is True
    assert values["next_token"].isnan().all() and values["positional_next"].isnan().all()
    offsets = list(scores.offsets)
    close(scores.offset_profile[0, 0, offsets.index(-1)], torch.tensor(1.0))
    close(scores.offset_profile[0, 0, offsets.index(0)], torch.tensor(1.0 / n))  # query 0
    assert scores.offset_profile[0, :, offsets.index(1)].isnan().all()
    frame = scores.to_frame()
    assert list(frame.columns) == ["layer", "head", *SCORE_NAMES] and len(frame) == 5


def test_special_tokens_and_bidirectional_next_token() -> None:
    n = 5
    tokens = torch.tensor([[101, 7, 8, 9, 102]])
    next_head = torch.zeros(n, n)
    for q in range(n):
        next_head[q, min(q + 1, n - 1)] = 1.0
    special_head = torch.zeros(n, n)
    special_head[:, 0] = 0.5
    special_head[:, -1] = 0.5
    patterns = torch.stack([next_head, special_head])[None, None]
    scores = pattern_scores(patterns, tokens, special_token_ids=[101, 102])
    assert scores.settings["causal"] is False
    # queries 0-3 have a next token; the special head gives it 0.5 at query 3 only
    torch.testing.assert_close(scores["next_token"][0], torch.tensor([1.0, 0.125]))
    torch.testing.assert_close(scores["positional_next"][0, 0], torch.tensor(1.0))
    # the next head lands on [SEP] from queries 3 and 4
    torch.testing.assert_close(scores["special_token"][0], torch.tensor([0.4, 1.0]))
    torch.testing.assert_close(scores["entropy"][0, 1], torch.tensor(math.log(2.0)))


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_is_excluded(side: str) -> None:
    patterns, tokens = _hand_patterns(n_sequences=1)
    n, pad = tokens.shape[1], 3
    garbage = torch.full((1, 1, 5, n + pad, n + pad), 1.0 / (n + pad))
    padded_tokens = torch.zeros(1, n + pad, dtype=tokens.dtype)
    mask = torch.zeros(1, n + pad, dtype=torch.long)
    real = slice(0, n) if side == "right" else slice(pad, n + pad)
    padded_tokens[:, real] = tokens
    mask[:, real] = 1
    padded = garbage.clone()
    padded[..., real, :] = 0.0
    padded[..., real, real] = patterns
    expected = pattern_scores(patterns, tokens, causal=True, tl_exclude_bos=True)
    got = pattern_scores(padded, padded_tokens, padding_mask=mask, causal=True, tl_exclude_bos=True)
    for name in SCORE_NAMES:
        torch.testing.assert_close(got[name], expected[name], equal_nan=True, msg=name)
    torch.testing.assert_close(got.offset_profile, expected.offset_profile, equal_nan=True)


def _random_causal_patterns(batch: int, heads: int, n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, 1, heads, n, n, generator=generator) * 2
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    return logits.masked_fill(~causal, float("-inf")).softmax(-1)


@pytest.mark.parametrize("measure", ["mul", "abs"])
@pytest.mark.parametrize(("exclude_bos", "exclude_current"), [(False, False), (True, True)])
def test_detector_scores_match_transformer_lens(
    measure: str, exclude_bos: bool, exclude_current: bool
) -> None:
    n, batch, heads = 12, 3, 4
    tokens = torch.randint(0, 4, (batch, n), generator=torch.Generator().manual_seed(1))
    patterns = _random_causal_patterns(batch, heads, n, seed=2)
    before = patterns.clone()
    ours = pattern_scores(
        patterns,
        tokens,
        tl_exclude_bos=exclude_bos,
        tl_exclude_current_token=exclude_current,
        tl_error_measure=measure,  # type: ignore[arg-type]
    )
    detectors = {
        "tl_previous_token": head_detector.get_previous_token_head_detection_pattern,
        "tl_duplicate_token": head_detector.get_duplicate_token_head_detection_pattern,
        "tl_induction": head_detector.get_induction_head_detection_pattern,
    }
    for name, detection_pattern in detectors.items():
        reference = torch.tensor(
            [
                [
                    head_detector.compute_head_attention_similarity_score(
                        patterns[b, 0, h].clone(),
                        detection_pattern(tokens[b : b + 1]),
                        exclude_bos=exclude_bos,
                        exclude_current_token=exclude_current,
                        error_measure=measure,  # type: ignore[arg-type]
                    )
                    for h in range(heads)
                ]
                for b in range(batch)
            ]
        ).mean(0)
        tolerance = 1e-3 if measure == "abs" else 1e-5  # TransformerLens rounds "abs"
        torch.testing.assert_close(ours[name][0], reference.float(), atol=tolerance, rtol=0)
    assert torch.equal(patterns, before)


def test_dict_input_is_left_unchanged_and_equals_tensor_input() -> None:
    patterns = _random_causal_patterns(2, 3, 10, seed=3).expand(2, 2, 3, 10, 10).clone()
    tokens = torch.randint(0, 5, (2, 10), generator=torch.Generator().manual_seed(4))
    cache = {f"blocks.{layer}.attn.hook_pattern": patterns[:, layer] for layer in range(2)}
    copies = {name: value.clone() for name, value in cache.items()}
    from_dict = pattern_scores(cache, tokens, tl_exclude_bos=True, tl_exclude_current_token=True)
    from_tensor = pattern_scores(
        patterns, tokens, tl_exclude_bos=True, tl_exclude_current_token=True
    )
    for name in SCORE_NAMES:
        torch.testing.assert_close(from_dict[name], from_tensor[name], equal_nan=True)
    assert all(torch.equal(cache[name], copies[name]) for name in cache)


def test_bad_inputs_raise_one_line_errors() -> None:
    patterns, tokens = _hand_patterns()
    with pytest.raises(ValueError, match="batch, layer, head"):
        pattern_scores(patterns[:, 0], tokens)
    with pytest.raises(ValueError, match="agree"):
        pattern_scores(patterns, tokens[:, :-1])
    with pytest.raises(ValueError, match="hook_pattern"):
        pattern_scores({"blocks.0.hook_resid_pre": patterns[:, 0]}, tokens)
    with pytest.raises(ValueError, match="padding_mask"):
        pattern_scores(patterns, tokens, padding_mask=torch.ones(1, 3))


def test_repeated_random_tokens() -> None:
    tokens = repeated_random_tokens(4, 5, (10, 20), bos_token_id=1, seed=7)
    assert tokens.shape == (4, 11)
    assert (tokens[:, 0] == 1).all() and torch.equal(tokens[:, 1:6], tokens[:, 6:])
    assert tokens[:, 1:].min() >= 10 and tokens[:, 1:].max() < 20
    assert torch.equal(tokens, repeated_random_tokens(4, 5, (10, 20), bos_token_id=1, seed=7))
    assert not torch.equal(tokens, repeated_random_tokens(4, 5, (10, 20), bos_token_id=1, seed=8))


@pytest.fixture(scope="module")
def native() -> torch.nn.Module:
    spec = dict(n_layers=2, d_model=32, n_heads=4, d_vocab=30, n_ctx=24, seed=3)
    return models.build(spec, device="cpu")


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(point.fwd_hooks) for point in model.hook_dict.values())


def test_model_scores_batched_equal_one_pass_and_leave_model_alone(native) -> None:
    tokens = torch.randint(0, 30, (7, 16), generator=torch.Generator().manual_seed(5))
    weights = {name: t.clone() for name, t in native.state_dict().items()}
    fired: list[int] = []
    native.add_hook("blocks.0.hook_resid_pre", lambda tensor, hook: fired.append(1))
    hooks_before = _hook_count(native)
    native.train()
    try:
        batched = model_pattern_scores(native, tokens, batch_size=3)
        assert all(module.training for module in native.modules())
        assert _hook_count(native) == hooks_before
        assert all(torch.equal(native.state_dict()[k], v) for k, v in weights.items())
        fired.clear()
        native.eval()
        with torch.no_grad():
            _, cache = native.run_with_cache(tokens, names_filter=lambda n: "pattern" in n)
        assert fired == [1]  # the caller's hook is still attached
    finally:
        native.reset_hooks()
        native.eval()
    one_pass = pattern_scores(cache, tokens)
    assert batched.settings["causal"] is True and batched.settings["n_sequences"] == 7
    for name in SCORE_NAMES:
        torch.testing.assert_close(batched[name], one_pass[name], equal_nan=True)
    torch.testing.assert_close(batched.offset_profile, one_pass.offset_profile, equal_nan=True)


def test_induction_probe_and_save_load(native, tmp_path) -> None:
    scores = induction_probe_scores(native, n_sequences=4, length=8, seed=0)
    assert scores["induction"].shape == (2, 4)
    assert scores.settings["n_sequences"] == 4
    with RunStore(tmp_path).create("heads", kind="test", config={}, seed=0) as run:
        scores.save(run)
    loaded = HeadScores.load(run.path)
    assert loaded.offsets == scores.offsets and loaded.settings == scores.settings
    for name in SCORE_NAMES:
        torch.testing.assert_close(loaded[name], scores[name], equal_nan=True)
    torch.testing.assert_close(loaded.offset_profile, scores.offset_profile, equal_nan=True)
    with pytest.raises(ValueError, match="n_ctx"):
        induction_probe_scores(native, length=20)


def test_pretrained_encoder_padding_and_special_tokens(minilm) -> None:
    tokenizer = minilm.tokenizer
    alone = tokenizer(["the cat sat on the mat"], return_tensors="pt")
    padded = tokenizer(
        ["the cat sat on the mat", "a much longer sentence with many more words in it"],
        return_tensors="pt",
        padding=True,
    )
    n = alone["input_ids"].shape[1]
    assert padded["attention_mask"][0].sum() == n < padded["input_ids"].shape[1]
    expected = model_pattern_scores(minilm, alone["input_ids"])
    got = model_pattern_scores(
        minilm, padded["input_ids"][:1], padding_mask=padded["attention_mask"][:1]
    )
    assert got.settings["causal"] is False
    assert set(got.settings["special_token_ids"]) == set(tokenizer.all_special_ids)
    for name in ("previous_token", "next_token", "special_token", "entropy", "confidence"):
        torch.testing.assert_close(got[name], expected[name], atol=1e-4, rtol=1e-4)
    assert got["special_token"].mean() > 0.05 and not got["next_token"].isnan().any()


def _left_padded(
    patterns: torch.Tensor, tokens: torch.Tensor, pad: int, padded_rows: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`pad` padding positions before each sequence: real rows keep their pattern and give
    padding keys 0; padded query rows hold `padded_rows` everywhere (what a Hugging Face
    causal model writes there: uniform, or NaN after a softmax over only -inf)."""
    batch, n = tokens.shape
    padded = torch.full((*patterns.shape[:3], n + pad, n + pad), padded_rows)
    padded[..., pad:, :] = 0.0
    padded[..., pad:, pad:] = patterns
    padded_tokens = torch.cat([torch.zeros(batch, pad, dtype=tokens.dtype), tokens], dim=1)
    mask = torch.cat([torch.zeros(batch, pad), torch.ones(batch, n)], dim=1).long()
    return padded, padded_tokens, mask


@pytest.mark.parametrize("padded_rows", [1.0 / (2 * HALF + 3), float("nan")])
def test_left_padded_causal_patterns_are_inferred_causal(padded_rows: float) -> None:
    """Padded query rows filled uniformly (above the diagonal too) or with NaN neither make
    a causal cache look bidirectional nor change any score."""
    patterns, tokens = _hand_patterns()
    padded, padded_tokens, mask = _left_padded(patterns, tokens, 3, padded_rows)
    expected = pattern_scores(patterns, tokens)
    got = pattern_scores(padded, padded_tokens, padding_mask=mask)
    assert expected.settings["causal"] is True and got.settings["causal"] is True
    assert got["next_token"].isnan().all()
    for name in SCORE_NAMES:
        torch.testing.assert_close(got[name], expected[name], equal_nan=True, msg=name)
    torch.testing.assert_close(got.offset_profile, expected.offset_profile, equal_nan=True)


def test_left_padded_gpt2_cache_is_causal_and_scores_as_unpadded(gpt2) -> None:
    """A causal Hugging Face bridge fills padded query rows uniformly; inferred from its
    cache, the scores still equal those of the unpadded sequence."""
    alone = torch.tensor([[5, 6, 7, 8, 9, 19]])
    padded = torch.tensor([[0, 0, 5, 6, 7, 8, 9, 19]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        _, cache = gpt2.run_with_cache(padded, attention_mask=mask, names_filter=_is_pattern)
        _, alone_cache = gpt2.run_with_cache(alone, names_filter=_is_pattern)
    assert torch.triu(cache["blocks.0.attn.hook_pattern"][0, :, :2], 1).max() > 0
    got = pattern_scores(cache, padded, padding_mask=mask, special_token_ids=[19])
    expected = pattern_scores(alone_cache, alone, special_token_ids=[19])
    assert got.settings["causal"] is True and got["next_token"].isnan().all()
    for name in SCORE_NAMES:
        torch.testing.assert_close(
            got[name], expected[name], atol=1e-5, rtol=1e-5, equal_nan=True, msg=name
        )


def _is_pattern(name: str) -> bool:
    return name.endswith("hook_pattern")


def test_entropy_and_confidence_read_real_keys_renormalised() -> None:
    """Attention a (mask-less) model puts on a padding key is left out of entropy and
    confidence: each real row is renormalised over its visible real keys."""
    tokens = torch.tensor([[0, 5, 6, 7]])
    mask = torch.tensor([[0, 1, 1, 1]])
    row = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],  # padding query: not read
            [0.5, 0.5, 0.0, 0.0],  # -> [1]: entropy 0, confidence 1
            [0.5, 0.25, 0.25, 0.0],  # -> [0.5, 0.5]: entropy log 2, confidence 0.5
            [0.25, 0.0, 0.375, 0.375],  # -> [0, 0.5, 0.5]: entropy log 2, confidence 0.5
        ]
    )
    scores = pattern_scores(row[None, None, None], tokens, padding_mask=mask, causal=True)
    torch.testing.assert_close(scores["entropy"][0, 0], torch.tensor(2 * math.log(2.0) / 3))
    torch.testing.assert_close(scores["confidence"][0, 0], torch.tensor(2.0 / 3))
    # mass scores are not renormalised: first_token is key 1's raw share, 0.5 and 0.25
    torch.testing.assert_close(scores["first_token"][0, 0], torch.tensor(0.75 / 3))


def test_offsets_batch_and_probabilities_are_checked() -> None:
    patterns, tokens = _hand_patterns()
    with pytest.raises(ValueError, match="offsets must be ints, got 0.5"):
        pattern_scores(patterns, tokens, offsets=[0.5])
    with pytest.raises(ValueError, match="offsets must be ints, got True"):
        pattern_scores(patterns, tokens, offsets=[-1, True])
    with pytest.raises(ValueError, match="offsets must be a sequence"):
        pattern_scores(patterns, tokens, offsets=1)  # type: ignore[arg-type]
    assert pattern_scores(patterns, tokens, offsets=torch.tensor([-2, 0])).offsets == (-2, 0)
    with pytest.raises(ValueError, match="no sequences"):
        pattern_scores(patterns[:0], tokens[:0])
    with pytest.raises(ValueError, match="marks no real token"):
        pattern_scores(patterns, tokens, padding_mask=torch.zeros_like(tokens))
    logits = torch.randn(patterns.shape, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="attention probabilities"):
        pattern_scores(logits, tokens)  # raw scores, not a softmax
    with pytest.raises(ValueError, match="attention probabilities"):
        pattern_scores(patterns * 2, tokens)  # rows summing to 2
    nan_row = patterns.clone()
    nan_row[1, 0, 3, 5] = float("nan")
    with pytest.raises(ValueError, match="layer 0, sequence 1, head 3, query 5 sums to nan"):
        pattern_scores(nan_row, tokens)
    with pytest.raises(ValueError, match="floating point, got torch.int64"):
        pattern_scores(patterns.long(), tokens)
    # half precision rounding is not an error
    half = pattern_scores(patterns.to(torch.bfloat16), tokens)["previous_token"]
    exact = pattern_scores(patterns, tokens)["previous_token"]
    torch.testing.assert_close(half, exact, atol=1e-2, rtol=0)
