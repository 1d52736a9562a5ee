"""Tokenizer helpers shared by the tasks that run on pretrained models (IOI, greater-than).

A "tokenizer" here is any Hugging Face tokenizer (`model.tokenizer` of a TransformerBridge),
called as `tokenizer(text, add_special_tokens=False)["input_ids"]`.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor


def require_tokenizer(tokenizer: Any, task_name: str) -> Any:
    """`tokenizer`, or a ValueError saying that the task needs one."""
    if tokenizer is None:
        raise ValueError(
            f"task {task_name!r} needs a tokenizer (e.g. model.tokenizer); none was given"
        )
    if not callable(tokenizer):
        raise ValueError(
            f"task {task_name!r} needs a Hugging Face tokenizer, got {type(tokenizer).__name__}"
        )
    return tokenizer


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` without special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def single_token_id(tokenizer: Any, text: str) -> int | None:
    """The id of `text` if the tokenizer writes it as one known token, else None."""
    ids = encode(tokenizer, text)
    if len(ids) != 1:
        return None
    unknown = getattr(tokenizer, "unk_token_id", None)
    return None if unknown is not None and ids[0] == unknown else ids[0]


def bos_ids(tokenizer: Any, prepend_bos: bool) -> list[int]:
    """`[bos]` (or `[cls]` for BERT-style tokenizers) when asked for, else `[]`.

    A BOS token that the vocabulary lacks (its id is the unknown token's) is no BOS:
    TransformerLens gives BERT tokenizers `<|endoftext|>` as BOS, which they read as
    `[UNK]`; `[CLS]` is taken then."""
    if not prepend_bos:
        return []
    unknown = getattr(tokenizer, "unk_token_id", None)
    for attribute in ("bos_token_id", "cls_token_id"):
        token = getattr(tokenizer, attribute, None)
        if token is not None and (unknown is None or int(token) != int(unknown)):
            return [int(token)]
    raise ValueError("prepend_bos=True but the tokenizer has neither a BOS nor a CLS token")


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad token, else its EOS token, else 0."""
    for attribute in ("pad_token_id", "eos_token_id"):
        token = getattr(tokenizer, attribute, None)
        if token is not None:
            return int(token)
    return 0


def right_pad(sequences: list[list[int]], length: int, pad: int) -> Int[Tensor, "batch pos"]:
    """Token lists right-padded with `pad` to `length` and stacked."""
    out = torch.full((len(sequences), length), pad, dtype=torch.long)
    for row, ids in enumerate(sequences):
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out
