from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError
from transformer_lens.model_bridge import TransformerBridge

from interp import models

SPEC = dict(n_layers=2, d_model=32, n_heads=4, d_vocab=20, n_ctx=12, d_mlp=64, seed=3)


def tokens(n: int = 3, pos: int = 8, vocab: int = 20) -> torch.Tensor:
    return torch.randint(0, vocab, (n, pos), generator=torch.Generator().manual_seed(0))


def test_same_spec_and_seed_give_same_weights() -> None:
    a, b = models.build(SPEC, device="cpu"), models.build(SPEC, device="cpu")
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    c = models.build({**SPEC, "seed": 4}, device="cpu")
    assert not torch.equal(a(tokens()), c(tokens()))


@pytest.mark.parametrize(
    "overrides",
    [
        {"normalization": None, "attn_only": True},
        {"normalization": "RMS", "act_fn": "gelu"},
        {"normalization": "LNPre", "positional_embedding": "rotary"},
        {"d_vocab_out": 7},
    ],
)
def test_spec_variants_build_and_run(overrides: dict) -> None:
    spec = models.ModelSpec(**{**SPEC, **overrides})
    model = models.build(spec, device="cpu")
    logits = model(tokens())
    assert logits.shape == (3, 8, spec.d_vocab_out)
    assert model.cfg.n_layers == 2 and model.cfg.attn_only == spec.attn_only
    if spec.attn_only:
        assert spec.d_mlp is None
        assert not any(name.startswith("blocks.0.mlp.") for name in model.hook_dict)


def test_every_head_is_hookable_separately() -> None:
    model = models.build(SPEC, device="cpu")
    _, cache = model.run_with_cache(tokens())
    for name in ("attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z"):
        assert cache[f"blocks.1.{name}"].shape == (3, 8, 4, 8)
    assert cache["blocks.0.attn.hook_pattern"].shape == (3, 4, 8, 8)


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ({"d_model": 30}, "not divisible by n_heads"),
        ({"n_layers": 0}, "n_layers"),
        ({"act_fn": "tanh"}, "act_fn"),
        ({"colour": "red"}, "colour"),
        ({"seed": 2**64}, "seed"),  # not TransformerLens's "Overflow when unpacking long long"
    ],
)
def test_invalid_spec_is_rejected(bad: dict, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        models.ModelSpec(**{**SPEC, **bad})


def test_explicit_d_head_may_differ_from_d_model_over_heads() -> None:
    spec = models.ModelSpec(**{**SPEC, "d_head": 5})
    assert models.build(spec, device="cpu")(tokens()).shape == (3, 8, 20)


def test_save_and_load_round_trip_gives_identical_logits(tmp_path) -> None:
    model = models.build(SPEC, device="cpu")
    with torch.no_grad():  # make the weights differ from a fresh build of the spec
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    models.save(model, tmp_path / "ckpt")
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == [models.WEIGHTS_FILE, models.SPEC_FILE]
    meta = json.loads((tmp_path / "ckpt" / models.SPEC_FILE).read_text())
    assert meta["source"] == "native" and meta["spec"]["d_model"] == 32
    loaded = models.load_checkpoint(tmp_path / "ckpt", device="cpu")
    assert torch.equal(model(tokens()), loaded(tokens()))
    assert torch.equal(models.load(tmp_path / "ckpt", device="cpu")(tokens()), model(tokens()))


def test_load_checkpoint_errors_are_one_line(tmp_path) -> None:
    with pytest.raises(models.ModelLoadError, match="not a saved model"):
        models.load_checkpoint(tmp_path)
    (tmp_path / models.SPEC_FILE).write_text("{not json")
    with pytest.raises(models.ModelLoadError, match="not valid JSON"):
        models.load_checkpoint(tmp_path)


def _write_spec(meta: object):
    """A damage: `model_spec.json` replaced by `meta` as JSON."""
    return lambda d: (d / models.SPEC_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (_write_spec([1, 2]), "not a saved model's description"),
        (_write_spec({"source": "native"}), "holds no valid spec: a ModelSpec must be a mapping"),
        (_write_spec({"source": "native", "spec": {"n_layers": 0}}), "ModelSpec: n_layers"),
        (_write_spec({"source": "hf"}), "names no model"),
        (lambda d: (d / models.WEIGHTS_FILE).unlink(), "has a spec but no model.safetensors"),
        (
            lambda d: (d / models.WEIGHTS_FILE).write_bytes(b"truncated"),
            "model.safetensors' is not a readable safetensors file: Error while deserializing",
        ),
        (
            _write_spec({"source": "native", "spec": {**SPEC, "d_model": 16}}),
            "do not fit the saved spec: size mismatch for",
        ),
    ],
    ids=["list", "no-spec", "bad-spec", "hf-no-name", "no-weights", "bad-weights", "resized"],
)
def test_a_damaged_checkpoint_is_refused_in_one_line(tmp_path, damage, needle) -> None:
    models.save(models.build(SPEC, device="cpu"), tmp_path)
    damage(tmp_path)
    with pytest.raises(models.ModelLoadError, match=needle) as info:
        models.load_checkpoint(tmp_path, device="cpu")
    assert "\n" not in str(info.value)


def test_a_dtype_that_is_not_a_float_dtype_is_refused() -> None:
    for dtype in (torch.int64, "float16"):
        with pytest.raises(ValueError, match="dtype must be a floating torch.dtype"):
            models.build(SPEC, device="cpu", dtype=dtype)


def test_unavailable_hub_model_gives_one_clear_line(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelLoadError) as info:
        models.load("no-such-org/no-such-model-xyz", device="cpu")
    message = str(info.value)
    assert "\n" not in message and "no-such-org/no-such-model-xyz" in message


def test_a_failed_hub_connection_suggests_offline_mode(monkeypatch) -> None:
    def boot(source, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(TransformerBridge, "boot_transformers", staticmethod(boot))
    with pytest.raises(models.ModelLoadError, match=r"couldn't connect.*HF_HUB_OFFLINE=1"):
        models.load("some-org/some-model", device="cpu")
    monkeypatch.setattr(  # another failure gets no such advice
        TransformerBridge, "boot_transformers",
        staticmethod(lambda source, **kwargs: (_ for _ in ()).throw(OSError("no config.json"))),
    )
    with pytest.raises(models.ModelLoadError) as info:
        models.load("some-org/some-model", device="cpu")
    assert "HF_HUB_OFFLINE" not in str(info.value)


def test_revision_reaches_the_hub_loader(monkeypatch) -> None:
    """A training checkpoint of a hub model (`revision`) is asked of the loader itself; with
    none given the loader gets no revision argument at all (its own default)."""
    calls: list[dict] = []

    def boot(source, **kwargs):
        calls.append(kwargs)
        raise OSError("offline")

    monkeypatch.setattr(TransformerBridge, "boot_transformers", staticmethod(boot))
    for revision in ("step3000", None):
        with pytest.raises(models.ModelLoadError, match="EleutherAI/pythia-70m"):
            models.load("EleutherAI/pythia-70m", device="cpu", revision=revision)
    assert calls[0]["revision"] == "step3000" and "revision" not in calls[1]


def test_missing_local_folder_is_reported(tmp_path) -> None:
    with pytest.raises(models.ModelLoadError, match="does not exist"):
        models.load(tmp_path / "absent", device="cpu")


def test_device_auto_resolves_to_an_available_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert models.resolve_device("auto").type == expected
    assert models.resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(models.ModelLoadError, match="CUDA is not available"):
            models.resolve_device("cuda")


def test_minilm_package_model_runs_text_and_caches_pattern(minilm) -> None:
    ids = minilm.tokenizer(["The cat sat on the mat."], return_tensors="pt")["input_ids"]
    _, cache = minilm.run_with_cache(ids, names_filter=lambda n: n == "blocks.0.attn.hook_pattern")
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert list(cache.keys()) == ["blocks.0.attn.hook_pattern"]
    assert pattern.shape == (1, 12, ids.shape[1], ids.shape[1])
    torch.testing.assert_close(pattern.sum(-1), torch.ones(1, 12, ids.shape[1]))


def test_pretrained_save_round_trip(minilm, tmp_path) -> None:
    models.save(minilm, tmp_path / "m")
    loaded = models.load_checkpoint(tmp_path / "m", device="cpu")
    ids = minilm.tokenizer(["hello world"], return_tensors="pt")["input_ids"]
    assert torch.equal(minilm(ids), loaded(ids))
    assert loaded.interp_untrained == ()  # the saved weights include the head


MINILM_HEAD = (  # all-MiniLM-L6-v2 ships a bare BertModel: BertForMaskedLM's head is missing
    "cls.predictions.bias",
    "cls.predictions.decoder.bias",
    "cls.predictions.transform.LayerNorm.bias",
    "cls.predictions.transform.LayerNorm.weight",
    "cls.predictions.transform.dense.bias",
    "cls.predictions.transform.dense.weight",
)


def test_weights_missing_from_the_checkpoint_are_seeded_and_named(minilm_path) -> None:
    """MiniLM's masked-LM head is initialised by Hugging Face at every load: the same
    weights whatever the caller's random state (which is left as it was), and a one-line
    warning naming them, since logits read through that head measure nothing learned."""
    ids = torch.tensor([[101, 1996, 4937, 2938, 2006, 1996, 13523, 102]])  # the cat sat ...
    loaded = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        state = torch.get_rng_state()
        with pytest.warns(UserWarning) as caught:
            loaded.append(models.load(minilm_path, device="cpu"))
        assert torch.equal(torch.get_rng_state(), state)
        (message,) = [str(w.message) for w in caught if "checkpoint" in str(w.message)]
        assert "\n" not in message
        assert message.startswith(f"{minilm_path}: 6 weights are not in the checkpoint")
        assert "cls.predictions.bias" in message and "output head is untrained" in message
    a, b = loaded
    assert a.interp_untrained == b.interp_untrained == MINILM_HEAD
    dense = "cls.predictions.transform.dense._original_component.weight"
    assert torch.equal(a.original_model.get_parameter(dense), b.original_model.get_parameter(dense))
    with torch.no_grad():
        assert torch.equal(a(ids), b(ids))


def test_a_complete_checkpoint_loads_without_untrained_weights(gpt2) -> None:
    assert gpt2.interp_untrained == ()


def test_bad_specs_and_devices_are_one_line() -> None:
    with pytest.raises(ValueError, match="invalid ModelSpec: n_layer: Extra inputs") as info:
        models.build({**SPEC, "n_layer": 3}, device="cpu")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="device 'gpu' is not a device") as info:
        models.build(SPEC, device="gpu")
    assert not isinstance(info.value, models.ModelLoadError)  # a bad name, not a failed load


def test_build_takes_any_mapping() -> None:
    from types import MappingProxyType

    frozen = models.build(MappingProxyType(SPEC), device="cpu")
    assert models.spec_of(frozen) == models.ModelSpec(**SPEC)
    with pytest.raises(ValueError, match="a ModelSpec must be a mapping or a ModelSpec, got list"):
        models.build([1, 2], device="cpu")


def test_revision_survives_save_and_load_checkpoint(monkeypatch, tmp_path) -> None:
    """A model loaded at a hub revision is saved with it and booted at it again."""
    calls: list[tuple[str, dict]] = []

    def boot(source, **kwargs):  # a fresh stand-in for the hub model, as the hub gives
        calls.append((source, kwargs))
        model = models.build(SPEC, device="cpu")
        del model.interp_spec
        return model

    monkeypatch.setattr(TransformerBridge, "boot_transformers", staticmethod(boot))
    model = models.load("EleutherAI/pythia-70m", device="cpu", revision="step3000")
    models.save(model, tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / models.SPEC_FILE).read_text())
    assert meta == {"source": "hf", "name_or_path": "EleutherAI/pythia-70m", "revision": "step3000"}
    models.load_checkpoint(tmp_path / "ckpt", device="cpu")
    assert [kwargs.get("revision") for _, kwargs in calls] == ["step3000", "step3000"]


def test_revision_with_a_local_folder_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="revision='main' is for hub models; .* local folder"):
        models.load(tmp_path, device="cpu", revision="main")


def test_model_sizes_reads_unset_output_vocabulary_as_the_input_one() -> None:
    model = models.build(SPEC, device="cpu")
    assert models.model_sizes(model.cfg) == (20, 20, 12)
    model.cfg.d_vocab_out = -1
    assert models.model_sizes(model.cfg) == (20, 20, 12)
