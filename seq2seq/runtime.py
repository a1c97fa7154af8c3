"""Where and how a run computes: the device, the precision, and the seeds.

One precision policy serves training, test evaluation and the tools: a model is evaluated
and served at the precision it was trained at (recorded in its checkpoint) unless the user
names another, so the scores in ``results.json`` belong to the outputs the tools print.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from torch import Tensor

from seq2seq.data.fetch import cache_dir, cache_lock
from seq2seq.files import WriteError, atomic_write
from seq2seq.provenance import cpu_name

PRECISIONS = ("fp32", "bf16", "fp16")  # what checkpoints record


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but no CUDA device is available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"train.device={name!r} but this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def move(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device``; to a GPU through pinned host memory, so the copy overlaps the work
    already queued there instead of waiting for it."""
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


BF16_MIN_SPEEDUP = 1.15  # ``auto`` takes bf16 on a CPU only where it trains at least this much faster


@functools.cache
def _cpu_info() -> tuple[str, set[str]]:
    """The first processor's ``family/model/stepping`` and its flags, from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", set()
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    ident = "/".join(fields.get(k, "?") for k in ("cpu family", "model", "stepping"))
    return ident, set(fields.get("flags", "").split())


def _cpu_has_bf16_instructions() -> bool:
    return bool(_cpu_info()[1] & {"avx512_bf16", "amx_bf16"})


def _native(precision: str, device: torch.device) -> bool:
    """Whether ``device`` computes at ``precision`` in hardware (else it is emulated, slowly)."""
    if precision == "fp32":
        return True
    if device.type == "cuda":
        return precision == "fp16" or torch.cuda.is_bf16_supported(including_emulation=False)
    return precision == "bf16" and _cpu_has_bf16_instructions()


def _probe_bf16_speedup() -> float:
    """fp32's time over bf16 autocast's for a forward and backward through a GRU, an attention-
    like projection and a 4,000-word output layer at the default model's widths, each timed as
    the best of 5 alternated rounds (about a second). bf16 instructions alone do not say bf16
    pays: on an Intel Xeon showing avx512_bf16 but no AMX (torch 2.14.1), bf16 trained the
    default model 1.6 times slower than fp32, where AMX machines train it 2-3 times faster."""
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        gru, mix, out = torch.nn.GRU(512, 512, batch_first=True), torch.nn.Linear(1024, 512), torch.nn.Linear(512, 4000)
        x = torch.randn(64, 8, 512, generator=torch.Generator().manual_seed(0))  # (B, T, H)

        def step(bf16: bool) -> float:
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                states, _ = gru(x)  # (B, T, H)
                logits = out(torch.tanh(mix(torch.cat([states, x], -1))))  # (B, T, V)
                loss = torch.log_softmax(logits.float(), -1).mean()
            loss.backward()
            return time.perf_counter() - start

        step(True), step(False)  # first use: kernels compiled, memory allocated
        best = {True: math.inf, False: math.inf}
        for _ in range(5):
            for bf16 in (True, False):
                best[bf16] = min(best[bf16], step(bf16))
    return best[False] / best[True]


def cpu_bf16_speedup() -> float:
    """How much faster this CPU trains in bf16 than in fp32 (0 without bf16 instructions, where
    bf16 is emulated): measured once per CPU (its name, family, model, stepping and bf16 flags),
    torch version and thread count, and kept in the cache folder, so every run on a machine
    resolves ``auto`` alike. A cache folder that cannot be written costs a probe per process."""
    if not _cpu_has_bf16_instructions():
        return 0.0
    ident, flags = _cpu_info()
    key = (f"{cpu_name()} ({ident}; {' '.join(sorted(f for f in flags if 'bf16' in f or 'amx' in f))}) | "
           f"torch {torch.__version__} | {torch.get_num_threads()} threads")
    return _speedup(key)


@functools.cache
def _speedup(key: str) -> float:
    size_kernel_cache(torch.bfloat16, torch.device("cpu"))  # before the probe's bf16 products, maybe the first
    try:
        with cache_lock("bf16_speedup"):  # processes starting together: one probes, the others read it
            path = cache_dir() / "bf16_speedup.json"
            known = _read_speedups(path)
            if key not in known:
                known[key] = round(_probe_bf16_speedup(), 3)
                with contextlib.suppress(WriteError):  # a full cache folder: measured again next time
                    atomic_write(path, json.dumps(known, indent=1) + "\n")
            return known[key]
    except OSError:  # no cache folder to lock in (read-only)
        return _probe_bf16_speedup()


def _read_speedups(path: Path) -> dict[str, float]:
    """The measurements kept at ``path``; an unreadable or damaged file keeps none."""
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(known, dict):
        return {}
    return {k: float(v) for k, v in known.items() if isinstance(v, (int, float)) and v > 0}


def pick_precision(name: str, device: torch.device, trained: str | None = None) -> torch.dtype | None:
    """The autocast dtype (None: plain fp32). ``auto`` takes bf16 where it trains faster (on a
    CPU: measured, see :func:`cpu_bf16_speedup`), and fp16 on GPUs without bf16 (training then
    scales the loss: see :func:`loss_scaler`); a run resumed from a checkpoint ``trained`` at a
    precision this device computes natively goes on at it (changing it mid-run is refused)."""
    if name == "auto" and resumes_at(trained, device):
        name = trained
    if name == "fp32":
        return None
    native_bf16 = device.type == "cuda" and _native("bf16", device)
    if name == "fp16" or (name == "auto" and device.type == "cuda" and not native_bf16):
        return torch.float16
    if name == "bf16" or (native_bf16 if device.type == "cuda" else cpu_bf16_speedup() >= BF16_MIN_SPEEDUP):
        size_kernel_cache(torch.bfloat16, device)
        return torch.bfloat16
    return None


def size_kernel_cache(amp_dtype: torch.dtype | None, device: torch.device) -> None:
    """Before a CPU's first bf16 product: oneDNN keeps the kernels it compiled for the last 1,024
    shapes by default, and a run's batches (forward and backward, every layer) need more."""
    if device.type == "cpu" and amp_dtype == torch.bfloat16:
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8192")


def resumes_at(trained: str | None, device: torch.device) -> bool:
    """Whether ``auto`` resumes a run at the precision its checkpoint recorded, ``trained``."""
    return trained in PRECISIONS and _native(trained, device)


def describe_precision(requested: str, amp_dtype: torch.dtype | None, device: torch.device,
                       trained: str | None = None) -> str:
    """How a run computes, for its log: the resolved precision and, where ``auto`` chose it, why."""
    text = "bf16 autocast" if amp_dtype == torch.bfloat16 else precision_name(amp_dtype)
    if requested == "auto" and resumes_at(trained, device):
        text += " (auto: the precision this run trained at before it was resumed)"
    elif requested == "auto" and device.type == "cpu" and _cpu_has_bf16_instructions():
        text += f" (auto: bf16 trains {cpu_bf16_speedup():.2f}x as fast as fp32 on this CPU)"
    return text


def serving_precision(requested: str, recorded: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a trained model is evaluated or served at. ``requested`` is ``model``
    (the precision it was trained at, ``recorded`` in its checkpoint), ``auto``, ``fp32``, ``bf16`` or ``fp16``.
    A model trained at fp16 (a GPU's stand-in for bf16) is served at fp32 off the GPU, where fp16
    is emulated slowly; fp32 holds every value fp16 can, so nothing the model learnt is lost."""
    if requested == "model":
        requested = recorded or "fp32"
        if requested == "fp16" and device.type != "cuda":
            requested = "fp32"
    return pick_precision(requested, device)


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """``"bf16"``, ``"fp16"`` or ``"fp32"``: how a resolved precision is written in checkpoints and results."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype, "fp32")


def loss_scaler(device: torch.device, amp_dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """fp16's gradients underflow where bf16's (fp32's exponent range) do not: under fp16 the
    loss is multiplied by a scale before backward and the gradients divided by it before the
    update, and a step whose scaled gradient overflowed is skipped with the scale halved
    (Micikevicius et al. 2018). Disabled, the scaler passes everything through."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> torch.autocast:
    """Autocast at ``amp_dtype`` on ``device``, or a disabled one for fp32."""
    return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)


def seed_rank(seed: int, rank: int, step: int) -> None:
    """Seed torch's draws (dropout, sampled tokens) for one data-parallel rank at one step: a hash
    of all three, so no two ranks, steps or run seeds share a stream (a sum would: seed k + 1 at
    step t drawing what seed k draws at step t + 1)."""
    torch.manual_seed(int(np.random.SeedSequence([seed % 2**32, rank, step]).generate_state(1, np.uint64)[0]))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy, torch (every CUDA device too) and sentencepiece's trainer: weights,
    dropout, scheduled sampling and subword vocabularies then depend on the seed alone."""
    random.seed(seed)
    spm.set_random_generator_seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
