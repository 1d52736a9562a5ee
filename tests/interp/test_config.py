from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from interp.config import ConfigError, apply_overrides, load_config, parse_override

TINY_TRAIN = """
kind: train
seed: 0
device: cpu
model: {n_layers: 1, d_model: 16, n_heads: 2, d_vocab: 12, n_ctx: 8, attn_only: true}
task: {name: induction, d_vocab: 12, half_len: 4, n_examples: 64}
train: {steps: 5, batch_size: 16, eval_every: 5}
"""


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_valid_config_loads_with_name_from_file_stem(tmp_path) -> None:
    kind, config = load_config(write(tmp_path, TINY_TRAIN))
    assert kind.name == "train" and config.name == "exp"
    assert config.task.half_len == 4 and config.model.d_head == 8


def test_overrides_set_nested_keys_with_yaml_values(tmp_path) -> None:
    _, config = load_config(
        write(tmp_path, TINY_TRAIN),
        ["task.half_len=5", "model.n_ctx=10", "seed=7", "train.betas=[0.9, 0.98]"],
    )  # (half_len 5 needs 10 positions: a model too short is refused at validation)
    assert config.task.half_len == 5 and config.seed == 7 and config.train.betas == (0.9, 0.98)
    assert parse_override("a.b=1e-3") == (["a", "b"], 1e-3)
    assert apply_overrides({"a": {"b": 1}}, ["a.c=x"]) == {"a": {"b": 1, "c": "x"}}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("task.half_lenn=5", "task.half_lenn: unknown key"),
        ("colour=red", "colour: unknown key"),
        ("train.steps=many", "train.steps: "),
        ("train.lr=-1", "train.lr: "),
        ("model.d_model=15", "not divisible by n_heads"),
        ("kind=nonsense", "kind: unknown kind 'nonsense'"),
        # each of these validated, then failed only once its run folder existed
        ("name=..", "name: String should match pattern"),  # the store takes no '.' first
        ("seed=99999999999999999999", "seed: Input should be less than 9223372036854775808"),
        ("model.seed=-99999999999999999999", "model.seed: Input should be greater than"),
        ("task.seed=99999999999999999999", "task.seed: Input should be less than"),
        ("train.betas=[1.5, 0.9]", "train.betas.0: Input should be less than 1"),
        ("train.betas=[0.9, -0.1]", "train.betas.1: Input should be greater than or equal to 0"),
        ("train.lr=.inf", "train.lr: Input should be a finite number"),
        ("train.weight_decay=.inf", "train.weight_decay: Input should be a finite number"),
    ],
)
def test_invalid_values_give_one_line_naming_file_and_key(tmp_path, override, expected) -> None:
    path = write(tmp_path, TINY_TRAIN)
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    message = str(info.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message


def test_an_error_names_the_override_that_set_its_key(tmp_path) -> None:
    path = write(tmp_path, TINY_TRAIN)
    with pytest.raises(ConfigError, match=r"train\.steps: .*\(from --set train\.steps=many\)$"):
        load_config(path, ["seed=3", "train.steps=many"])
    with pytest.raises(ConfigError, match=r"colour: unknown key \(from --set colour\.x=1\)$"):
        load_config(path, ["colour.x=1"])
    note = r"\(from --set train\.betas=\[0\.9\]\)$"  # the key is inside the list it set
    with pytest.raises(ConfigError, match=r"train\.betas\.1: missing required key " + note):
        load_config(path, ["train.betas=[0.9]"])
    with pytest.raises(ConfigError) as info:  # the same problem written in the file itself
        load_config(write(tmp_path, TINY_TRAIN + "colour: red\n"), ["seed=3"])
    assert "--set" not in str(info.value)


def test_grokking_wrong_p_is_reported_not_the_sizes_it_fills_in(tmp_path) -> None:
    """`task.p` fills in the model's vocabulary sizes; a p that is not a number leaves them
    missing, and the message names p."""
    config = Path(__file__).parents[2] / "experiments" / "grokking_p113.yaml"
    with pytest.raises(ConfigError, match=r"task\.p: .*'abc'.*\(from --set task\.p=abc\)$"):
        load_config(config, ["task.p=abc"])


def test_modular_task_values_are_checked(tmp_path) -> None:
    text = TINY_TRAIN.replace(
        "task: {name: induction, d_vocab: 12, half_len: 4, n_examples: 64}",
        "task: {name: modular, p: 7, frac_train: 0.5}",
    )
    path = write(tmp_path, text)
    for override, needle in [("task.p=8", "not prime"), ("task.frac_train=1.5", "frac_train")]:
        with pytest.raises(ConfigError, match=needle):
            load_config(path, [override])


def test_bad_override_syntax_and_bad_yaml(tmp_path) -> None:
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("novalue")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "kind: [unclosed"))
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")


def test_suite_validates_every_member_before_running(tmp_path) -> None:
    write(tmp_path, TINY_TRAIN, "member.yaml")
    suite = write(tmp_path, "kind: suite\nexperiments: [member.yaml]\n", "suite.yaml")
    kind, _ = load_config(suite)
    assert kind.name == "suite"
    bad = write(
        tmp_path, "kind: suite\nexperiments: [{config: member.yaml, set: [task.x=1]}]\n", "b.yaml"
    )
    with pytest.raises(ConfigError, match=r"member.yaml: task.x: unknown key"):
        load_config(bad)


@pytest.mark.parametrize("path", sorted(Path("experiments").glob("*.yaml")))
def test_shipped_experiment_configs_are_valid(path: Path) -> None:
    kind, config = load_config(path)
    assert config.name == path.stem


INDUCTION_2L = Path(__file__).resolve().parents[2] / "experiments" / "induction_2l.yaml"


def test_an_unknown_device_is_refused_at_validation() -> None:
    with pytest.raises(ConfigError, match="device: 'gpu' is not a device"):
        load_config(INDUCTION_2L, ["device=gpu"])
    _, config = load_config(INDUCTION_2L, ["device=cuda:1"])  # checked when it runs
    assert config.device == "cuda:1"


def test_a_native_model_too_small_for_its_task_is_refused_at_validation() -> None:
    with pytest.raises(ConfigError, match="model.n_ctx=20 is shorter than task 'induction'"):
        load_config(INDUCTION_2L, ["model.n_ctx=20"])
    with pytest.raises(ConfigError, match="model.d_vocab=10 is smaller than task 'induction'"):
        load_config(INDUCTION_2L, ["model.d_vocab=10", "model.d_vocab_out=10"])
