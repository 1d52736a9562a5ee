"""Side by side: circuit discovery against the cost it is measured by.

    python benchmarks/circuit_discovery.py [--quick] [--device cpu|cuda|auto] [--speculation K]

(Not `circuits.py`, the issue's name: a script of that name in this folder would shadow the
`circuits` package for every benchmark, since Python puts the script's folder first on the
path.)

1. EAP (`circuits.eap.edge_attribution`) over every edge of a GPT-2-small-shaped random
   native model (12 layers x 12 heads, d_model 768, 32,491 edges; batch 8 x 32 tokens,
   vocabulary 2,000 to keep the model in memory; resample ablation, mean logit
   difference), against the reference cost the issue names: one forward plus one
   backward pass of the model (TransformerBridge, loss on the same logits). Target: EAP
   takes at most 3x that, i.e. the printed "speedup" is at least 0.33x. max |diff| is "-":
   there is nothing to compare numerically.
   The second line does the same on a random Hugging Face GPT-2 of that shape
   (`GPT2LMHeadModel`, booted from a local folder as `gpt2` from the hub is), which
   edge patching covers too (`interp.pretrained_layout`); its reference is that bridge's
   forward and backward pass (Hugging Face's modules behind TransformerLens's hooks).
2. ACDC (`circuits.acdc.acdc`, KL objective, resample ablation) on the 2-layer
   attention-only induction model (`experiments/induction_2l.yaml`, trained here for 300
   steps), ours (each test's forward pass begun at the destination's layer, earlier
   sources cached; `acdc`'s defaults, so speculation 16 on a GPU and 1 on a CPU, as the
   line says) against the plain ACDC loop (`incremental=False`: every test a full forward
   pass of the edge-patched model). Both must find the identical circuit; max |diff|
   compares the two kept-edge masks (0 = identical).
3. The same ACDC (ours as in 2) against the issue's reference, the straightforward loop
   that runs one full forward pass of the bridge with hooks per test (`hooked_acdc`
   below); same circuit. The issue's target: a speedup of at least 10x on a GPU.
4. The same ACDC with speculation K (`--speculation`, default 16: up to K edges into one
   destination, or into one block's heads, tested in one batched computation) against
   speculation 1; the circuit must be identical and the scores equal to 1e-5, and the
   line gives both trial counts. It is for GPUs, where a small test costs its kernel
   launches: on a CPU the arithmetic is the cost, so expect less than 1x there (fewer
   Python calls, more and larger trials computed).
5. ACDC (KL, resample) on a random Hugging Face Gemma 2 (`Gemma2ForCausalLM`, booted from
   a local folder: norms after attention and MLP, soft caps, a sliding window shorter than
   the prompts on every other layer), ours (incremental: a tested head's whole block gets
   new shares of its normalised output) against full edge-patched passes; same circuit.

After each comparison a line starting with `# ` counts the aten ops and host syncs one
more call of each side dispatches (`interp.dispatch_count`; "not views" are about the
kernel launches): where a GPU is bound by launches, as with small models, the speedup
follows their ratio; on a CPU the arithmetic decides.

`--quick` shrinks both (a 2-layer model for EAP, 60 training steps) for CI. A final line
starting with `#` gives the load average. Each line is printed as soon as it is measured
(a run cut off by a time limit keeps them). Where two ACDC runs that must agree keep
different circuits (or speculation scores an edge differently), a line starting with
`MISMATCH:` names the edges, the rest still runs, and the exit status is 1; so it is if
a section (EAP, each model; ACDC) raised, after a line `<section>: failed: ...`.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from _common import Comparison, compare, load_line, parse_args, random_pretrained
from transformer_lens.model_bridge import TransformerBridge

from circuits.acdc import ACDCResult, acdc
from circuits.eap import edge_attribution
from circuits.graph import ComputationalGraph
from interp import models
from interp.config import load_config
from interp.metrics import kl_divergence, logit_diff, mean_metric
from interp.tasks import Induction
from interp.tasks.base import TaskBatch
from interp.training import train

METRIC = mean_metric(logit_diff)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_batch(n_examples: int, n_pos: int, d_vocab: int, seed: int) -> TaskBatch:
    generator = torch.Generator().manual_seed(seed)
    shape = (n_examples, n_pos)
    return TaskBatch(
        clean=torch.randint(0, d_vocab, shape, generator=generator),
        corrupted=torch.randint(0, d_vocab, shape, generator=generator),
        answer=torch.randint(0, d_vocab, (n_examples,), generator=generator),
        wrong=torch.randint(0, d_vocab, (n_examples,), generator=generator),
        position=torch.full((n_examples,), n_pos - 1),
    )


def eap_comparison(quick: bool, device: torch.device, family: str = "native") -> Comparison:
    shape = (
        dict(n_layers=2, n_heads=4, d_model=64)
        if quick
        else dict(n_layers=12, n_heads=12, d_model=768)
    )
    n_examples, n_pos, d_vocab = (4, 8, 100) if quick else (8, 32, 2000)
    if family == "native":
        spec = dict(**shape, d_vocab=d_vocab, n_ctx=n_pos, act_fn="gelu_new", normalization="LN")
        model = models.build(spec, device=device).eval()
    else:
        model = random_pretrained("gpt2", device, **shape, d_vocab=d_vocab, n_ctx=n_pos)
    batch = random_batch(n_examples, n_pos, d_vocab, seed=0).to(device)
    n_edges = len(ComputationalGraph.from_model(model))

    def ours() -> None:  # scores and gradients: nothing to compare, max |diff| "-"
        edge_attribution(model, batch, METRIC)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        METRIC(model(batch.clean), batch).backward()
        model.zero_grad(set_to_none=True)

    what = (
        f"EAP over all {n_edges} edges, {family} {shape['n_layers']}L {shape['n_heads']}h "
        f"d{shape['d_model']}, {n_examples}x{n_pos} tokens, vs one forward + backward"
    )
    return compare(what, ours, forward_backward, device=device, repeats=1 if quick else 3,
                   count_ops=True)


def trained_induction(
    quick: bool, device: torch.device
) -> tuple[TransformerBridge, TaskBatch]:
    """The induction_2l model, briefly trained, and an induction batch of 32 prompts."""
    steps = 60 if quick else 300
    path = os.path.join(REPO, "experiments", "induction_2l.yaml")
    _, config = load_config(path, [f"train.steps={steps}", f"device={device.type}"])
    model = models.build(config.model, device=device)
    task = Induction(config.task)
    train(model, task, config.train, seed=config.seed, progress=False)
    model.eval()
    batch = task.batch()[: 8 if quick else 32]
    return model, batch.to(device)


def hooked_acdc(
    model: TransformerBridge, batch: TaskBatch, threshold: float
) -> torch.Tensor:
    """The straightforward ACDC loop (Conmy et al. 2023's code does the same through
    TransformerLens hooks): the same edge order and rule as `circuits.acdc.acdc`, but every
    test is one full forward pass of the bridge with hooks that give each destination its
    input with the removed edges' sources swapped for their outputs on the corrupted
    prompts (each head's q / k / v recomputed from its own LayerNorm'd input). Attention-only
    pre-LayerNorm models. Returns the kept-edge mask over `ComputationalGraph` order."""
    graph = ComputationalGraph.from_model(model)
    if graph.has_mlp:
        raise ValueError("hooked_acdc: attention-only models only")
    n_layers, n_heads = graph.n_layers, graph.n_heads
    params = model.state_dict()
    w_o = model.W_O.detach()
    projections = {
        "q": (model.W_Q.detach(), model.b_Q.detach()),
        "k": (model.W_K.detach(), model.b_K.detach()),
        "v": (model.W_V.detach(), model.b_V.detach()),
    }
    last = f"blocks.{n_layers - 1}.hook_resid_post"

    def outputs(store: dict[str, torch.Tensor]):  # hooks that record every source's output
        def embed(act: torch.Tensor, hook: object) -> torch.Tensor:
            store["embed"] = act
            return act

        def heads(layer: int):
            def record(z: torch.Tensor, hook: object) -> torch.Tensor:
                for head in range(n_heads):
                    store[f"L{layer}H{head}"] = z[:, :, head] @ w_o[layer, head]
                return z
            return record

        return [("blocks.0.hook_resid_pre", embed)] + [
            (f"blocks.{layer}.attn.hook_z", heads(layer)) for layer in range(n_layers)
        ]

    with torch.inference_mode():
        corrupted: dict[str, torch.Tensor] = {}
        model.run_with_hooks(batch.corrupted, fwd_hooks=outputs(corrupted))
        full_logits = model(batch.clean)

    def logits_without(removed: dict[str, list[str]]) -> torch.Tensor:
        current: dict[str, torch.Tensor] = {}
        resid: dict[int, torch.Tensor] = {}

        def swapped(destination: str) -> torch.Tensor | None:
            sources = removed.get(destination)
            if not sources:
                return None
            return sum(current[s] - corrupted[s] for s in sources)

        def keep_resid(layer: int):
            def hook(act: torch.Tensor, hook: object) -> torch.Tensor:
                resid[layer] = act
                return act
            return hook

        def head_input(layer: int, which: str):
            weight, bias = projections[which]
            ln_w, ln_b = params[f"blocks.{layer}.ln1.weight"], params[f"blocks.{layer}.ln1.bias"]

            def hook(act: torch.Tensor, hook: object) -> torch.Tensor:
                act = act.clone()
                for head in range(n_heads):
                    delta = swapped(f"L{layer}H{head}.{which}")
                    if delta is not None:
                        x = F.layer_norm(resid[layer] - delta, (x_dim,), ln_w, ln_b, model.cfg.eps)
                        act[:, :, head] = x @ weight[layer, head] + bias[layer, head]
                return act
            return hook

        def to_logits(act: torch.Tensor, hook: object) -> torch.Tensor:
            delta = swapped("logits")
            return act if delta is None else act - delta

        x_dim = model.cfg.d_model
        hooks = outputs(current) + [(f"blocks.{layer}.hook_resid_pre", keep_resid(layer))
                                    for layer in range(n_layers)]
        hooks += [(f"blocks.{layer}.attn.hook_{which}", head_input(layer, which))
                  for layer in range(n_layers) for which in "qkv"]
        hooks.append((last, to_logits))
        return model.run_with_hooks(batch.clean, fwd_hooks=hooks)

    def damage(kept: torch.Tensor) -> float:
        removed: dict[str, list[str]] = {}
        for i in torch.nonzero(~kept).flatten().tolist():
            edge = graph.edges[i]
            removed.setdefault(edge.destination.name, []).append(edge.source.component)
        with torch.inference_mode():
            logits = logits_without(removed)
        return float(kl_divergence(logits, full_logits, batch.position).mean())

    incoming: dict[str, list[int]] = {}
    outgoing: dict[str, list[int]] = {}
    for i, edge in enumerate(graph.edges):
        incoming.setdefault(edge.destination.name, []).append(i)
        outgoing.setdefault(edge.source.component, []).append(i)
    kept = torch.ones(len(graph), dtype=torch.bool)
    current_damage = damage(kept)
    for destination in reversed(graph.destinations):
        edges = incoming[destination.name]
        feeds = outgoing.get(destination.component, [])
        if destination.kind != "logits" and not bool(kept[feeds].any()):
            kept[edges] = False
            continue
        for i in reversed(edges):
            kept[i] = False
            trial = damage(kept)
            if trial - current_damage < threshold:
                current_damage = trial
            else:
                kept[i] = True
    return kept


def circuit_difference(
    graph: ComputationalGraph, ours: torch.Tensor, reference: torch.Tensor, shown: int = 8
) -> str | None:
    """None when two kept-edge masks (over `graph.edges`) are equal; else which edges only
    one side kept, by name (the first `shown` of each)."""
    ours, reference = ours.detach().bool().cpu(), reference.detach().bool().cpu()
    if torch.equal(ours, reference):
        return None

    def names(mask: torch.Tensor) -> str:
        indices = torch.nonzero(mask).flatten().tolist()
        listed = ", ".join(graph.edges[i].name for i in indices[:shown])
        return f"{len(indices)} [{listed}{', ...' if len(indices) > shown else ''}]"

    return (f"edges kept by ours only {names(ours & ~reference)}, by the reference only "
            f"{names(reference & ~ours)}")


def first_output(run: Callable[[], torch.Tensor]) -> tuple[Callable[[], torch.Tensor], list]:
    """`run`, wrapped to keep its first output (the one `compare`'s warm-up call returns)."""
    seen: list[torch.Tensor] = []

    def call() -> torch.Tensor:
        out = run()
        if not seen:
            seen.append(out)
        return out

    return call, seen


def acdc_lines(
    quick: bool, device: torch.device, speculation: int, mismatches: list[str]
) -> Iterator[str]:
    """Ours against the plain loop on our engine, against the hook-based loop, and with
    speculation `speculation` against without: each comparison's lines as soon as it is
    measured. Two runs that keep different circuits (or, for speculation, score the edges
    differently) give a line starting with "MISMATCH", also appended to `mismatches`."""
    model, batch = trained_induction(quick, device)
    threshold = 0.05
    graph = ComputationalGraph.from_model(model)

    def run(incremental: bool) -> torch.Tensor:
        result = acdc(model, batch, threshold, progress=False, incremental=incremental)
        return result.kept.float()

    def mismatch(what: str, detail: str) -> str:
        line = f"MISMATCH: {what}: {detail}"
        mismatches.append(line)
        return line

    n_edges = len(graph)
    default = acdc(model, batch, threshold, progress=False)  # what a user gets here
    kept = int(default.kept.sum())
    ours = f"ours speculation {default.speculation}"
    head = (f"ACDC (KL, tau {threshold}) on induction_2l ({n_edges} edges, {kept} kept), "
            f"{len(batch)}x{batch.clean.shape[1]} tokens")
    repeats = 1 if quick else 3

    for what, reference in (
        (f"{head}, {ours}, vs every test a full forward pass", lambda: run(False)),
        (f"{head}, {ours}, vs a full forward pass with hooks per test",
         lambda: hooked_acdc(model, batch, threshold).float()),
    ):
        ours_run, ours_out = first_output(lambda: run(True))
        reference_run, reference_out = first_output(reference)
        comparison = compare(what, ours_run, reference_run, device=device, repeats=repeats,
                             count_ops=True)
        yield from comparison.lines()
        detail = circuit_difference(graph, ours_out[0], reference_out[0])
        if detail is not None:
            yield mismatch(what, detail)

    def speculative(k: int) -> ACDCResult:
        return acdc(model, batch, threshold, progress=False, speculation=k)

    batched, sequential = speculative(speculation), speculative(1)
    speculative_what = (
        f"{head}, speculation {speculation} ({batched.n_trials} trials) vs 1 "
        f"({sequential.n_trials} trials)"
    )
    detail = circuit_difference(graph, batched.kept, sequential.kept)
    if detail is not None:
        yield mismatch(speculative_what, detail)
    try:
        torch.testing.assert_close(
            batched.scores, sequential.scores, atol=1e-5, rtol=0, equal_nan=True
        )
    except AssertionError as error:
        scores = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
        yield mismatch(speculative_what, f"scores differ beyond 1e-5: {scores}")
    yield from compare(
        speculative_what,
        lambda: speculative(speculation).kept.float(),
        lambda: speculative(1).kept.float(),
        device=device,
        repeats=repeats,
        count_ops=True,
    ).lines()


def gemma2_acdc_lines(quick: bool, device: torch.device, mismatches: list[str]) -> Iterator[str]:
    """Incremental ACDC against full edge-patched passes on a random Gemma 2 (section 5 of
    the module docstring); a line starting with "MISMATCH" where the circuits differ."""
    shape = dict(n_layers=2, n_heads=4, d_model=64) if quick else dict(n_layers=2, n_heads=8,
                                                                        d_model=256)
    n_examples, n_pos, d_vocab = (4, 8, 100) if quick else (8, 24, 1000)
    model = random_pretrained("gemma2", device, **shape, d_vocab=d_vocab, n_ctx=n_pos)
    batch = random_batch(n_examples, n_pos, d_vocab, seed=0).to(device)
    threshold = 0.002

    def run(incremental: bool) -> torch.Tensor:
        result = acdc(model, batch, threshold, progress=False, incremental=incremental,
                      speculation=1)
        return result.kept.float()

    graph = ComputationalGraph.from_model(model)
    ours_run, ours_out = first_output(lambda: run(True))
    reference_run, reference_out = first_output(lambda: run(False))
    kept = int(run(True).sum())
    what = (f"ACDC (KL, tau {threshold}) on Gemma 2 (HF) {shape['n_layers']}L "
            f"{shape['n_heads']}h d{shape['d_model']} ({len(graph)} edges, {kept} kept), "
            f"{n_examples}x{n_pos} tokens, ours vs every test a full forward pass")
    yield from compare(what, ours_run, reference_run, device=device,
                       repeats=1 if quick else 3, count_ops=True).lines()
    detail = circuit_difference(graph, ours_out[0], reference_out[0])
    if detail is not None:
        line = f"MISMATCH: {what}: {detail}"
        mismatches.append(line)
        yield line


def main(argv: Sequence[str] | None = None) -> int:
    """Print each comparison's lines as soon as it is measured, then the load average.
    Exit status 1 if ACDC runs kept different circuits (the "MISMATCH" lines) or a section
    failed (its traceback on stderr, a line "<section>: failed: ..." on stdout)."""
    def speculation_option(parser: argparse.ArgumentParser) -> None:
        def at_least_one(text: str) -> int:
            value = int(text)
            if value < 1:
                raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
            return value

        parser.add_argument(
            "--speculation", type=at_least_one, default=16,
            help="edges ACDC tests per batched computation, compared with 1 (default 16)",
        )
        parser.add_argument("--native-only", action="store_true",
                            help="skip the lines on Hugging Face models (GPT-2, Gemma 2)")

    args = parse_args(__doc__.splitlines()[0], argv, speculation_option)
    quick, device = args.quick, args.device
    mismatches: list[str] = []
    sections: list[tuple[str, Callable[[], Iterable[str]]]] = [
        ("EAP, native", lambda: eap_comparison(quick, device).lines()),
    ]
    if not args.options["native_only"]:
        sections.append(("EAP, GPT-2 (HF)",
                         lambda: eap_comparison(quick, device, family="GPT-2 (HF)").lines()))
    sections.append(
        ("ACDC", lambda: acdc_lines(quick, device, args.options["speculation"], mismatches))
    )
    if not args.options["native_only"]:
        sections.append(("ACDC, Gemma 2 (HF)",
                         lambda: gemma2_acdc_lines(quick, device, mismatches)))
    failed = []
    for name, section in sections:
        try:
            for line in section():
                print(line, flush=True)
        except Exception as error:  # noqa: BLE001 - report it, go on to the next section
            traceback.print_exc()
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            print(f"{name}: failed: {type(error).__name__}: {reason}", flush=True)
            failed.append(name)
    print(load_line(), flush=True)
    if mismatches or failed:
        print(f"# {len(mismatches)} circuit mismatch(es), {len(failed)} failed section(s)",
              file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
