"""The functional forward pass against the bridge it mirrors: logits, caches, gradients, vmap.
(The parameter layout itself: test_param_layout.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from native_specs import BASE, SPECS
from transformer_lens.model_bridge import TransformerBridge

from interp import functional
from interp.models import ModelSpec, build

CACHED_HOOKS = ("hook_embed", "blocks.0.attn.hook_pattern", "blocks.0.hook_resid_post")


def tokens(spec: ModelSpec, batch: int = 4, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, spec.d_vocab, (batch, spec.n_ctx), generator=generator)


def randomised(spec: ModelSpec, seed: int = 0) -> TransformerBridge:
    """A bridge whose every weight, norm scale and bias is random, so that none is inert."""
    model = build(spec.model_copy(update={"seed": seed}), device="cpu")
    generator = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            noise = torch.randn(tensor.shape, generator=generator)
            centre = 1.0 if ".ln" in name and name.endswith("weight") else 0.0
            tensor.copy_(centre + 0.3 * noise if tensor.dim() == 1 else tensor + 0.1 * noise)
    return model


def loss_on(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


@pytest.fixture(scope="module", params=list(SPECS))
def case(request: pytest.FixtureRequest) -> tuple[ModelSpec, TransformerBridge]:
    spec = SPECS[request.param]
    return spec, randomised(spec)


def test_forward_equals_bridge_logits_and_cache(case) -> None:
    spec, model = case
    toks = tokens(spec)
    cache: dict[str, torch.Tensor] = {}
    logits = functional.forward(functional.params_of(model), toks, spec, cache=cache)
    with torch.no_grad():
        reference, reference_cache = model.run_with_cache(toks)
    assert logits.shape == (4, spec.n_ctx, spec.d_vocab_out)
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=0)
    last = spec.n_layers - 1
    expected = {*CACHED_HOOKS, f"blocks.{last}.attn.hook_pattern", f"blocks.{last}.hook_resid_post"}
    if not spec.attn_only:
        expected |= {f"blocks.{layer}.mlp.hook_post" for layer in range(spec.n_layers)}
    expected |= {f"blocks.{last}.attn.hook_{part}" for part in ("q", "k", "v", "z")}
    assert expected <= set(cache)
    for name, value in cache.items():
        torch.testing.assert_close(value, reference_cache[name], atol=1e-5, rtol=0, msg=name)
    assert cache["blocks.0.attn.hook_pattern"].shape == (4, spec.n_heads, spec.n_ctx, spec.n_ctx)


def test_func_grad_equals_bridge_autograd(case) -> None:
    spec, model = case
    toks = tokens(spec, seed=1)
    targets = toks % spec.d_vocab_out

    def loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_on(functional.forward(params, toks, spec, validate=False), targets)

    grads = torch.func.grad(loss)(functional.params_of(model))
    named = dict(model.named_parameters())
    bridge_grads = torch.autograd.grad(loss_on(model(toks), targets), list(named.values()))
    by_storage = {p.data_ptr(): g for p, g in zip(named.values(), bridge_grads, strict=True)}
    compared = 0
    for name, tensor in model.state_dict().items():
        if name in functional.TRAINABLE_EXCLUDED:
            continue
        torch.testing.assert_close(
            grads[name], by_storage[tensor.data_ptr()], atol=1e-5, rtol=1e-4, msg=name
        )
        compared += 1
    assert compared == len(named)


@pytest.mark.parametrize("name", ["ln-relu-1layer", "rms-gelu-new-rotary"])
def test_batched_forward_over_seeds_equals_each_model(name: str) -> None:
    spec = SPECS[name]
    models = [randomised(spec, seed) for seed in range(3)]
    toks = tokens(spec, seed=2)
    stacked = functional.stack_params([functional.params_of(m) for m in models])
    assert stacked["embed.weight"].shape == (3, spec.d_vocab, spec.d_model)
    logits = functional.batched_forward(stacked, toks, spec)
    assert logits.shape == (3, 4, spec.n_ctx, spec.d_vocab_out)
    with torch.no_grad():
        for index, model in enumerate(models):
            torch.testing.assert_close(logits[index], model(toks), atol=1e-5, rtol=0)

    targets = toks % spec.d_vocab_out

    def loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_on(functional.forward(params, toks, spec, validate=False), targets)

    batched_grads = torch.func.vmap(torch.func.grad(loss))(stacked)
    for index, params in enumerate(functional.unstack_params(stacked)):
        single = torch.func.grad(loss)(params)
        for key, grad in single.items():
            torch.testing.assert_close(batched_grads[key][index], grad, atol=1e-6, rtol=1e-5)


def test_load_params_round_trip_gives_identical_bridge_logits() -> None:
    spec = SPECS["none-gelu-2layers"]
    source = randomised(spec, seed=0)
    params = functional.params_of(source)
    params["blocks.1.mlp.out.weight"] += 0.5  # a trained copy, diverged from the bridge
    assert not torch.equal(
        params["blocks.1.mlp.out.weight"], source.state_dict()["blocks.1.mlp.out.weight"]
    )
    target = build(spec.model_copy(update={"seed": 9}), device="cpu")
    functional.load_params(target, params)
    toks = tokens(spec, seed=3)
    with torch.no_grad():
        assert torch.equal(target(toks), functional.forward(params, toks, spec))
    for name, tensor in target.state_dict().items():
        assert torch.equal(tensor, params[name]), name
    assert all(p.requires_grad for p in target.parameters())


def test_bad_params_and_tokens_raise_one_line_value_errors() -> None:
    spec = SPECS["ln-relu-1layer"]
    model = randomised(spec)
    params = functional.params_of(model)
    toks = tokens(spec)
    cases = [
        ({k: v for k, v in params.items() if k != "blocks.0.attn.q.bias"}, toks, "missing"),
        ({**params, "extra.weight": torch.zeros(1)}, toks, "unexpected"),
        ({**params, "unembed.weight": torch.zeros(3, 16)}, toks, "unembed.weight"),
        (params, torch.zeros(4, spec.n_ctx + 1, dtype=torch.long), "positions"),
        (params, toks.float(), "dtype"),
        (params, toks[0], "batch, pos"),
        (params, toks + spec.d_vocab, "outside"),
    ]
    for bad_params, bad_tokens, words in cases:
        with pytest.raises(ValueError, match=words) as info:
            functional.forward(bad_params, bad_tokens, spec)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="leading axis"):
        functional.batched_forward(
            {
                **functional.stack_params([params] * 2),
                "unembed.bias": torch.zeros(3, spec.d_vocab_out),
            },
            toks,
            spec,
        )
    with pytest.raises(ValueError, match="n_heads"):
        functional.forward(params, toks, {**BASE, "n_heads": "many"})


def test_a_dict_spec_works_like_the_model_spec() -> None:
    spec = SPECS["ln-relu-1layer"]
    model = randomised(spec)
    toks = tokens(spec)
    as_dict = spec.model_dump()
    assert torch.equal(
        functional.forward(functional.params_of(model), toks, as_dict),
        functional.forward(functional.params_of(model), toks, spec),
    )


def test_unsupported_bridge_settings_raise_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # A seed no other test uses: `architecture` remembers the specs it has resolved.
    spec = SPECS["ln-relu-1layer"].model_copy(update={"seed": 9_999})
    params = functional.params_of(randomised(spec))
    original = ModelSpec.to_bridge_config

    def gated(self: ModelSpec):
        cfg = original(self)
        cfg.gated_mlp = True
        return cfg

    monkeypatch.setattr(ModelSpec, "to_bridge_config", gated)
    with pytest.raises(ValueError, match="does not support gated_mlp$"):
        functional.forward(params, tokens(spec), spec)


@pytest.mark.parametrize("overrides", [{}, {"positional_embedding": "rotary"}, {"n_layers": 1}])
def test_final_position_only_equals_the_last_position_of_the_full_forward(overrides) -> None:
    base = dict(n_layers=2, d_model=32, n_heads=4, d_vocab=20, n_ctx=8)
    spec = ModelSpec(**{**base, **overrides})
    model = build(spec, device="cpu")
    params = functional.params_of(model)
    tokens = torch.randint(0, 20, (5, 6), generator=torch.Generator().manual_seed(1))
    full = functional.forward(params, tokens, spec)
    last = functional.forward(params, tokens, spec, final_position_only=True)
    assert last.shape == (5, 1, 20)
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-5)
    stacked = functional.stack_params([params, params])
    batched = functional.batched_forward(stacked, tokens, spec, final_position_only=True)
    torch.testing.assert_close(batched[1, :, 0], full[:, -1], rtol=1e-5, atol=1e-5)


def test_logit_positions_unembed_only_those_positions() -> None:
    spec = ModelSpec(n_layers=2, d_model=32, n_heads=4, d_vocab=20, n_ctx=8)
    params = functional.params_of(build(spec, device="cpu"))
    tokens = torch.randint(0, 20, (3, 7), generator=torch.Generator().manual_seed(2))
    full_cache: dict[str, torch.Tensor] = {}
    some_cache: dict[str, torch.Tensor] = {}
    full = functional.forward(params, tokens, spec, cache=full_cache)
    some = functional.forward(
        params, tokens, spec, cache=some_cache, logit_positions=torch.tensor([2, 6])
    )
    assert some.shape == (3, 2, 20)
    torch.testing.assert_close(some, full[:, [2, 6]], rtol=0, atol=1e-6)
    assert set(some_cache) == set(full_cache)  # the cache stays complete


def test_last_layer_positions_compute_the_last_layer_there_only() -> None:
    spec = ModelSpec(n_layers=2, d_model=32, n_heads=4, d_vocab=20, n_ctx=8)
    params = functional.params_of(build(spec, device="cpu"))
    tokens = torch.randint(0, 20, (3, 7), generator=torch.Generator().manual_seed(2))
    full_cache: dict[str, torch.Tensor] = {}
    some_cache: dict[str, torch.Tensor] = {}
    full = functional.forward(params, tokens, spec, cache=full_cache)
    rows = torch.tensor([2, 6])
    some = functional.forward(params, tokens, spec, cache=some_cache, last_layer_positions=rows)
    assert some.shape == (3, 2, 20)
    torch.testing.assert_close(some, full[:, rows], rtol=0, atol=1e-5)
    for name in ("blocks.1.attn.hook_k", "blocks.1.hook_resid_pre", "blocks.0.hook_resid_post"):
        torch.testing.assert_close(some_cache[name], full_cache[name], rtol=0, atol=0)
    torch.testing.assert_close(  # query rows of the last layer: the read ones
        some_cache["blocks.1.attn.hook_z"], full_cache["blocks.1.attn.hook_z"][:, rows]
    )
    with pytest.raises(ValueError, match="replaces final_position_only"):
        functional.forward(params, tokens, spec, last_layer_positions=rows, logit_positions=rows)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_activations_at_reads_every_cached_name_at_each_examples_position(n_layers) -> None:
    """The last layer runs at the read positions only, yet every name reads as the full
    forward's cache at each example's own position (repeated positions included)."""
    spec = ModelSpec(n_layers=n_layers, d_model=32, n_heads=4, d_vocab=20, n_ctx=8)
    params = functional.params_of(build(spec, device="cpu"))
    tokens = torch.randint(0, 20, (4, 7), generator=torch.Generator().manual_seed(3))
    positions = torch.tensor([6, 2, 6, 0])
    full_cache: dict[str, torch.Tensor] = {}
    functional.forward(params, tokens, spec, cache=full_cache)
    read = functional.activations_at(params, tokens, functional.architecture(spec), positions)
    names = [name for name in full_cache if "pattern" not in name]
    assert f"blocks.{n_layers - 1}.attn.hook_z" in names and "hook_pos_embed" in names
    for name in names:
        torch.testing.assert_close(read(name), full_cache[name][torch.arange(4), positions],
                                   rtol=0, atol=1e-5, msg=name)
    last = f"blocks.{n_layers - 1}.attn"
    torch.testing.assert_close(read(f"{last}.hook_v", every_position=True),
                               full_cache[f"{last}.hook_v"], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="computed at the read positions only"):
        read(f"{last}.hook_z", every_position=True)
    with_patterns = functional.activations_at(params, tokens, functional.architecture(spec),
                                              positions, patterns=True)
    for layer in range(n_layers):  # a pattern reads as the query row of each example
        name = f"blocks.{layer}.attn.hook_pattern"
        torch.testing.assert_close(with_patterns(name),
                                   full_cache[name][torch.arange(4), :, positions],
                                   rtol=0, atol=1e-6, msg=name)


def test_batched_final_position_does_not_broadcast_weights_to_examples() -> None:
    """Under vmap, a linear layer on a strided slice of positions with a batched weight
    used to copy the weight once per example (`[S, batch, d_model, d_model]`)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    spec = ModelSpec(n_layers=1, d_model=32, n_heads=4, d_mlp=16, d_vocab=20, n_ctx=4,
                     act_fn="relu", normalization=None)
    params = functional.params_of(build(spec, device="cpu"))
    stacked = {k: v.requires_grad_(True) for k, v in functional.stack_params([params] * 2).items()}
    toks = torch.randint(0, 20, (64, 4), generator=torch.Generator().manual_seed(0))
    largest = 0

    class Largest(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal largest
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                largest = max(largest, out.numel())
            return out

    with Largest():
        logits = functional.batched_forward(stacked, toks, spec, final_position_only=True)
        logits.sum().backward()
    assert largest < 2 * 64 * 32 * 32
    full = functional.batched_forward(stacked, toks, spec)
    torch.testing.assert_close(logits[:, :, 0], full[:, :, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("query", [slice(0, 7), slice(4, 7), slice(6, 7)])
@pytest.mark.parametrize("causal", [True, False])
def test_fused_mix_heads_equals_the_explicit_pattern(query: slice, causal: bool) -> None:
    """One fused kernel (`fused=True`) against scores, mask, softmax and mixing: the same
    z for queries at every position, at a suffix, and at the last one; with gradients."""
    spec = ModelSpec(n_layers=1, d_model=32, n_heads=4, d_vocab=20, n_ctx=7,
                     attention="causal" if causal else "bidirectional")
    arch = functional.architecture(spec)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, n, 4, 8, generator=generator) for n in (
        query.stop - query.start, 7, 7))
    positions = torch.arange(7)[query]
    explicit, pattern = functional.mix_heads(q, k, v, positions, arch)
    k.requires_grad_(True)
    fused, none = functional.mix_heads(q, k, v, positions, arch, fused=True)
    assert none is None and pattern is not None
    torch.testing.assert_close(fused, explicit, rtol=0, atol=2e-6)
    fused.sum().backward()
    assert k.grad is not None and torch.isfinite(k.grad).all()


def test_causal_bias_is_zero_on_and_below_the_diagonal_and_made_once() -> None:
    bias = functional.causal_bias(4, torch.device("cpu"), torch.float32)
    assert torch.equal(bias.isneginf(), torch.triu(torch.ones(4, 4, dtype=torch.bool), 1))
    assert (bias[~bias.isneginf()] == 0).all()
    with torch.inference_mode():  # kept from before, and usable by autograd afterwards
        assert functional.causal_bias(4, torch.device("cpu"), torch.float32) is bias
    assert not bias.is_inference()


def test_forward_without_patterns_caches_none_and_agrees() -> None:
    spec = ModelSpec(n_layers=2, d_model=32, n_heads=4, d_mlp=16, d_vocab=20, n_ctx=6)
    params = functional.params_of(build(spec, device="cpu"))
    tokens = torch.randint(0, 20, (3, 6), generator=torch.Generator().manual_seed(1))
    full: dict[str, torch.Tensor] = {}
    lean: dict[str, torch.Tensor] = {}
    expected = functional.forward(params, tokens, spec, cache=full)
    logits = functional.forward(params, tokens, spec, cache=lean, patterns=False)
    assert set(full) - set(lean) == {f"blocks.{layer}.attn.hook_pattern" for layer in range(2)}
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    for name, value in lean.items():
        torch.testing.assert_close(value, full[name], rtol=0, atol=1e-5, msg=name)


def test_token_tables_give_the_bridge_logits_and_gradients(case) -> None:
    """`token_tables=True` gathers the first layer's residual stream and q/k/v from
    per-(position, token) tables: the same logits and gradients, every architecture with
    absolute positions; a one-line error for rotary models and for a cache."""
    spec, model = case
    params = functional.params_of(model)
    toks = tokens(spec, batch=9, seed=3)
    if spec.positional_embedding == "rotary":
        with pytest.raises(ValueError, match="token_tables needs absolute position embeddings"):
            functional.forward(params, toks, spec, token_tables=True)
        return
    with pytest.raises(ValueError, match="pass cache=None"):
        functional.forward(params, toks, spec, token_tables=True, cache={})
    with torch.no_grad():
        reference = model(toks)
    tabled = functional.forward(params, toks, spec, token_tables=True)
    torch.testing.assert_close(tabled, reference, atol=1e-5, rtol=0)
    last = functional.forward(params, toks, spec, token_tables=True, final_position_only=True)
    torch.testing.assert_close(last[:, 0], reference[:, -1], atol=1e-5, rtol=0)

    targets = toks % spec.d_vocab_out

    def loss(params: dict[str, torch.Tensor], tables: bool) -> torch.Tensor:
        logits = functional.forward(params, toks, spec, validate=False, token_tables=tables)
        return loss_on(logits, targets)

    plain, tabled_grads = (torch.func.grad(loss)(params, tables) for tables in (False, True))
    for name, grad in plain.items():
        torch.testing.assert_close(tabled_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)

    stacked = functional.stack_params([params, functional.params_of(randomised(spec, 1))])
    batched = functional.batched_forward(stacked, toks, spec, token_tables=True)
    torch.testing.assert_close(batched[0], reference, atol=1e-5, rtol=0)


def test_token_tables_project_each_position_and_token_once() -> None:
    """Counted FLOPs: the tables replace the q, k and v projections of batch x pos rows by
    one projection of pos x d_vocab rows; every other matmul is the same."""
    from torch.utils.flop_counter import FlopCounterMode

    spec = SPECS["ln-relu-1layer"]
    params = functional.params_of(randomised(spec))
    batch = 40
    toks = tokens(spec, batch=batch, seed=4)
    flops = []
    for tables in (False, True):
        with FlopCounterMode(display=False) as counter:
            functional.forward(params, toks, spec, token_tables=tables)
        flops.append(counter.get_total_flops())
    width = spec.n_heads * spec.d_head
    rows_saved = spec.n_ctx * (batch - spec.d_vocab)
    assert flops[0] - flops[1] == 2 * 3 * spec.d_model * width * rows_saved


@pytest.mark.parametrize("lead", [(7,), (7, 2)])
def test_linear_under_vmap_equals_f_linear_and_accumulates_weight_grads_without_copies(
    lead: tuple[int, ...],
) -> None:
    """Under vmap over stacked weights `functional.linear` computes `(W @ x^T)^T + b`: the
    values of `F.linear` per model, and weight gradients made in the weights' layout, so
    that autograd accumulates them with no copy (`x @ W^T` makes them transposed)."""
    from interp.dispatch_count import count_dispatch

    generator = torch.Generator().manual_seed(6)
    n_models, d_in, d_out = 3, 5, 4
    weight = torch.randn(n_models, d_out, d_in, generator=generator).requires_grad_(True)
    bias = torch.randn(n_models, d_out, generator=generator).requires_grad_(True)
    x = torch.randn(*lead, d_in, generator=generator)
    out = torch.func.vmap(functional.linear, in_dims=(None, 0, 0))(x, weight, bias)
    expected = [F.linear(x, w, b) for w, b in zip(weight, bias, strict=True)]
    torch.testing.assert_close(out, torch.stack(expected), atol=1e-6, rtol=0)
    with count_dispatch() as counted:
        out.square().sum().backward()
    assert counted.by_op["copy_"] == 0, counted.by_op
    reference = torch.autograd.grad(sum(e.square().sum() for e in expected), [weight, bias])
    torch.testing.assert_close(weight.grad, reference[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bias.grad, reference[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["LN", "LNPRE", "RMS", "RMS1P", None])
def test_normalized_parts_sum_to_the_norm_of_their_sum(kind) -> None:
    """Each part's share of a norm (`normalized_parts`, the heads' outputs under Gemma 2's
    norm after attention) adds up to the norm of the whole input; a share is not the norm
    of its part alone (the scale is the sum's)."""
    generator = torch.Generator().manual_seed(0)
    parts = torch.randn(2, 3, 4, 8, generator=generator)  # [batch, pos, part, d]
    rest = torch.randn(8, generator=generator).expand(2, 3, 8)
    params = {"n.weight": torch.randn(8, generator=generator),
              "n.bias": torch.randn(8, generator=generator)}
    shares, rest_share = functional.normalized_parts(params, "n", parts, rest, kind, 1e-5)
    whole = functional.normalize(params, "n", parts.sum(-2) + rest, kind, 1e-5)
    assert shares.shape == parts.shape and rest_share.shape == rest.shape
    torch.testing.assert_close(shares.sum(-2) + rest_share, whole, atol=1e-5, rtol=1e-5)
    if kind is not None:
        alone = functional.normalize(params, "n", parts[:, :, 0], kind, 1e-5)
        assert not torch.allclose(shares[:, :, 0], alone, atol=1e-3)
