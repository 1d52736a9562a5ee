"""Experiment kind `suite`: several configs run one after another (e.g. the quickstart).

    kind: suite
    experiments:
      - induction_2l.yaml                       # a path, relative to this file
      - config: induction_2l.yaml               # or a path with overrides
        set: ["train.steps=200"]

Every member is validated when the suite is, so a bad member stops the suite before
anything runs. Members run in order, each into its own run folder, so a later member can
name an earlier one's checkpoint (`model: {run: induction_2l}`): validated against a run
store, such a reference counts as resolved, and the model the earlier member makes must
fit the later member's task. `--set` on a suite sets the suite's own keys only.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from interp.experiments import (
    PENDING_KEY,
    STORE_KEY,
    ExperimentConfig,
    ExperimentKind,
    RunContext,
    saves_no_model,
)
from interp.runs import Run, RunStore


class SuiteMember(BaseModel):
    """One member of a suite: a config file and its overrides."""

    model_config = ConfigDict(extra="forbid")

    config: str
    set: list[str] = Field(default_factory=list)


class SuiteConfig(ExperimentConfig):
    """A `suite` experiment: a list of member configs."""

    kind: Literal["suite"] = "suite"
    experiments: list[str | SuiteMember] = Field(min_length=1)

    @field_validator("experiments")
    @classmethod
    def _members_are_valid(
        cls, members: list[str | SuiteMember], info: ValidationInfo
    ) -> list[str | SuiteMember]:
        context = info.context or {}
        config_dir = context.get("config_dir")
        if config_dir is not None:
            # Members validated so far (and, in a suite of suites, the outer suite's):
            # a later member may name their runs, which exist by the time it runs.
            pending = context.get(PENDING_KEY)
            pending = {} if pending is None else pending
            for member in members:
                load_member(_as_member(member), Path(config_dir), context.get(STORE_KEY), pending)
        return members


def _as_member(member: str | SuiteMember) -> SuiteMember:
    return SuiteMember(config=member) if isinstance(member, str) else member


def load_member(
    member: SuiteMember,
    config_dir: Path,
    store: RunStore | None = None,
    pending: dict[str, Any] | None = None,
) -> tuple[ExperimentKind, ExperimentConfig]:
    """Load and validate a member config (its path relative to the suite's folder); a
    suite that includes itself, directly or through others, is refused.

    With a `store`, the member's `{run: X}` references must resolve there or in `pending`
    (the members before it, by experiment name); the member is then added to `pending`.
    """
    from interp.config import ConfigError, config_to_dict, load_config

    path = Path(member.config)
    if not path.is_absolute():
        path = config_dir / path
    key = path.resolve()
    loading = _LOADING.get()
    if key in loading:
        chain = " -> ".join(p.name for p in [*loading, key])
        raise ValueError(f"a suite includes itself: {chain}")
    token = _LOADING.set((*loading, key))
    try:
        kind, config = load_config(path, member.set, store=store, pending=pending)
    except ConfigError as error:
        raise ValueError(str(error)) from None
    finally:
        _LOADING.reset(token)
    if pending is not None:
        pending[config.name or kind.name] = config_to_dict(config)
    return kind, config


_LOADING: ContextVar[tuple[Path, ...]] = ContextVar("interp_suite_loading", default=())
"""The member configs being loaded, outermost first (to catch a suite that includes itself).
A context variable, so threads (and asyncio tasks) loading suites at once each see their
own chain. (The pydantic validation context would be the natural carrier, but
`interp.config.validate_config` builds that context itself, from `config_dir` only.)"""


def run_suite(config: SuiteConfig, run: Run, context: RunContext) -> dict[str, Any]:
    """Run every member in order; the suite's summary lists the member runs."""
    from interp.runner import execute

    pending: dict[str, Any] = {}
    loaded = [
        (m, *load_member(_as_member(m), context.config_dir, context.store, pending))
        for m in config.experiments
    ]
    summary: dict[str, Any] = {"n_experiments": len(loaded)}
    for index, (member, kind, member_config) in enumerate(loaded):
        path = Path(_as_member(member).config)
        member_run = execute(
            kind, member_config, context.store, (context.config_dir / path).parent,
            progress=context.progress,
        )
        run.log(index, experiment=member_run.experiment, run_id=member_run.run_id)
        summary[f"run_{index}"] = f"{member_run.experiment}/{member_run.run_id}"
    return summary


SUITE = ExperimentKind(
    name="suite",
    config_model=SuiteConfig,
    run=run_suite,
    description="run several experiment configs in order (e.g. experiments/quickstart.yaml)",
    model_artifacts=saves_no_model,
)
