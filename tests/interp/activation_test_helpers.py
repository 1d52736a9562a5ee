"""What the tests of `interp.activations` share (the fixtures built from it are in this
folder's conftest.py): the hooks they cache, the size of the token batch, and the check that
`collect` left no hook behind."""

from __future__ import annotations

from transformer_lens.model_bridge import TransformerBridge

HOOKS = [
    "hook_embed",
    "blocks.0.attn.hook_pattern",
    "blocks.0.attn.hook_q",
    "blocks.0.hook_resid_post",
    "blocks.1.mlp.hook_post",
    "blocks.1.hook_resid_post",
    "ln_final.hook_normalized",
]
N_EXAMPLES, N_POS = 10, 7


def assert_no_hooks(model: TransformerBridge) -> None:
    for name, point in model.hook_dict.items():
        assert point.fwd_hooks == [] and point.bwd_hooks == [], name
        assert len(point._forward_hooks) == 0, name
