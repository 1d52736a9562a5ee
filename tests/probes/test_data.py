"""Tests for probes.data: the rows are exactly the model's activations, split by example."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge

from interp import models
from probes import fit_probes
from probes.data import IGNORE, residual_hooks, sequence_dataset, token_dataset


@pytest.fixture(scope="module")
def model() -> TransformerBridge:
    spec = dict(n_layers=2, d_model=32, n_heads=4, d_vocab=20, n_ctx=10, seed=0)
    return models.build(spec, device="cpu")


def tokens(n: int = 12, pos: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 20, (n, pos), generator=torch.Generator().manual_seed(seed))


def test_sequence_rows_are_the_activations_at_each_examples_position(model) -> None:
    toks = tokens()
    position = torch.randint(0, 8, (12,), generator=torch.Generator().manual_seed(1))
    data = sequence_dataset(model, toks, torch.arange(12) % 3, position)
    assert data.hooks == tuple(residual_hooks(model)) and data.features.shape == (2, 12, 32)
    with torch.no_grad():
        _, cache = model.run_with_cache(toks)
    for layer, hook in enumerate(data.hooks):
        expected = cache[hook][torch.arange(12), position]
        torch.testing.assert_close(data.features[layer], expected, atol=1e-5, rtol=0)
    assert torch.equal(data.groups, torch.arange(12))


def test_token_rows_skip_unlabelled_and_padded_tokens_and_know_their_example(model) -> None:
    toks = tokens()
    labels = toks % 2
    labels[:, 0] = IGNORE
    mask = torch.ones_like(toks)
    mask[3, 5:] = 0  # example 3 is padded from position 5
    data = token_dataset(model, toks, labels, attention_mask=mask)
    assert data.features.shape[1] == 12 * 7 - 3
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, attention_mask=mask)
    hook = data.hooks[1]
    torch.testing.assert_close(
        data.features[1], cache[hook][data.groups, data.positions], atol=1e-5, rtol=0
    )
    assert not bool(((data.groups == 3) & (data.positions >= 5)).any())
    assert torch.equal(data.labels, toks[data.groups, data.positions] % 2)


def test_a_property_of_each_token_is_decodable_and_a_shuffled_one_is_not(model) -> None:
    toks = tokens(n=200, pos=8, seed=3)
    data = token_dataset(model, toks, toks % 2, hooks=["hook_embed", "blocks.1.hook_resid_post"])
    result = fit_probes(data.features, data.labels, groups=data.groups, seed=0)
    assert float(result.test_score[0]) > 0.95  # the token embedding holds its identity
    test = set(data.groups[result.test_index].tolist())
    assert not test & set(data.groups[result.train_index].tolist())  # split by example
    shuffled = data.labels[
        torch.randperm(len(data.labels), generator=torch.Generator().manual_seed(0))
    ]
    chance = fit_probes(data.features, shuffled, groups=data.groups, seed=0)
    assert float(chance.test_score.max()) < 0.65


def test_bad_inputs_raise_one_line(model) -> None:
    with pytest.raises(ValueError, match="tokens must be integer ids"):
        sequence_dataset(model, torch.zeros(3, 4), torch.zeros(3), 0)
    with pytest.raises(ValueError, match="labels have 2 rows for 12 examples"):
        sequence_dataset(model, tokens(), torch.zeros(2), 0)
    with pytest.raises(ValueError, match="position must be"):
        sequence_dataset(model, tokens(), torch.zeros(12), 9)
    with pytest.raises(ValueError, match="no labelled token"):
        token_dataset(model, tokens(), torch.full((12, 8), IGNORE))


def test_a_mask_unlike_the_tokens_is_refused_in_one_line(model) -> None:
    for call in (
        lambda: token_dataset(model, tokens(), tokens() % 2, attention_mask=torch.ones(12, 7)),
        lambda: sequence_dataset(model, tokens(), torch.zeros(12), 3, attention_mask=[1] * 8),
    ):
        with pytest.raises(ValueError, match=r"attention_mask must be \[n, pos\] = \(12, 8\)"):
            call()


def test_labels_given_as_lists_are_the_labels_given_as_tensors(model) -> None:
    toks = tokens()
    as_tensor = sequence_dataset(model, toks, torch.arange(12) % 3, 2)
    as_list = sequence_dataset(model, toks, [i % 3 for i in range(12)], 2)
    assert torch.equal(as_list.labels, torch.arange(12) % 3)
    torch.testing.assert_close(as_list.features, as_tensor.features)
    token_labels = token_dataset(model, toks, (toks % 2).tolist())
    assert torch.equal(token_labels.labels, toks[token_labels.groups, token_labels.positions] % 2)
    with pytest.raises(ValueError, match="labels must be a tensor or a .* sequence of numbers"):
        sequence_dataset(model, toks, [[0], [1, 2]] * 6, 2)
    with pytest.raises(ValueError, match="labels have 3 rows for 12 examples"):
        sequence_dataset(model, toks, [0, 1, 2], 2)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_a_hook_with_extra_axes_is_named_with_the_shape_probes_take(
    model, level: str, tmp_path: Path
) -> None:
    # attn.hook_z is [n, pos, head, d_head] = [12, 8, 4, 8]: a matrix per token
    hooks = ["blocks.0.attn.hook_z"]
    message = (
        r"hook 'blocks.0.attn.hook_z' gives each token an activation of shape \(4, 8\), "
        r"with extra axes.*probes take hooks of shape \[n, pos, d\]"
    )
    for out_dir in (None, tmp_path / "acts"):
        with pytest.raises(ValueError, match=message) as error:
            if level == "token":
                token_dataset(model, tokens(), tokens() % 2, hooks=hooks, out_dir=out_dir)
            else:
                sequence_dataset(model, tokens(), torch.zeros(12), 3, hooks=hooks, out_dir=out_dir)
        assert "\n" not in str(error.value)
    assert not (tmp_path / "acts").exists() or not any((tmp_path / "acts").iterdir())


def test_hooks_of_different_shapes_are_refused_before_anything_is_written(
    model, tmp_path: Path
) -> None:
    hooks = ["hook_embed", "blocks.0.attn.hook_pattern"]  # [n, d] and [n, head, k] at a position
    with pytest.raises(ValueError, match=r"differ in shape.*'hook_embed': \(12, 32\)") as error:
        sequence_dataset(model, tokens(), torch.zeros(12), 3, hooks=hooks)
    assert "\n" not in str(error.value)
    out_dir = tmp_path / "acts"
    with pytest.raises(ValueError, match=r"differ in shape.*'hook_embed': \(12, 32\)"):
        sequence_dataset(model, tokens(), torch.zeros(12), 3, hooks=hooks, out_dir=out_dir)
    assert not out_dir.exists() or not any(out_dir.iterdir())
    with pytest.raises(ValueError, match="differ in shape"):
        token_dataset(model, tokens(), tokens() % 2, hooks=hooks, out_dir=out_dir)
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_a_set_written_to_disk_gives_the_same_rows(model, tmp_path: Path) -> None:
    hooks = ["hook_embed", "blocks.1.hook_resid_post"]
    position = torch.arange(12) % 8
    in_memory = sequence_dataset(model, tokens(), torch.zeros(12), position, hooks=hooks)
    on_disk = sequence_dataset(
        model, tokens(), torch.zeros(12), position, hooks=hooks, out_dir=tmp_path / "acts"
    )
    assert any((tmp_path / "acts").iterdir())
    torch.testing.assert_close(on_disk.features, in_memory.features, atol=1e-6, rtol=0)
