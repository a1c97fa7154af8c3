"""Checkpoints: plain dicts of state dicts, config and tokenizer references, written atomically.

A checkpoint never pickles a module. It is written to a temporary file in the same folder
and renamed over the old one, so a crash mid-write leaves the previous checkpoint intact,
and it is read with ``weights_only=True``.
"""

from __future__ import annotations

import io
import random
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from seq2seq.config import Config, ConfigError, TrainConfig, config_from_dict
from seq2seq.files import atomic_write, first_line
from seq2seq.runtime import pick_precision, size_kernel_cache
from seq2seq.tokenizers import Tokenizer, TokenizerError, load_tokenizer_file
from seq2seq.train.distributed import Dist, current

FORMAT = "seq2seq-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or not one of ours."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus format tags) to ``path`` atomically."""
    buffer = io.BytesIO()  # serialised in memory: a failed disk write is then a plain OSError
    torch.save({"format": FORMAT, "version": VERSION, **payload}, buffer)
    return atomic_write(path, buffer.getbuffer())


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """The random generators a resumed run must continue: torch's and Python's, and the GPU's it
    trains on (that one alone: a machine with fewer GPUs can resume it)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and device is not None and device.type == "cuda":
        cuda = state["cuda"]
        if isinstance(cuda, list | tuple):  # checkpoints before 2026-12-05 kept every visible GPU's
            index = device.index if device.index is not None else torch.cuda.current_device()
            cuda = cuda[min(index, len(cuda) - 1)]
        torch.cuda.set_rng_state(cuda.cpu(), device)


def _as_tuple(value: Any) -> Any:
    """random.setstate wants tuples; a checkpoint round trip may turn them into lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint safely; any problem becomes a one-line CheckpointError naming the file.
    ``mmap`` maps the file instead of reading it: only what is used is read (a run's progress)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():  # damaged bytes read as an odd pickle protocol: the error says enough
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except MemoryError:  # a sound file too big for this machine is not a damaged one
        raise
    except Exception as err:  # damaged bytes make the unpickler fail in any way (IndexError, KeyError, ...)
        raise CheckpointError(f"{path}: not a readable checkpoint ({first_line(err)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a seq2seq checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')} is not supported "
                              f"(this seq2seq reads version {VERSION})")
    return payload


def trained_precision(run_dir: str | Path) -> str | None:
    """The precision recorded in a run folder's ``checkpoints/last.pt`` (None for a new run): the
    one ``train.precision=auto`` resumes it at, whatever it would choose on this machine."""
    last = Path(run_dir) / "checkpoints" / "last.pt"
    return load_checkpoint(last, mmap=True).get("precision") if last.is_file() else None


def training_precision(cfg: TrainConfig, device: torch.device, run_dir: Path,
                       dist: Dist | None = None) -> tuple[torch.dtype | None, str | None]:
    """The autocast dtype a run trains, validates and is tested at, and the precision its
    ``last.pt`` recorded (None for a new run, or where ``train.allow_mismatched_resume`` lets
    ``auto`` choose again). Rank 0 chooses for every rank: a measured bf16 speed-up near the
    threshold must not put ranks at different precisions."""
    dist = dist if dist is not None else current()
    trained = None if cfg.allow_mismatched_resume else trained_precision(run_dir)
    amp = dist.from_main(pick_precision(cfg.precision, device, trained) if dist.main else None)
    size_kernel_cache(amp, device)  # every rank, as rank 0's pick did for itself
    return amp, trained


def step_checkpoints(folder: Path) -> list[Path]:
    """The ``step-<n>.pt`` files of a checkpoints folder, oldest step first."""
    return sorted(folder.glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]) if p.stem[5:].isdigit() else -1)


def keep_step(last: Path, step: int, keep: int) -> None:
    """Keep ``last`` (just written at ``step``) as ``step-<step>.pt`` beside it, and only the ``keep``
    newest such files (``train.keep_checkpoints``; 0 keeps none). A hard link where the file
    system allows it: no second copy of the bytes, and as atomic as the checkpoint itself."""
    if keep < 1:
        return
    kept = last.with_name(f"step-{step}.pt")
    if not kept.exists():
        try:
            kept.hardlink_to(last)
        except OSError:  # no hard links here: a copy, written atomically
            atomic_write(kept, last.read_bytes())
    for old in step_checkpoints(last.parent)[:-keep]:
        old.unlink(missing_ok=True)


def average_checkpoints(paths: list[Path]) -> dict[str, Any]:
    """The checkpoint whose weights are the mean of ``paths``' (summed in float64, so N copies of
    one checkpoint give it back exactly; stored in the originals' dtypes), with the newest one's
    config, tokenizers and precision, and no optimiser state: for the tools, test scoring and
    fine-tuning, not for resuming. A set from different runs or models is one CheckpointError
    naming the first file that differs."""
    if not paths:
        raise CheckpointError("no checkpoints to average")
    first = load_checkpoint(paths[0])
    total = {k: v.double() for k, v in first["model"].items()}
    for path in paths[1:]:
        ckpt = load_checkpoint(path)
        if ckpt.get("config", {}).get("model") != first.get("config", {}).get("model") or \
                ckpt.get("tokenizers") != first.get("tokenizers"):
            raise CheckpointError(f"{path}: another model or tokenizers than {paths[0]}; average one run's checkpoints")
        weights = ckpt["model"]
        if weights.keys() != total.keys() or any(weights[k].shape != total[k].shape for k in total):
            raise CheckpointError(f"{path}: its weights' names or shapes differ from {paths[0]}'s")
        for k, v in weights.items():
            total[k] += v.double()
    newest = load_checkpoint(paths[-1])
    keep = {k: v for k, v in newest.items() if k not in ("optimizer", "schedule", "rng", "format", "version")}
    return {**keep, "model": {k: (v / len(paths)).to(first["model"][k].dtype) for k, v in total.items()},
            "averaged_from": [p.name for p in paths]}


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder means its best checkpoint (else its last, else its averaged one: a study's
    averaged rung holds only that); a file means itself."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt", "averaged.pt"):
            for candidate in (path / "checkpoints" / name, path / name):
                if candidate.is_file():
                    return candidate
        raise CheckpointError(f"{path}: no checkpoints/best.pt, last.pt or averaged.pt in this folder")
    return path


def tokenizer_refs(run_dir: Path, **tokenizers: Tokenizer) -> dict[str, Any]:
    """What a checkpoint stores to find its tokenizers again: paths relative to the run folder."""
    return {side: {"path": str(tok.path.resolve().relative_to(run_dir.resolve())), "sha256": tok.sha256()}
            for side, tok in tokenizers.items()}


def load_tokenizer(ref: dict[str, str], checkpoint: Path) -> Tokenizer:
    """Find a tokenizer next to the checkpoint's run folder and check it is the one trained with it."""
    rel = Path(ref["path"])
    for base in (checkpoint.parent.parent, checkpoint.parent):
        path = base / rel
        if path.is_file():
            tok = load_tokenizer_file(path)
            if tok.sha256() != ref["sha256"]:
                raise CheckpointError(f"{checkpoint}: tokenizer {path} is not the one this model was trained with")
            return tok
    raise CheckpointError(f"{checkpoint}: its tokenizer {rel} is missing (looked in the run folder)")


class Trained(NamedTuple):
    """A model rebuilt from its checkpoint, with what it needs to be used as it was trained."""

    model: nn.Module
    config: Config
    tokenizers: dict[str, Tokenizer]
    precision: str | None  # "bf16" or "fp32" as trained; None in checkpoints that predate the record


def load_trained(path: str | Path, task: str, build: Callable[[Config, dict[str, Tokenizer]], nn.Module]) -> Trained:
    """Rebuild a trained model from a run folder or a checkpoint: its task, config, tokenizers,
    weights and training precision. Any problem is one CheckpointError naming the file."""
    ckpt_path = resolve_checkpoint(path)
    ckpt = load_checkpoint(ckpt_path)
    if ckpt.get("task") != task:
        raise CheckpointError(f"{ckpt_path}: a {ckpt.get('task', 'unknown')} checkpoint, not a {task} model")
    try:
        cfg = config_from_dict(ckpt["config"])
        tokenizers = {side: load_tokenizer(ref, ckpt_path) for side, ref in ckpt["tokenizers"].items()}
        model = build(cfg, tokenizers)
        model.load_state_dict(ckpt["model"])
    except (KeyError, ConfigError, TokenizerError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{ckpt_path}: cannot rebuild the model ({first_line(err)})") from None
    return Trained(model, cfg, tokenizers, ckpt.get("precision"))


def load_weights(model: nn.Module, path: str | Path, tokenizers: dict[str, Any] | None = None,
                 config: dict[str, Any] | None = None) -> Path:
    """Start ``model`` from the weights of a checkpoint or run folder (``train.init_from``).
    Weights that do not fit it, that were trained with other ``tokenizers`` (refs as
    :func:`tokenizer_refs` writes them), or whose attention scores were scaled otherwise than
    ``config`` (the run's, as a dict) says, are one CheckpointError."""
    ckpt_path = resolve_checkpoint(path)
    ckpt = load_checkpoint(ckpt_path)
    theirs = sorted(ref["sha256"] for ref in ckpt.get("tokenizers", {}).values())
    if tokenizers is not None and theirs and theirs != sorted(ref["sha256"] for ref in tokenizers.values()):
        raise CheckpointError(f"train.init_from={path}: it was trained with other tokenizers than this run's "
                              f"(a run that starts from it takes its tokenizers: use the same data options)")
    if config is not None and ckpt.get("config"):  # the same weights, other scores: say so, never fine-tune it
        was, now = (config_from_dict(c).model.attention_scale for c in (ckpt["config"], config))
        if was != now:
            raise CheckpointError(f"train.init_from={path}: it was trained with model.attention_scale="
                                  f"{str(was).lower()}; set the same to start from it")
    load_model_weights(model, ckpt["model"], f"train.init_from={path}")
    return ckpt_path


def load_model_weights(model: nn.Module, weights: dict[str, Any], source: str) -> None:
    """``weights`` into ``model`` through its load hooks, which read older layouts or refuse
    them (ValueError); weights that do not fit are one CheckpointError naming ``source``."""
    try:
        model.load_state_dict(weights)
    except ValueError as err:
        raise CheckpointError(f"{source}: {first_line(err)}") from None
    except RuntimeError:
        raise CheckpointError(f"{source}: its weights do not fit this model "
                              f"({_first_misfit(weights, model.state_dict())})") from None


def _first_misfit(weights: dict[str, Any], own: dict[str, Any]) -> str:
    """The first weight that is missing on one side or shaped otherwise, in words."""
    for name in sorted(set(weights) | set(own)):
        if name not in weights or name not in own or weights[name].shape != own[name].shape:
            found = tuple(weights[name].shape) if name in weights else "nothing"
            wanted = tuple(own[name].shape) if name in own else "nothing"
            return f"{name}: {found} in the checkpoint, {wanted} in the model"
    return "the weights differ"


def take_init_tokenizers(path: str | Path, run_dir: Path) -> None:
    """A run that starts from another's weights (``train.init_from``) reads text with that run's
    tokenizers: they are copied into ``run_dir`` once, where the task then finds them."""
    ckpt_path = resolve_checkpoint(path)
    for ref in load_checkpoint(ckpt_path, mmap=True).get("tokenizers", {}).values():
        target = run_dir / ref["path"]
        if not target.exists():
            atomic_write(target, load_tokenizer(ref, ckpt_path).path.read_bytes())
