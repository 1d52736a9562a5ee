"""Side by side: direct logit attribution and the logit lens against TransformerLens's.

    python benchmarks/direct_effects.py [--quick] [--device cpu|cuda|auto]

On a native model of 4 layers x 8 heads x d_model 256 (GELU, LayerNorm, vocabulary 1000)
and on random Hugging Face GPT-2s of that shape booted from a local folder, one with that
vocabulary and one with GPT-2's own 50,257 tokens (where the unembedding of every position,
which ours skips, outweighs the blocks), 32 random sequences of 24 tokens, random answer
and wrong tokens read at the last position:

- direct logit attribution of every head, MLP and the embeddings to the logit difference
  (`circuits.logit_attribution.direct_logit_attribution`) against what a TransformerLens
  user writes:

  ```
  _, cache = model.run_with_cache(tokens)
  heads = cache.stack_head_results(layer=-1, pos_slice=-1)
  parts = cache.decompose_resid(layer=-1, pos_slice=-1)   # embed, pos_embed, attn, mlp
  cache.logit_attrs(torch.cat([heads, parts]), tokens=answer, incorrect_tokens=wrong, pos_slice=-1)
  ```

  compared on the heads (max |diff|; the final norm's weight is 1 in both models, which
  `logit_attrs` needs on a bridge whose norms are not folded);
- the logit lens (`interp.logit_lens.logit_lens`: logit difference, answer log-probability
  and rank at each depth) against `transformer_lens.tools.analysis.logit_lens.logit_lens`
  (`return_type="logits"`, then the same three readouts), compared on the logit
  difference.

Both sides run under `torch.inference_mode()`. A last line gives the load average.
`--quick`: the 2-layer 4-head d_model 64 shape, 4 sequences of 8 tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from _common import compare, load_line, parse_args, random_pretrained
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.tools.analysis.logit_lens import logit_lens as reference_lens

from circuits.logit_attribution import direct_logit_attribution
from interp import models
from interp.logit_lens import logit_lens
from interp.tasks.base import TaskBatch

FULL = dict(n_layers=4, n_heads=8, d_model=256, batch=32, pos=24)
QUICK = dict(n_layers=2, n_heads=4, d_model=64, batch=4, pos=8)
VOCAB = 1000


GPT2_VOCAB = 50257


def task_batch(batch: int, pos: int, device: torch.device) -> TaskBatch:
    """Random tokens of the smaller vocabulary (so that every model reads them)."""
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(0, VOCAB, (batch, pos), generator=generator)
    answer, wrong = torch.randint(0, VOCAB, (2, batch), generator=generator)
    return TaskBatch(clean, clean, answer, wrong, torch.full((batch,), pos - 1)).to(device)


def reference_heads(model: TransformerBridge, batch: TaskBatch) -> Tensor:
    """The heads' direct logit attributions as TransformerLens computes them, `[example,
    layer * head]` (the embeddings' and MLPs' are computed too, as a user would)."""
    _, cache = model.run_with_cache(batch.clean)
    heads = cache.stack_head_results(layer=-1, pos_slice=-1)
    parts = cache.decompose_resid(layer=-1, pos_slice=-1)
    attrs = cache.logit_attrs(torch.cat([heads, parts]), tokens=batch.answer,
                              incorrect_tokens=batch.wrong, pos_slice=-1)
    return attrs[: heads.shape[0]].T


def reference_lens_diff(model: TransformerBridge, batch: TaskBatch) -> Tensor:
    """TransformerLens's logit lens, read as ours: `[example, stage]` logit differences
    (the log-probabilities and ranks computed too)."""
    logits = reference_lens(model, batch.clean, positions=-1, return_type="logits").values
    index = batch.answer[None, :, None].expand(logits.shape[0], -1, 1)
    answer = logits.gather(-1, index)
    wrong = logits.gather(-1, batch.wrong[None, :, None].expand_as(index))
    _ = (answer - logits.logsumexp(-1, keepdim=True), (logits > answer).sum(-1))
    return (answer - wrong)[..., 0].T


def lines_for(name: str, model: TransformerBridge, batch: TaskBatch, device: torch.device,
              repeats: int) -> list[str]:
    heads = [i for i in range(1 + model.cfg.n_layers * (model.cfg.n_heads + 1))
             if i % (model.cfg.n_heads + 1) != 0]  # the heads' columns: not embed, not MLPs
    shape = (f"{model.cfg.n_layers}L {model.cfg.n_heads}h d{model.cfg.d_model} "
             f"v{model.cfg.d_vocab}")
    where = f"{name} {shape}, {len(batch)}x{batch.clean.shape[1]} tokens"
    with torch.inference_mode():
        attribution = compare(
            f"direct logit attribution, {where}",
            lambda: direct_logit_attribution(model, batch).values[:, heads],
            lambda: reference_heads(model, batch), device=device, repeats=repeats,
        )
        lens = compare(
            f"logit lens, {where}",
            lambda: logit_lens(model, batch).logit_diff,
            lambda: reference_lens_diff(model, batch), device=device, repeats=repeats,
        )
    return [attribution.line(), lens.line()]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    size = QUICK if args.quick else FULL
    shape = dict(n_layers=size["n_layers"], n_heads=size["n_heads"], d_model=size["d_model"])
    batch = task_batch(size["batch"], size["pos"], args.device)
    native = models.build(dict(**shape, d_vocab=VOCAB, n_ctx=size["pos"], act_fn="gelu"),
                          device=args.device).eval()
    repeats = 2 if args.quick else 5
    for line in lines_for("native", native, batch, args.device, repeats):
        print(line, flush=True)
    for vocab in (VOCAB, GPT2_VOCAB):
        gpt2 = random_pretrained("gpt2", args.device, **shape, d_vocab=vocab, n_ctx=size["pos"])
        for line in lines_for("GPT-2 (HF)", gpt2, batch, args.device, repeats):
            print(line, flush=True)
    print(load_line())


if __name__ == "__main__":
    main()
