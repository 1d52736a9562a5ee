"""Tasks: answers known by construction, validation errors, determinism, tokenizers."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest
import torch
from pydantic import TypeAdapter
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from interp.metrics import accuracy
from interp.tasks import (
    IGNORE_INDEX,
    TASK_CONFIGS,
    TASKS,
    AnyTaskConfig,
    GreaterThan,
    Induction,
    InductionConfig,
    IOIConfig,
    ModularArithmetic,
    ModularConfig,
    make_task,
    parse_task_config,
)
from interp.tasks.base import TaskBatch
from interp.tasks.data_files import load_task_data
from interp.tasks.ioi import abba_template
from interp.tasks.tokens import bos_ids

SPECIALS = ["[PAD]", "[UNK]", "[BOS]"]


def word_level_tokenizer(words: list[str], pre_tokenizer: Any = None) -> PreTrainedTokenizerFast:
    """A tiny whole-word tokenizer built in memory (no download)."""
    vocab = {token: i for i, token in enumerate(SPECIALS + sorted(set(words)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizer or pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]"
    )


def words_of(texts: list[str]) -> list[str]:
    splitter = pre_tokenizers.Whitespace()
    return [word for text in texts for word, _ in splitter.pre_tokenize_str(text)]


def assert_same_batch(first: TaskBatch, second: TaskBatch) -> None:
    for field in fields(TaskBatch):
        a, b = getattr(first, field.name), getattr(second, field.name)
        assert (a is None and b is None) or torch.equal(a, b), field.name


def ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def minilm_tokenizer(minilm_path: str) -> Any:
    """The WordPiece tokenizer of the offline MiniLM model (no model weights loaded)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


# --------------------------------------------------------------------------- modular


def direct_answer(op: str, a: int, b: int, p: int) -> int:
    if op == "+":
        return (a + b) % p
    if op == "-":
        return (a - b) % p
    if op == "*":
        return (a * b) % p
    return (a**2 + a * b + b**2) % p


@pytest.mark.parametrize("op", ["+", "-", "*", "poly"])
def test_modular_answers_match_direct_arithmetic(op: str) -> None:
    p = 7
    task = ModularArithmetic(p=p, op=op, seed=3)
    batch = task.batch()
    assert (task.d_vocab, task.d_vocab_out, task.n_ctx) == (p + 2, p, 4)
    assert len(batch) == p * p
    for index in range(p * p):
        a, b = divmod(index, p)  # a-major order
        assert batch.clean[index].tolist() == [a, p, b, p + 1]
        assert int(batch.answer[index]) == direct_answer(op, a, b, p)
        ca, _, cb, _ = batch.corrupted[index].tolist()
        assert int(batch.wrong[index]) == direct_answer(op, ca, cb, p)
        assert int(batch.wrong[index]) != int(batch.answer[index])
        row_is_constant = len({direct_answer(op, a, x, p) for x in range(p)}) == 1
        assert (ca == a) != row_is_constant  # a changes only where no b can change the answer
    assert torch.equal(batch.position, torch.full((p * p,), 3))
    assert batch.targets is None


def test_modular_multiplication_by_zero_changes_a() -> None:
    batch = ModularArithmetic(p=5, op="*").batch()
    zero_rows = batch.clean[:, 0] == 0
    assert bool((batch.corrupted[zero_rows, 0] != 0).all())
    assert bool((batch.wrong[zero_rows] != 0).all())


def test_modular_rejects_composite_p_and_bad_fields() -> None:
    with pytest.raises(ValueError, match="p=9 is not prime"):
        ModularArithmetic(p=9)
    with pytest.raises(ValueError, match="p=1 is not prime"):
        make_task({"name": "modular", "p": 1})
    with pytest.raises(ValueError, match="frac_train"):
        ModularArithmetic(p=5, frac_train=1.0)
    with pytest.raises(ValueError, match="op"):
        ModularArithmetic(p=5, op="/")
    with pytest.raises(ValueError, match="not both"):
        ModularArithmetic(ModularConfig(p=5), p=7)


def test_modular_train_test_split() -> None:
    task = ModularArithmetic(p=11, frac_train=0.3, seed=1)
    train, test = task.train_test()
    assert (len(train), len(test)) == (round(0.3 * 121), 121 - round(0.3 * 121))
    pairs = {tuple(row[[0, 2]].tolist()) for row in torch.cat([train.clean, test.clean])}
    assert len(pairs) == 121  # disjoint and together the whole table
    again, _ = task.train_test()
    assert torch.equal(again.clean, train.clean)
    other, _ = task.train_test(seed=2)
    assert not torch.equal(other.clean, train.clean)
    half, _ = task.train_test(frac_train=0.5)
    assert len(half) == round(0.5 * 121)
    with pytest.raises(ValueError, match="frac_train"):
        ModularArithmetic(p=5).train_test()


def test_modular_seed_determinism_and_examples_match_batch() -> None:
    first = ModularArithmetic(p=7, op="+", seed=0)
    assert_same_batch(first.batch(), ModularArithmetic(p=7, op="+", seed=0).batch())
    other = ModularArithmetic(p=7, op="+", seed=1).batch()
    assert not torch.equal(first.batch().corrupted, other.corrupted)
    dataset = first.examples()
    assert_same_batch(TaskBatch.from_dataset(dataset), first.batch())
    assert dataset[10]["prompt"] == "1 + 3 ="


# --------------------------------------------------------------------------- induction


def induction_oracle_logits(tokens: torch.Tensor, d_vocab: int) -> torch.Tensor:
    """One-hot logits predicting, at each position, the token that followed the previous
    occurrence of the current token (all zeros where it has not occurred before)."""
    n, n_pos = tokens.shape
    logits = torch.zeros(n, n_pos, d_vocab)
    for row in range(n):
        seq = tokens[row].tolist()
        for t in range(n_pos):
            earlier = [s for s in range(t) if seq[s] == seq[t]]
            if earlier:
                logits[row, t, seq[earlier[-1] + 1]] = 1.0
    return logits


def test_induction_structure_and_targets() -> None:
    length = 6
    task = Induction(d_vocab=20, half_len=length, n_examples=32, seed=0)
    batch = task.batch()
    assert (task.d_vocab, task.d_vocab_out, task.n_ctx) == (20, 20, 2 * length)
    assert batch.clean.shape == (32, 2 * length)
    assert bool((batch.clean[:, 0] == 19).all()) and bool((batch.corrupted[:, 0] == 19).all())
    first = batch.clean[:, 1 : length + 1]
    assert bool((first < 19).all())
    assert all(len(set(row.tolist())) == length for row in first)
    assert torch.equal(batch.clean[:, length + 1 :], first[:, :-1])
    assert torch.equal(batch.answer, first[:, -1])
    assert torch.equal(batch.position, torch.full((32,), 2 * length - 1))
    assert bool((batch.wrong != batch.answer).all())
    targets = batch.targets
    assert targets is not None
    has_target = targets != IGNORE_INDEX
    expected_mask = torch.zeros(2 * length, dtype=torch.bool)
    expected_mask[length + 1 :] = True  # positions L+1 .. 2L-1
    assert bool((has_target == expected_mask).all())
    for t in range(length + 1, 2 * length):
        assert torch.equal(targets[:, t], batch.clean[:, t - length + 1])
    oracle = induction_oracle_logits(batch.clean, 20).argmax(-1)
    assert torch.equal(oracle[has_target], targets[has_target])


def test_induction_oracle_accuracy_clean_vs_corrupted() -> None:
    task = Induction(d_vocab=64, half_len=8, n_examples=200, seed=5)
    batch = task.batch()
    clean_acc = accuracy(induction_oracle_logits(batch.clean, 64), batch)
    assert float(clean_acc.mean()) == 1.0
    corrupted_acc = accuracy(induction_oracle_logits(batch.corrupted, 64), batch)
    assert float(corrupted_acc.mean()) < 0.1  # chance is about 1/63


def test_induction_with_gaps_varies_the_distance_and_keeps_the_oracle_exact() -> None:
    length, gap = 6, 4
    task = Induction(d_vocab=20, half_len=length, max_gap=gap, n_examples=64, seed=2)
    batch = task.batch()
    assert task.n_ctx == 2 * length - 1 + gap + 1 and batch.clean.shape == (64, task.n_ctx)
    assert batch.corrupted.shape == batch.clean.shape
    repeat = batch.clean[:, -(length - 1) :]
    distances = set()
    for row, tokens in zip(batch.clean.tolist(), repeat.tolist(), strict=True):
        start = row.index(tokens[0])  # first copy: x_1 occurs exactly twice
        assert row[start : start + length - 1] == tokens
        distances.add(len(row) - (length - 1) - start)
        copies = row[start : start + length]
        fillers = set(row[1:start]) | set(row[start + length : len(row) - (length - 1)])
        assert not fillers & set(copies)  # fillers never repeat a copied token
    assert len(distances) > 1  # no single offset finds the previous occurrence
    has_target = batch.targets != IGNORE_INDEX
    oracle = induction_oracle_logits(batch.clean, 20).argmax(-1)
    assert torch.equal(oracle[has_target], batch.targets[has_target])
    assert float(accuracy(induction_oracle_logits(batch.clean, 20), batch).mean()) == 1.0


def test_induction_without_bos() -> None:
    task = Induction(d_vocab=10, half_len=4, n_examples=5, bos=False)
    batch = task.batch()
    assert task.n_ctx == 7 and batch.clean.shape == (5, 7)
    assert torch.equal(batch.clean[:, 4:], batch.clean[:, :3])
    assert batch.targets is not None
    assert torch.equal(batch.targets[:, 4:], batch.clean[:, 1:4])
    assert bool((batch.targets[:, :4] == IGNORE_INDEX).all())


def test_induction_validation_and_determinism() -> None:
    with pytest.raises(ValueError, match="need d_vocab >= 17"):
        Induction(d_vocab=10, half_len=16)
    with pytest.raises(ValueError, match="half_len"):
        InductionConfig(half_len=1)
    with pytest.raises(ValueError, match="seed: Input should be less than"):  # not torch's
        make_task({"name": "induction", "seed": 2**64})  # "Overflow when unpacking long long"
    a = Induction(n_examples=16, seed=4)
    assert_same_batch(a.batch(), Induction(n_examples=16, seed=4).batch())
    assert not torch.equal(a.batch().clean, Induction(n_examples=16, seed=5).batch().clean)
    assert_same_batch(TaskBatch.from_dataset(a.examples()), a.batch())


# --------------------------------------------------------------------------- IOI


def check_ioi_rows(task: Any, tokenizer: Any) -> None:
    dataset = task.examples()
    batch = task.batch()
    assert_same_batch(TaskBatch.from_dataset(dataset), batch)
    bos = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id]
    pad = tokenizer.pad_token_id
    for i, row in enumerate(dataset):
        io, s = row["io_name"], row["s_name"]
        assert row["answer"] == ids(tokenizer, " " + io)[0]
        assert row["wrong"] == ids(tokenizer, " " + s)[0]
        position = row["position"]
        clean = batch.clean[i].tolist()
        corrupted = batch.corrupted[i].tolist()
        assert clean[: position + 1] == bos + ids(tokenizer, row["prompt"])
        assert corrupted[: position + 1] == bos + ids(tokenizer, row["corrupted_prompt"])
        assert all(t == pad for t in clean[position + 1 :] + corrupted[position + 1 :])
        slots = [row["io_position"], row["s1_position"], row["s2_position"]]
        assert [clean[k] for k in slots] == [row["answer"], row["wrong"], row["wrong"]]
        others = row["corrupted_names"]
        assert len(set(others)) == 3 and not set(others) & {io, s}
        assert [corrupted[k] for k in slots] == [ids(tokenizer, " " + n)[0] for n in others]
        assert [k for k in range(len(clean)) if clean[k] != corrupted[k]] == sorted(slots)
        if row["template_type"] == "ABBA":
            assert row["io_position"] < row["s1_position"] < row["s2_position"]
        else:
            assert row["s1_position"] < row["io_position"] < row["s2_position"]


def test_ioi_on_minilm_tokenizer(minilm_tokenizer: Any) -> None:
    task = make_task({"name": "ioi", "n_examples": 40, "seed": 1}, tokenizer=minilm_tokenizer)
    check_ioi_rows(task, minilm_tokenizer)
    kinds = set(task.examples()["template_type"])
    assert kinds == {"ABBA", "BABA"}


def test_prompts_on_a_bridge_s_bert_tokenizer_start_with_cls(minilm: Any) -> None:
    """TransformerLens gives the bridge's BERT tokenizer `<|endoftext|>` as BOS, which
    WordPiece reads as [UNK]: prompts start with [CLS], as BERT was trained on."""
    tokenizer = minilm.tokenizer
    assert tokenizer.bos_token_id == tokenizer.unk_token_id  # what the bridge sets up
    batch = make_task({"name": "ioi", "n_examples": 4}, tokenizer=tokenizer).batch()
    assert batch.clean[:, 0].tolist() == batch.corrupted[:, 0].tolist() == [101] * 4  # [CLS]
    assert bos_ids(tokenizer, True) == [tokenizer.cls_token_id] == [101]
    assert bos_ids(tokenizer, False) == []


def ioi_tokenizer(names: list[str]) -> PreTrainedTokenizerFast:
    data = load_task_data("ioi.json")
    blanks = {"IO": "", "S1": "", "S2": "", "PLACE": "", "OBJECT": ""}
    template_words = words_of([t.format(**blanks) for t in data["baba_templates"]])
    return word_level_tokenizer(template_words + data["places"] + data["objects"] + names)


def test_ioi_on_local_tokenizer_uses_only_known_names() -> None:
    names = ["John", "Mary", "Alice", "Peter", "Sarah", "Thomas"]
    tokenizer = ioi_tokenizer(names)
    task = make_task(IOIConfig(n_examples=30, template_type="ABBA"), tokenizer=tokenizer)
    assert sorted(task.name_ids) == sorted(names)  # the other names are [UNK]
    check_ioi_rows(task, tokenizer)
    assert set(task.examples()["template_type"]) == {"ABBA"}


def test_ioi_determinism() -> None:
    tokenizer = ioi_tokenizer(["John", "Mary", "Alice", "Peter", "Sarah", "Thomas"])
    first = make_task({"name": "ioi", "n_examples": 20, "seed": 0}, tokenizer=tokenizer)
    again = make_task({"name": "ioi", "n_examples": 20, "seed": 0}, tokenizer=tokenizer)
    other = make_task({"name": "ioi", "n_examples": 20, "seed": 1}, tokenizer=tokenizer)
    assert_same_batch(first.batch(), again.batch())
    assert first.examples()["prompt"] != other.examples()["prompt"]


def test_ioi_errors() -> None:
    with pytest.raises(ValueError, match="needs a tokenizer"):
        make_task({"name": "ioi"})
    with pytest.raises(ValueError, match="at least 5 names"):
        make_task({"name": "ioi"}, tokenizer=ioi_tokenizer(["John", "Mary", "Alice"]))
    with pytest.raises(ValueError, match="template_type"):
        make_task({"name": "ioi", "template_type": "ABC"})


def test_abba_template_swaps_the_first_clause() -> None:
    baba = "Then, {S1} and {IO} went to the {PLACE}. {S2} gave a {OBJECT} to"
    assert abba_template(baba) == "Then, {IO} and {S1} went to the {PLACE}. {S2} gave a {OBJECT} to"


# --------------------------------------------------------------------------- greater-than


def year_tokenizer(numbers: list[str], nouns: list[str]) -> PreTrainedTokenizerFast:
    """Whole words, and digits split into pairs: " 1732" -> "17", "32" (like GPT-2)."""
    pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Split(Regex(r"\d\d"), behavior="isolated")]
    )
    words = ["The", "lasted", "from", "the", "year", "to", *nouns, *numbers]
    return word_level_tokenizer(words, pre_tokenizer)


@pytest.fixture(scope="module")
def gt_tokenizer() -> PreTrainedTokenizerFast:
    return year_tokenizer([f"{i:02d}" for i in range(100)], ["dispute", "expedition", "warfare"])


def test_greater_than_prompts(gt_tokenizer: PreTrainedTokenizerFast) -> None:
    task = GreaterThan(n_examples=50, seed=2, centuries=(15, 17), tokenizer=gt_tokenizer)
    assert task.nouns == ["dispute", "expedition", "warfare"]
    dataset = task.examples()
    batch = task.batch()
    assert_same_batch(TaskBatch.from_dataset(dataset), batch)
    year_ids = [ids(gt_tokenizer, f"{i:02d}")[0] for i in range(100)]
    assert task.year_tokens.tolist() == year_ids
    for i, row in enumerate(dataset):
        yy, century = row["year"], row["century"]
        assert 2 <= yy <= 98 and century in (15, 17)
        assert row["prompt"] == (
            f"The {row['noun']} lasted from the year {century}{yy:02d} to the year {century}"
        )
        assert row["answer"] == year_ids[yy] and row["wrong"] == year_ids[1]
        clean, corrupted = batch.clean[i].tolist(), batch.corrupted[i].tolist()
        assert clean[: row["position"] + 1] == [gt_tokenizer.bos_token_id] + ids(
            gt_tokenizer, row["prompt"]
        )
        assert row["position"] == len(clean) - 1  # all prompts have the same length here
        assert clean[row["position"]] == year_ids[century]
        assert clean[row["year_position"]] == year_ids[yy]
        assert corrupted[row["year_position"]] == year_ids[1]
        differs = [k for k in range(len(clean)) if clean[k] != corrupted[k]]
        assert differs == ([row["year_position"]] if yy != 1 else [])


def test_greater_than_prob_diff(gt_tokenizer: PreTrainedTokenizerFast) -> None:
    task = GreaterThan(n_examples=8, seed=0, tokenizer=gt_tokenizer)
    batch = task.batch()
    metric = task.metric()
    assert task.default_metric == "prob_diff" and "logit_diff" in task.metrics()
    vocab = len(gt_tokenizer)
    n, n_pos = batch.clean.shape
    years = torch.tensor(task.examples()["year"])
    uniform = torch.zeros(n, n_pos, vocab)
    expected = ((99 - years) - (years + 1)).float() / vocab  # counts of > YY minus <= YY
    assert torch.allclose(metric(uniform, batch), expected, atol=1e-6)
    above = torch.zeros(n, n_pos, vocab)
    below = torch.zeros(n, n_pos, vocab)
    rows = torch.arange(n)
    above[rows, batch.position, task.year_tokens[years + 1]] = 100.0
    below[rows, batch.position, task.year_tokens[years]] = 100.0
    assert torch.allclose(metric(above, batch), torch.ones(n))
    assert torch.allclose(metric(below, batch), -torch.ones(n))


def test_greater_than_errors(minilm_tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="splits a year"):
        GreaterThan(tokenizer=minilm_tokenizer)
    missing = year_tokenizer([f"{i:02d}" for i in range(100) if i != 7], ["warfare"])
    with pytest.raises(ValueError, match="two-digit number"):
        GreaterThan(tokenizer=missing)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        make_task({"name": "greater_than"})
    with pytest.raises(ValueError, match="two-digit numbers"):
        make_task({"name": "greater_than", "centuries": [7]})


def test_greater_than_determinism(gt_tokenizer: PreTrainedTokenizerFast) -> None:
    first = GreaterThan(n_examples=20, seed=0, tokenizer=gt_tokenizer)
    again = GreaterThan(n_examples=20, seed=0, tokenizer=gt_tokenizer)
    other = GreaterThan(n_examples=20, seed=1, tokenizer=gt_tokenizer)
    assert_same_batch(first.batch(), again.batch())
    assert not torch.equal(first.batch().clean, other.batch().clean)


# --------------------------------------------------------------------------- registry


def test_registry_configs_and_factory() -> None:
    assert set(TASKS) == set(TASK_CONFIGS) == {"modular", "induction", "ioi", "greater_than"}
    for name, config_class in TASK_CONFIGS.items():
        assert config_class().name == name
        assert TASKS[name].name == name
    adapter = TypeAdapter(AnyTaskConfig)
    assert isinstance(adapter.validate_python({"name": "modular", "p": 5}), ModularConfig)
    assert isinstance(parse_task_config({"name": "induction"}), InductionConfig)
    task = make_task(ModularConfig(p=5, op="poly"))
    assert isinstance(task, ModularArithmetic) and task.config.op == "poly"
    ignored_tokenizer = object()  # native tasks ignore a tokenizer
    induction = make_task({"name": "induction", "n_examples": 2}, tokenizer=ignored_tokenizer)
    assert isinstance(induction, Induction)


def test_factory_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown task 'parity'"):
        make_task({"name": "parity"})
    with pytest.raises(ValueError, match="needs a 'name'"):
        make_task({"p": 5})
    with pytest.raises(ValueError, match="half_lenn"):
        make_task({"name": "induction", "half_lenn": 3})
    with pytest.raises(ValueError, match="mapping"):
        make_task(["modular"])  # type: ignore[arg-type]


def test_task_batch_ints_count_from_the_end_and_bad_indices_are_named() -> None:
    batch = make_task({"name": "induction", "d_vocab": 20, "half_len": 3, "n_examples": 5}).batch()
    assert torch.equal(batch[-1].clean, batch.clean[4:5]) and len(batch[4]) == 1
    with pytest.raises(IndexError, match="example 5 outside a batch of 5"):
        batch[5]
    with pytest.raises(TypeError, match="indexed by an int, slice, list or tensor, not float"):
        batch[1.5]
    with pytest.raises(ValueError, match="TaskBatch.answer must hold integer ids"):
        TaskBatch.from_columns({"clean": [[1, 2]], "corrupted": [[1, 2]], "answer": [1.9],
                                "wrong": [1], "position": [0]})


@pytest.mark.parametrize("bad", [torch.tensor([1 + 2j]), torch.tensor([True])])
def test_task_batch_refuses_complex_and_bool_ids_from_columns_and_tensors(bad) -> None:
    columns = {"clean": [[1, 2]], "corrupted": [[1, 2]], "answer": bad, "wrong": [1],
               "position": [0]}
    message = f"TaskBatch.answer must hold integer ids, got {bad.dtype}"
    with pytest.raises(ValueError, match=message):
        TaskBatch.from_columns(columns)
    tensors = {k: torch.as_tensor(v) for k, v in columns.items()}
    with pytest.raises(ValueError, match=message):
        TaskBatch(**tensors)


def test_make_task_takes_any_mapping() -> None:
    from types import MappingProxyType

    task = make_task(MappingProxyType({"name": "modular", "p": 7}))
    assert task.config.p == 7


def test_task_batch_checked_returns_the_batch_or_names_the_problem() -> None:
    from interp import models as native

    model = native.build(dict(n_layers=1, d_model=16, n_heads=2, d_vocab=10, n_ctx=6), "cpu")
    ids = torch.tensor([[1, 2, 3]])
    batch = TaskBatch(clean=ids, corrupted=ids, answer=torch.tensor([4]),
                      wrong=torch.tensor([5]), position=torch.tensor([2]))
    assert TaskBatch.checked(batch, model) is batch
    with pytest.raises(ValueError, match="batch must be a TaskBatch, got dict"):
        TaskBatch.checked({"clean": ids}, model)
    too_high = TaskBatch(clean=ids + 7, corrupted=ids, answer=batch.answer,
                         wrong=batch.wrong, position=batch.position)
    with pytest.raises(ValueError, match=r"TaskBatch.clean spans 8..10, outside 0..9"):
        TaskBatch.checked(too_high, model)
