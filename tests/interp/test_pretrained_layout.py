"""Tests for interp.pretrained_layout: the pure forward pass on a pretrained GPT-2 bridge
equals the bridge's own, its weights are read in the native layout, and models it does
not compute are refused with their reason."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pytest
import torch
from pretrained_models import SHAPE, native_twin, write_gpt2

from interp import functional, models
from interp.pretrained_layout import architecture_of, covers

# float32 rounding grows with the activations: tolerances are 1e-5 absolute plus relative
TOKENS = torch.randint(
    0, SHAPE["d_vocab"], (3, 8), generator=torch.Generator().manual_seed(1)
)


def test_architecture_is_read_from_the_config(gpt2) -> None:
    arch = architecture_of(gpt2)
    assert (arch.n_layers, arch.n_heads, arch.d_model, arch.d_head) == (2, 4, 32, 8)
    assert (arch.d_mlp, arch.d_vocab, arch.n_ctx) == (128, 20, 8)
    assert (arch.act_fn, arch.normalization, arch.rotary, arch.causal) == (
        "gelu_new", "LN", False, True
    )
    assert arch.attn_scale == pytest.approx(8**0.5)
    assert covers(gpt2) and functional.covers(gpt2)


ARCHITECTURES: dict[str, dict[str, object]] = {
    "gpt2": dict(normalization="LN", act_fn="gelu_new", rotary=False, parallel_attn_mlp=False,
                 gated_mlp=False, kv_heads=4, qkv_bias=True, out_bias=True, mlp_bias=True),
    # Pythia: rotary on 2 of each head's 8 dimensions, rotate-half, attention and MLP in
    # parallel (no resid_mid)
    "neox": dict(normalization="LN", act_fn="gelu", rotary=True, rotary_dim=2,
                 rotary_adjacent_pairs=False, parallel_attn_mlp=True, gated_mlp=False,
                 kv_heads=4, qkv_bias=True, out_bias=True, mlp_bias=True),
    # RMSNorm, gated SiLU MLPs (hook_pre is the gate's, hook_pre_linear the other half),
    # rotary on whole heads, 4 query heads over 2 key and value heads (cached with 2 heads,
    # as the bridge caches them); Qwen2's q, k and v biases
    # (Qwen3: queries and keys RMS-normalised per head, hook_q and hook_k before the norm)
    **{kind: dict(normalization="RMS", act_fn="silu", rotary=True, rotary_dim=8,
                  rotary_adjacent_pairs=False, parallel_attn_mlp=False, gated_mlp=True,
                  kv_heads=2, qkv_bias=kind == "qwen2", out_bias=False, mlp_bias=False,
                  qk_norm=kind == "qwen3")
       for kind in ("llama", "qwen2", "qwen3", "mistral", "phi3")},
    # Gemma: norms scaled by 1 + weight, embeddings (hook_embed too) by sqrt(32), GELU gates
    "gemma": dict(normalization="RMS1P", act_fn="gelu_pytorch_tanh", embed_scale=32**0.5,
                  rotary=True,
                  rotary_dim=8, parallel_attn_mlp=False, gated_mlp=True, kv_heads=2,
                  qkv_bias=False, out_bias=False, mlp_bias=False, qk_norm=False),
    # Gemma 2: Gemma's blocks, norms after attention and MLP (hook_attn_out and hook_mlp_out
    # after them), scores scaled by 1 / sqrt(query_pre_attn_scalar) and soft-capped, logits
    # soft-capped, a window of 3 keys on the first layer (conftest's GEMMA2_SETTINGS)
    "gemma2": dict(normalization="RMS1P", embed_scale=32**0.5, gated_mlp=True, kv_heads=2,
                   post_norms=True, attn_scale=10**0.5, attn_softcap=2.0, logit_softcap=5.0,
                   attention_windows=(3, None)),
    # Gemma 3: Gemma 2's blocks without caps, per-head query and key norms (1 + weight),
    # the local layer's rotary frequencies of their own
    "gemma3": dict(normalization="RMS1P", post_norms=True, qk_norm=True, attn_scale=10**0.5,
                   attn_softcap=None, logit_softcap=None, attention_windows=(3, None),
                   rotary_local_layers=(0,), rotary_base=1e6),
    # GPT-J: one LayerNorm before both attention and the parallel MLP, rotary on 4 of 8
    # dimensions in adjacent pairs (2i, 2i + 1), biases on the MLP only
    "gptj": dict(normalization="LN", act_fn="gelu_new", parallel_attn_mlp=True,
                 shared_norm=True, rotary=True, rotary_dim=4, rotary_adjacent_pairs=True,
                 qkv_bias=False, out_bias=False, mlp_bias=True, gated_mlp=False),
    # OPT: GPT-2's blocks with a ReLU MLP, learned positions from row 2 of their table on
    "opt": dict(normalization="LN", act_fn="relu", rotary=False, pos_offset=2,
                parallel_attn_mlp=False, gated_mlp=False, kv_heads=4, qkv_bias=True,
                out_bias=True, mlp_bias=True),
    # GPT-Neo: GPT-2's blocks, scores not divided by sqrt(d_head), no q/k/v biases, a
    # global layer then a local one seeing the 3 latest keys
    "gpt_neo": dict(normalization="LN", act_fn="gelu_new", rotary=False, pos_offset=0,
                    parallel_attn_mlp=False, gated_mlp=False, kv_heads=4, attn_scale=1.0,
                    qkv_bias=False, out_bias=True, mlp_bias=True, attention_windows=(None, 3)),
    # Phi: GPT-J's parallel blocks behind one shared LayerNorm, but rotary on 4 of 8
    # dimensions in the rotate-half layout and biases on q, k, v, dense, fc1 and fc2
    "phi": dict(normalization="LN", act_fn="gelu_new", parallel_attn_mlp=True,
                shared_norm=True, rotary=True, rotary_dim=4, rotary_adjacent_pairs=False,
                rotary_base=1e4, kv_heads=4, qkv_bias=True, out_bias=True, mlp_bias=True,
                gated_mlp=False, qk_norm=False, attn_scale=8**0.5),
    # BLOOM: a LayerNorm on the embeddings (hook_embed after it), ALiBi (slopes 2^-2, 2^-4,
    # 2^-6, 2^-8 for 4 heads) instead of position embeddings, biases everywhere, its GELU
    "bloom": dict(normalization="LN", act_fn="bloom_gelu", rotary=False, embed_norm=True,
                  alibi_slopes=(0.25, 0.0625, 0.015625, 0.00390625), learned_positions=False,
                  parallel_attn_mlp=False, gated_mlp=False, kv_heads=4, qkv_bias=True,
                  out_bias=True, mlp_bias=True, attn_scale=8**0.5, n_ctx=8),
    # Mistral 7B v0.1's sliding window, here 3 keys, on every layer
    "mistral_windowed": dict(normalization="RMS", attention_windows=(3, 3), post_norms=False,
                             attn_softcap=None, logit_softcap=None),
}


@pytest.mark.parametrize("kind", sorted(ARCHITECTURES))
def test_forward_and_its_cache_equal_the_bridge(request, kind: str) -> None:
    """Every activation the pure forward pass caches equals the bridge's own under the same
    hook name, and so do the logits."""
    model = request.getfixturevalue(kind)
    arch = architecture_of(model)
    assert {field: getattr(arch, field) for field in ARCHITECTURES[kind]} == ARCHITECTURES[kind]
    cache: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        ours = functional.forward(functional.live_params(model), TOKENS, arch, cache=cache)
        theirs, bridge_cache = model.run_with_cache(TOKENS)
    assert theirs.std() > 0.5  # not a degenerate model
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    if kind in ("gemma2", "gemma3", "mistral_windowed", "gpt_neo", "bloom"):  # what they add
        plain = dataclasses.replace(arch, attention_windows=None, attn_softcap=None,  # counts
                                    logit_softcap=None, rotary_local_inv_freq=None,
                                    rotary_local_layers=(),
                                    alibi_slopes=arch.alibi_slopes and (0.0,) * arch.n_heads)
        ignored = functional.forward(functional.live_params(model), TOKENS, plain)
        assert (ignored - theirs).abs().max() > 0.1
    assert set(cache) <= set(bridge_cache.keys()), set(cache) - set(bridge_cache.keys())
    assert ("blocks.0.hook_resid_mid" in cache) != arch.parallel_attn_mlp
    assert ("blocks.0.mlp.hook_pre_linear" in cache) == arch.gated_mlp
    assert cache["blocks.0.attn.hook_k"].shape == (3, 8, arch.kv_heads, 8)
    for name, value in cache.items():
        torch.testing.assert_close(value, bridge_cache[name], atol=1e-5, rtol=1e-5,
                                   msg=lambda text, name=name: f"{name}: {text}")


def test_conv1d_weights_are_views_in_the_linear_layout(gpt2) -> None:
    live = functional.live_params(gpt2)
    weight = live["blocks.0.mlp.in.weight"]
    assert tuple(weight.shape) == (128, 32)  # nn.Linear's [out, in]; GPT-2 stores [in, out]
    stored = gpt2.state_dict()["blocks.0.mlp.in.weight"]
    assert tuple(stored.shape) == (32, 128) and weight.data_ptr() == stored.data_ptr()
    assert functional.live_params(gpt2)["blocks.0.mlp.in.weight"] is weight  # the view is kept


def test_load_params_writes_through_the_transposed_layout(tmp_path: Path) -> None:
    model = models.load(write_gpt2(tmp_path, seed=3), device="cpu").eval()
    params = functional.params_of(model)
    params["blocks.0.mlp.in.weight"] = params["blocks.0.mlp.in.weight"] * 2.0
    params["blocks.1.attn.o.weight"] = torch.roll(params["blocks.1.attn.o.weight"], 1, dims=0)
    functional.load_params(model, params)
    with torch.no_grad():
        torch.testing.assert_close(
            model(TOKENS), functional.forward(params, TOKENS, architecture_of(model)),
            atol=1e-5, rtol=1e-5,
        )
    params["unembed.weight"] = params["unembed.weight"] + 1.0
    with pytest.raises(ValueError, match="must equal params\\['embed.weight'\\]: the model ties"):
        functional.load_params(model, params)


def test_native_twin_computes_the_same_logits(gpt2) -> None:
    with torch.no_grad():
        torch.testing.assert_close(native_twin(gpt2)(TOKENS), gpt2(TOKENS), atol=1e-5, rtol=1e-5)


def test_models_it_does_not_compute_are_refused_with_the_reason(minilm, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="covers native models and GPT2LMHeadModel, "
                                         "GPTNeoXForCausalLM, LlamaForCausalLM, "
                                         "MistralForCausalLM, Qwen2ForCausalLM, "
                                         "Qwen3ForCausalLM, GemmaForCausalLM, Gemma2ForCausalLM, "
                                         "Gemma3ForCausalLM, Phi3ForCausalLM, "
                                         "GPTJForCausalLM, OPTForCausalLM, "
                                         "GPTNeoForCausalLM, PhiForCausalLM, "
                                         "BloomForCausalLM; "
                                         "this model is a BertForMaskedLM"):
        architecture_of(minilm)
    assert not covers(minilm)
    scaled = models.load(
        write_gpt2(tmp_path / "scaled", scale_attn_by_inverse_layer_idx=True), device="cpu"
    )
    with pytest.raises(ValueError, match="does not support this GPT2LMHeadModel: "
                                         "scale_attn_by_inverse_layer_idx$"):
        architecture_of(scaled)
    processed = models.load(write_gpt2(tmp_path / "processed"), device="cpu")
    processed.enable_compatibility_mode()
    with pytest.raises(ValueError, match="TransformerLens has processed this one's"):
        architecture_of(processed)


def test_dense_params_repeat_grouped_heads_and_fill_missing_biases(llama) -> None:
    arch = architecture_of(llama)
    live = functional.live_params(llama)
    dense = functional.dense_params(live, arch)
    k = live["blocks.1.attn.k.weight"].unflatten(0, (2, 8))  # [kv_head, d_head, d_model]
    per_head = dense["blocks.1.attn.k.weight"].unflatten(0, (4, 8))
    for head in range(4):  # heads 0, 1 read key head 0; heads 2, 3 key head 1
        torch.testing.assert_close(per_head[head], k[head // 2], atol=0, rtol=0)
    assert not dense["blocks.0.attn.o.bias"].any() and not dense["blocks.0.mlp.in.bias"].any()
    assert "blocks.0.attn.o.bias" not in live
    with torch.no_grad():  # the forward pass reads either layout alike
        torch.testing.assert_close(functional.forward(dense, TOKENS, arch, validate=False),
                                   functional.forward(live, TOKENS, arch))
    gpt2_params = functional.live_params(models.build(dict(n_layers=1, d_model=16, n_heads=2,
                                                           d_vocab=5, n_ctx=4)))
    assert functional.dense_params(gpt2_params, functional.architecture(
        dict(n_layers=1, d_model=16, n_heads=2, d_vocab=5, n_ctx=4))) is gpt2_params


def test_other_architectures_and_sequence_dependent_rope_are_refused(tmp_path: Path) -> None:
    from pretrained_models import write_llama
    from transformers import OPTConfig, OPTForCausalLM

    # OPT-350m's blocks: LayerNorm after attention and MLP, a narrower embedding
    config = OPTConfig(vocab_size=20, hidden_size=32, num_hidden_layers=1, ffn_dim=64,
                       num_attention_heads=4, max_position_embeddings=8,
                       word_embed_proj_dim=16, do_layer_norm_before=False, bos_token_id=0,
                       eos_token_id=0, pad_token_id=1)
    OPTForCausalLM(config).save_pretrained(tmp_path / "opt")
    with pytest.raises(ValueError, match=r"this OPTForCausalLM: do_layer_norm_before=False "
                                         r"\(post-LayerNorm blocks\), word_embed_proj_dim=16 "
                                         r"\(projections in and out of the residual stream\)$"):
        architecture_of(models.load(tmp_path / "opt", device="cpu"))
    dynamic = write_llama(tmp_path / "dynamic", rope_scaling={"rope_type": "dynamic",
                                                              "factor": 2.0})
    with pytest.raises(ValueError, match="this LlamaForCausalLM: rope_type='dynamic' "
                                         r"\(frequencies that change with the sequence length\)$"):
        architecture_of(models.load(dynamic, device="cpu"))


def test_attention_windows_are_placed_as_the_config_says(tmp_path: Path) -> None:
    """Qwen2 slides from `max_window_layers` on; a window no shorter than the context is no
    window (the checkpoints' 4,096 keys over shorter contexts)."""
    from pretrained_models import write_llama

    qwen2 = write_llama(tmp_path / "qwen2", "qwen2", sliding_window=3, use_sliding_window=True,
                        max_window_layers=1)
    assert architecture_of(models.load(qwen2, device="cpu")).attention_windows == (None, 3)
    wide = write_llama(tmp_path / "wide", "mistral", sliding_window=8)
    assert architecture_of(models.load(wide, device="cpu")).attention_windows is None


def test_gpt_neo_scores_are_unscaled_and_its_local_layers_windowed(gpt_neo) -> None:
    """GPT-Neo divides its scores by nothing, and its local layer keeps the 3 latest keys
    (Hugging Face: the causal mask less `tril(causal, -window_size)`): dividing by
    sqrt(d_head), or seeing every earlier key there, each gives other logits than the
    bridge's, and a query that is 3 keys long or shorter sees no difference."""
    arch = architecture_of(gpt_neo)
    live = functional.live_params(gpt_neo)
    with torch.no_grad():
        theirs = gpt_neo(TOKENS)
        for changed in (dict(attn_scale=8**0.5), dict(attention_windows=None)):
            other = functional.forward(live, TOKENS, dataclasses.replace(arch, **changed))
            assert (other - theirs).abs().max() > 0.1, changed
        unwindowed = functional.forward(live, TOKENS, dataclasses.replace(
            arch, attention_windows=None))
    torch.testing.assert_close(unwindowed[:, :3], theirs[:, :3], atol=1e-5, rtol=1e-5)
    assert (unwindowed[:, 3] - theirs[:, 3]).abs().max() > 1e-3  # query 3 loses key 0


def test_gpt_neo_settings_outside_the_forward_pass_are_refused(tmp_path: Path) -> None:
    """A local window of no key; Flash Attention 2, which Hugging Face runs causal with
    no window on GPT-Neo's local layers. A window as long as the context is no window."""
    from interp.random_models import write_model

    wide = models.load(write_model(tmp_path / "wide", "gpt_neo", **SHAPE, window_size=8),
                       device="cpu")
    assert architecture_of(wide).attention_windows is None
    empty = models.load(write_model(tmp_path / "empty", "gpt_neo", **SHAPE, window_size=0),
                        device="cpu")
    with pytest.raises(ValueError, match=r"does not support this GPTNeoForCausalLM: "
                                         r"window_size=0 \(local layers that see no key\)$"):
        architecture_of(empty)
    wide.original_model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match=r"this GPTNeoForCausalLM: attn_implementation="
                                         r"'flash_attention_2' \(local layers without their "
                                         r"window\)$"):
        architecture_of(wide)


def test_phi_rotates_half_its_rotary_dimensions_and_adds_the_unembedding_bias(phi) -> None:
    """Phi rotates dimensions i and i + 2 of its 4 rotary ones (GPT-NeoX's rotate-half, not
    GPT-J's adjacent pairs) and adds `lm_head`'s bias to the logits: the other layout, or
    the bias left out, each gives other logits than the bridge's."""
    arch = architecture_of(phi)
    live = functional.live_params(phi)
    with torch.no_grad():
        theirs = phi(TOKENS)
        paired = functional.forward(live, TOKENS, dataclasses.replace(
            arch, rotary_adjacent_pairs=True))
        unbiased = functional.forward(dict(live, **{"unembed.bias": torch.zeros(20)}),
                                      TOKENS, arch)
    assert (paired - theirs).abs().max() > 0.1
    torch.testing.assert_close(unbiased + phi.original_model.lm_head.bias, theirs,
                               atol=1e-5, rtol=1e-5)
    assert phi.original_model.lm_head.bias.abs().max() > 0.1


@pytest.mark.parametrize(
    ("family", "setting", "message"),
    [
        # per-head LayerNorms with biases on queries and keys, which `Architecture.qk_norm`
        # (weight-only norms) cannot express
        ("phi", "qk_layernorm", r"PhiForCausalLM: qk_layernorm=True \(per-head LayerNorms "
                                r"with biases on queries and keys\)$"),
        ("bloom", "apply_residual_connection_post_layernorm",
         r"BloomForCausalLM: apply_residual_connection_post_layernorm=True \(post-LayerNorm "
         r"residuals\)$"),
    ],
)
def test_settings_outside_the_forward_pass_are_refused(
    tmp_path: Path, family: str, setting: str, message: str
) -> None:
    from interp.random_models import write_model

    model = models.load(write_model(tmp_path, family, **SHAPE), device="cpu")
    setattr(model.original_model.config, setting, True)
    with pytest.raises(ValueError, match=f"does not support this {message}"):
        architecture_of(model)


def test_bloom_alibi_slopes_and_fused_attention_for_any_head_count(tmp_path: Path) -> None:
    """BLOOM's ALiBi slopes are Hugging Face's for head counts that are no power of 2 (6:
    the 4 of 4 heads, then the odd powers of 8 heads' base), and the forward pass, with
    patterns or as fused kernels (the bias in the additive mask), at every position or at
    the last alone, equals the bridge's; without its embedding LayerNorm it does not."""
    from transformers.models.bloom.modeling_bloom import _get_alibi_slopes

    from interp.random_models import write_model

    folder = write_model(tmp_path, "bloom", **dict(SHAPE, n_heads=6, d_model=48),
                         initializer_range=0.2, jitter=0.2)
    model = models.load(folder, device="cpu").eval()
    arch = architecture_of(model)
    assert arch.alibi_slopes == tuple(_get_alibi_slopes(6, torch.device("cpu")).tolist())
    assert arch.alibi_slopes[4:] == (2.0**-1, 2.0**-3)
    live = functional.live_params(model)
    with torch.no_grad():
        theirs = model(TOKENS)
        for patterns in (True, False):
            ours = functional.forward(live, TOKENS, arch, patterns=patterns)
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
            last = functional.forward(live, TOKENS, arch, patterns=patterns,
                                      final_position_only=True)
            torch.testing.assert_close(last, theirs[:, -1:], atol=1e-5, rtol=1e-5)
        unnormed = functional.forward(live, TOKENS, dataclasses.replace(arch, embed_norm=False),
                                      validate=False)
    assert (unnormed - theirs).abs().max() > 0.1


SCALED_ROPE = {  # original contexts shorter than the test models' 8 positions: all scaled
    "llama3": ("llama", dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=4)),
    "linear": ("neox", dict(rope_type="linear", factor=2.0)),
    "yarn": ("qwen2", dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=4)),
}


@pytest.mark.parametrize("kind", sorted(SCALED_ROPE))
def test_scaled_rotary_frequencies_are_the_models_own(tmp_path: Path, kind: str) -> None:
    """Llama 3.1 / 3.2's "llama3" scaling, linear scaling (on GPT-NeoX) and YaRN (whose
    cos and sin are scaled too): the frequencies are read from the model's rotary module,
    so the forward pass (which every fast engine reruns) equals the bridge's."""
    from pretrained_models import write_llama, write_neox

    family, rope = SCALED_ROPE[kind]
    write = write_neox if family == "neox" else functools.partial(write_llama, kind=family)
    model = models.load(write(tmp_path, rope_scaling=rope), device="cpu").eval()
    arch = architecture_of(model)
    default = 1.0 / (arch.rotary_base ** (torch.arange(0, arch.rotary_dim, 2) / arch.rotary_dim))
    assert not torch.allclose(torch.tensor(arch.rotary_inv_freq), default)  # really scaled
    assert (arch.rotary_scale > 1.0) == (kind == "yarn")
    with torch.no_grad():
        ours = functional.forward(functional.live_params(model), TOKENS, arch)
        torch.testing.assert_close(ours, model(TOKENS), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama", "qwen3", "gemma", "gemma2",
                                    "gemma3"])
def test_bfloat16_forward_is_the_bridges_bit_for_bit(tmp_path: Path, family: str) -> None:
    """In bfloat16 the order of the ops shows (Llama's RMSNorm scales by its weight after
    casting back to bfloat16, Gemma's before; GPT-2's GELU is a formula, Gemma's a fused
    kernel; GPT-NeoX sums mlp_out + attn_out + resid): the forward pass follows each
    class's order, so the logits and every cached activation equal the bridge's exactly."""
    from pretrained_models import write_gpt2, write_llama, write_neox

    write = {"gpt2": write_gpt2, "neox": write_neox}.get(
        family, functools.partial(write_llama, kind=family)
    )
    model = models.load(write(tmp_path), device="cpu", dtype=torch.bfloat16)
    cache: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        ours = functional.forward(functional.live_params(model.eval()), TOKENS,
                                  architecture_of(model), cache=cache)
        theirs, bridge_cache = model.run_with_cache(TOKENS)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    assert torch.equal(ours, theirs)
    assert all(torch.equal(value, bridge_cache[name]) for name, value in cache.items())
