"""Schedules over a run: the learning rate (warm-up then decay, plateau, constant) and the
teacher-forcing ratio of scheduled sampling (Bengio et al., 2015)."""

from __future__ import annotations

import math

import torch

from seq2seq.config import TrainConfig


class LRSchedule:
    """Warm-up then decay over the run's horizon (steps or time budget), plateau, or constant."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig):
        self.optimizer, self.cfg = optimizer, cfg
        self.factor = 1.0  # plateau: current multiplier
        self.best = float("-inf")
        self.bad = 0

    def progress(self, step: int, elapsed: float) -> float | None:
        """Fraction of the run done, from max_steps or the time budget, whichever is nearer."""
        parts = []
        if self.cfg.max_steps:
            parts.append(step / self.cfg.max_steps)
        if self.cfg.time_budget:
            parts.append(elapsed / (self.cfg.time_budget * 60))
        return min(1.0, max(parts)) if parts else None

    def lr(self, step: int, elapsed: float) -> float:
        cfg = self.cfg
        if cfg.schedule == "constant":
            return cfg.lr
        if cfg.schedule == "plateau":
            return cfg.lr * self.factor
        warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        progress = self.progress(step, elapsed)
        if cfg.decay == "inverse_sqrt" or progress is None:
            return cfg.lr * warm * min(1.0, math.sqrt(max(1, cfg.warmup_steps) / (step + 1)))
        floor = cfg.min_lr_ratio
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.decay == "cosine" else 1 - progress
        return cfg.lr * warm * (floor + (1 - floor) * shape)

    def update(self, step: int, elapsed: float) -> float:
        lr = self.lr(step, elapsed)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def on_validation(self, score: float) -> None:
        if score > self.best:
            self.best, self.bad = score, 0
        else:
            self.bad += 1
            if self.bad >= self.cfg.plateau_patience:
                self.factor *= self.cfg.plateau_factor
                self.bad = 0

    def state_dict(self) -> dict[str, float]:
        return {"factor": self.factor, "best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.factor, self.best, self.bad = state["factor"], state["best"], int(state["bad"])


def teacher_forcing_ratio(cfg: TrainConfig, step: int) -> float:
    """Probability of feeding the reference token at ``step`` (scheduled sampling decays it)."""
    if cfg.sampling_schedule == "linear":
        return max(cfg.teacher_forcing, 1.0 - (1.0 - cfg.teacher_forcing) * step / cfg.sampling_k)
    if cfg.sampling_schedule == "inverse_sigmoid":
        k = cfg.sampling_k
        return max(cfg.teacher_forcing, k / (k + math.exp(min(step / k, 700.0))))
    return cfg.teacher_forcing
