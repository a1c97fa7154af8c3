"""Where and how a run computes: the device, the precision, and the seeds.

One precision policy serves training, test evaluation and the tools: a model is evaluated
and served at the precision it was trained at (recorded in its checkpoint) unless the user
names another, so the scores in ``results.json`` belong to the outputs the tools print.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from torch import Tensor

PRECISIONS = ("fp32", "bf16")


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


def _cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: plain fp32). ``auto`` takes bf16 where the hardware computes it
    fast, and fp16 on GPUs without bf16 (training then scales the loss: see :func:`loss_scaler`)."""
    if name == "fp32":
        return None
    native_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    if name == "fp16" or (name == "auto" and device.type == "cuda" and not native_bf16):
        return torch.float16
    fast = native_bf16 if device.type == "cuda" else _cpu_has_fast_bf16()
    if name == "bf16" or fast:
        if device.type == "cpu":
            # oneDNN keeps the kernels it compiled for the last 1,024 shapes by default; a run's
            # batches (forward and backward, every layer) need more, read at its first product
            os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8192")
        return torch.bfloat16
    return None


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
