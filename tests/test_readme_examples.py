"""The Python examples of README.md run as written.

Researchers copy code from the README, so every fenced ```python block of README.md is
extracted and run, in README order, in one shared namespace (the "60-second tour" defines
`model`, `task` and `batch`, which later blocks use), in a temporary working directory (files
a block writes, such as `models.save(model, "ckpt/")`, land there). Each block is a test case
with id `README.md:<line of its fence>`; a block that raises fails naming that line, the
README line it raised at and the exception. Blocks run at most once per session, always
after every earlier block (a case selected alone, e.g. with `-k`, runs its predecessors
first); after a failure the later blocks are skipped, not failed, since they run in a
namespace the failed block did not finish.

A top-level expression statement of the form `<expr>.shape  # (a, b, ...)` with literal
integers is checked: the shape must be that tuple.

A block that cannot run here (network, GPU, long training) carries the marker
`<!-- readme-test: skip (reason) -->` on the line just before its fence and is skipped with
that reason. A block that needs the run store (`RunStore("runs")`) gets two shrunk
`experiments/induction_2l.yaml` runs first, made through `interp run`.
"""

from __future__ import annotations

import ast
import re
import textwrap
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

FENCE_OPEN = re.compile(r"^```\s*(?:python|py)\s*$")
FENCE = re.compile(r"^```")
MARKER = re.compile(r"^<!--\s*readme-test:\s*skip\s*\((?P<reason>.+)\)\s*-->$")
MARKER_LIKE = re.compile(r"^<!--\s*readme-test\b")
SHAPE_COMMENT = re.compile(r"^\s*#\s*\(\s*(?P<dims>\d+(?:\s*,\s*\d+)*)\s*,?\s*\)")


@dataclass(frozen=True)
class Block:
    """One fenced python block: `line` is its opening fence's line (1-based) in README.md,
    `source` its code, `skip` the reason of its skip marker (None without one)."""

    line: int
    source: str
    skip: str | None

    @property
    def name(self) -> str:
        return f"README.md:{self.line}"


def parse_readme(text: str) -> tuple[list[Block], list[str]]:
    """The python blocks of `text`, in order, and the problems with its skip markers (a
    malformed marker, or one not on the line just before a python block's fence)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    attached: set[int] = set()
    index = 0
    while index < len(lines):
        line = lines[index]
        if FENCE.match(line.strip()):
            end = index + 1
            while end < len(lines) and not FENCE.match(lines[end].strip()):
                end += 1
            if FENCE_OPEN.match(line.strip()):
                skip = None
                if index > 0 and MARKER_LIKE.match(lines[index - 1].strip()):
                    marker = MARKER.match(lines[index - 1].strip())
                    if marker is None:
                        problems.append(
                            f"README.md:{index}: malformed marker {lines[index - 1].strip()!r}"
                            " (expected `<!-- readme-test: skip (reason) -->`)"
                        )
                    else:
                        skip = marker["reason"].strip()
                    attached.add(index - 1)
                source = textwrap.dedent("\n".join(lines[index + 1 : end]))
                blocks.append(Block(index + 1, source, skip))
            index = end + 1
            continue
        index += 1
    for number, line in enumerate(lines):
        if MARKER_LIKE.match(line.strip()) and number not in attached:
            problems.append(
                f"README.md:{number + 1}: readme-test marker not on the line just before "
                "a ```python fence"
            )
    return blocks, problems


BLOCKS, MARKER_PROBLEMS = parse_readme(README.read_text(encoding="utf-8"))

# `interp run experiments/induction_2l.yaml`, shrunk as in tests/test_shipped_configs.py.
INDUCTION_2L_SHRUNK = [
    "device=cpu",
    "train.steps=20",
    "train.warmup_steps=5",
    "train.eval_every=10",
    "task.n_examples=256",
]


def make_induction_runs(workdir: Path) -> None:
    """Two shrunk `induction_2l` train runs (seeds 0 and 7) in `workdir / "runs"`."""
    from interp.cli import main

    for seed in (0, 7):
        overrides = [*INDUCTION_2L_SHRUNK, f"seed={seed}"]
        argv = [
            "run",
            str(REPO / "experiments" / "induction_2l.yaml"),
            "--runs-dir",
            str(workdir / "runs"),
            "--no-progress",
        ]
        for override in overrides:
            argv += ["--set", override]
        assert main(argv) == 0, f"interp {' '.join(argv)} failed"


SETUPS: dict[str, Callable[[Path], None]] = {'RunStore("runs")': make_induction_runs}
"""Text a block may contain -> what the working directory needs first (made once)."""


def shape_claim(statement: ast.stmt, lines: list[str]) -> tuple[int, ...] | None:
    """The shape a `<expr>.shape  # (a, b, ...)` statement's comment claims, else None."""
    if not (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Attribute)
        and statement.value.attr == "shape"
        and statement.lineno == statement.end_lineno
        and statement.end_col_offset is not None
    ):
        return None
    rest = lines[statement.lineno - 1][statement.end_col_offset :]
    match = SHAPE_COMMENT.match(rest)
    if match is None:
        return None
    return tuple(int(dim) for dim in match["dims"].split(","))


@dataclass
class Outcome:
    """What running one block gave: "passed", "failed" (with `message`), "skipped" (its
    marker's reason) or "blocked" (not run: an earlier block failed)."""

    status: str
    message: str = ""


@dataclass
class ReadmeSession:
    """The README's blocks run in order in one namespace, each at most once."""

    workdir: Path
    namespace: dict[str, Any] = field(default_factory=lambda: {"__name__": "__readme__"})
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    done_setups: set[str] = field(default_factory=set)

    def run_through(self, position: int) -> None:
        """Run every block up to `position` (an index into BLOCKS) not run yet, in order;
        none after one that failed ("blocked")."""
        for index, block in enumerate(BLOCKS[: position + 1]):
            if block.line not in self.outcomes:
                blocked = self.failed_before(index) is not None
                self.outcomes[block.line] = Outcome("blocked") if blocked else self._run(block)

    def failed_before(self, position: int) -> Block | None:
        """The first block before `position` that failed, if any."""
        for block in BLOCKS[:position]:
            outcome = self.outcomes.get(block.line)
            if outcome is not None and outcome.status == "failed":
                return block
        return None

    def _run(self, block: Block) -> Outcome:
        if block.skip is not None:
            return Outcome("skipped", block.skip)
        for text, setup in SETUPS.items():
            if text in block.source and text not in self.done_setups:
                self.done_setups.add(text)
                try:
                    setup(self.workdir)
                except Exception as error:
                    details = "".join(traceback.format_exception(error))
                    message = f"the set-up {setup.__name__} of {block.name} raised:\n{details}"
                    return Outcome("failed", message)
        try:
            run_block(block, self.namespace)
        except ShapeMismatch as error:
            return Outcome("failed", f"the python block at {block.name}: {error}")
        except Exception as error:
            return Outcome("failed", describe_failure(block, error))
        return Outcome("passed")


class ShapeMismatch(AssertionError):
    """A `<expr>.shape  # (a, b, ...)` line whose shape is not the comment's."""


def run_block(block: Block, namespace: dict[str, Any]) -> None:
    """Run `block`'s statements one by one in `namespace`, checking claimed shapes."""
    # Leading newlines put each statement at its README line, so tracebacks show it.
    padded = "\n" * block.line + block.source
    lines = padded.splitlines()
    module = ast.parse(padded, filename=str(README))
    for statement in module.body:
        claim = shape_claim(statement, lines)
        if claim is None:
            code = compile(ast.Module([statement], type_ignores=[]), str(README), "exec")
            exec(code, namespace)
            continue
        assert isinstance(statement, ast.Expr)
        shape = tuple(
            eval(compile(ast.Expression(statement.value), str(README), "eval"), namespace)
        )
        if shape != claim:
            raise ShapeMismatch(
                f"README.md:{statement.lineno}: {ast.unparse(statement.value)} is {shape}, "
                f"the comment there says {claim}"
            )


def describe_failure(block: Block, error: Exception) -> str:
    """The block, the README line it raised at, the exception, then the traceback from
    the README's frames on (the harness's frames left out)."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == str(README)]
    where = ""
    if frames:
        where = f" at README.md:{frames[-1].lineno} `{(frames[-1].line or '').strip()}`"
    elif isinstance(error, SyntaxError) and error.lineno is not None:
        where = f" at README.md:{error.lineno}"
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != str(README):
        tb = tb.tb_next
    if tb is None:  # e.g. a SyntaxError: no README frame
        details = "".join(traceback.format_exception_only(error))
    else:
        details = "".join(traceback.format_exception(type(error), error, tb))
    return (
        f"the python block at {block.name} raised{where}: "
        f"{type(error).__name__}: {error}\n\n{details}"
    )


def syntax_error(block: Block) -> str | None:
    """What is wrong with `block`'s syntax, or None when it parses."""
    try:
        ast.parse("\n" * block.line + block.source, filename=str(README))
    except SyntaxError as error:
        return describe_failure(block, error)
    return None


@pytest.fixture(scope="module")
def readme_session(tmp_path_factory: pytest.TempPathFactory) -> ReadmeSession:
    """One namespace and working directory for all of the README's blocks."""
    return ReadmeSession(tmp_path_factory.mktemp("readme"))


def test_readme_has_python_blocks_and_valid_markers() -> None:
    assert BLOCKS, "README.md has no ```python blocks (did the fences change?)"
    assert not MARKER_PROBLEMS, "\n".join(MARKER_PROBLEMS)


# MiniLM's untrained output head: the warning the tour's `# warns: see below` documents.
@pytest.mark.filterwarnings("ignore:.*weights are not in the checkpoint:UserWarning")
@pytest.mark.parametrize("position", range(len(BLOCKS)), ids=[block.name for block in BLOCKS])
def test_readme_block_runs(
    position: int, readme_session: ReadmeSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    block = BLOCKS[position]
    if block.skip is not None:
        problem = syntax_error(block)  # a block that cannot run here must still parse
        if problem is not None:
            pytest.fail(problem, pytrace=False)
        pytest.skip(f"{block.name}: {block.skip}")
    monkeypatch.chdir(readme_session.workdir)
    readme_session.run_through(position)
    earlier = readme_session.failed_before(position)
    if earlier is not None:
        pytest.skip(f"{earlier.name} failed, and {block.name} runs in its namespace")
    outcome = readme_session.outcomes[block.line]
    if outcome.status == "failed":
        pytest.fail(outcome.message, pytrace=False)
