"""Where the time of a training step goes: ``torch.profiler`` over a few steps, each operator's
own time given to the part of the model that ran it, in the forward and the backward pass.

Parts are the model's submodules (scoped by forward hooks while profiling) and the loss; a
backward operator belongs to the part whose forward operator made its autograd node (same
sequence number). Time outside them is split by what it is: the optimiser, gradient clipping.
What no operator accounts for is Python and framework overhead.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

SCOPE = "part: "
OUTSIDE = (  # operators outside the parts, by name
    ("optimiser", ("Optimizer.", "adam", "_foreach_add", "_foreach_mul", "_foreach_lerp", "_foreach_sqrt",
                   "_foreach_div", "_foreach_addc", "_foreach_max")),
    ("gradient clipping", ("_foreach_norm", "clip_grad", "linalg_vector_norm", "aten::stack")),
)


def scope_function(fn: Callable, name: str) -> Callable:
    """``fn`` whose calls are a part named ``name`` (for the loss, which is not a module)."""
    def scoped_fn(*args, **kwargs):
        with record_function(SCOPE + name):
            return fn(*args, **kwargs)
    return scoped_fn


def model_parts(model: nn.Module) -> dict[str, nn.Module]:
    """The parts a step's time is split into: the children of the encoder and of the decoder."""
    parts = {}
    for side in ("encoder", "decoder"):
        for name, child in getattr(model, side).named_children():
            if any(True for _ in child.parameters()) or name in ("attention", "dropout"):
                parts[f"{side}.{name}"] = child
    return parts


@contextmanager
def scoped(parts: dict[str, nn.Module]) -> Iterator[None]:
    """Mark every forward call of each part as a profiler range named after it."""
    handles, open_ranges = [], defaultdict(list)

    def enter(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            scope = record_function(SCOPE + name)
            scope.__enter__()
            open_ranges[name].append(scope)
        return hook

    def leave(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            open_ranges[name].pop().__exit__(None, None, None)
        return hook

    for name, module in parts.items():
        handles += [module.register_forward_pre_hook(enter(name)), module.register_forward_hook(leave(name))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def profile_steps(model: nn.Module, step: Callable[[], None], steps: int,
                  trace: Path | None = None) -> dict[str, float]:
    """Seconds per step spent in each part (and 'Python and overhead'), over ``steps`` calls of ``step``."""
    with scoped(model_parts(model)), profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - start
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    events = prof.events()
    part_of_sequence = {}
    for e in events:  # forward operators inside a part: their autograd node's number -> the part
        part = _enclosing_part(e)
        if part and e.sequence_nr >= 0:
            part_of_sequence.setdefault(e.sequence_nr, part)
    seconds: dict[str, float] = defaultdict(float)
    for e in events:
        if e.name.startswith(SCOPE):
            continue
        seconds[_part(e, part_of_sequence)] += e.self_cpu_time_total / 1e6
    seconds["Python and overhead"] = max(wall - sum(seconds.values()), 0.0)
    return {k: v / steps for k, v in sorted(seconds.items(), key=lambda kv: -kv[1])}


def _enclosing_part(event) -> str | None:
    while event is not None:
        if event.name.startswith(SCOPE):
            return event.name[len(SCOPE):]
        event = event.cpu_parent
    return None


def _part(event, part_of_sequence: dict[int, str]) -> str:
    names, node = [], event
    while node is not None:
        if node.name.startswith(SCOPE):
            return node.name[len(SCOPE):]
        if node.name.startswith("autograd::engine::evaluate_function") and node.sequence_nr in part_of_sequence:
            return part_of_sequence[node.sequence_nr] + " (backward)"
        names.append(node.name)
        node = node.cpu_parent
    for part, patterns in OUTSIDE:
        if any(p in name for name in names for p in patterns):
            return part
    return "other operators"


def breakdown_table(seconds: dict[str, float]) -> str:
    total = sum(seconds.values())
    width = max(len(k) for k in seconds)
    rows = [f"{'part':<{width}}  ms/step  share"]
    rows += [f"{k:<{width}}  {v * 1e3:7.1f}  {v / total:5.1%}" for k, v in seconds.items()]
    return "\n".join(rows)
