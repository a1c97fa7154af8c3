"""Schedules over a run: the learning rate (warm-up then decay, plateau, constant), the
teacher-forcing ratio of scheduled sampling (Bengio et al., 2015), and the step horizon the
decay runs over.

Every schedule is a function of the step alone. The horizon is planned once and frozen in the
checkpoint: ``max_steps`` itself, the steps of ``max_epochs`` epochs in the batch plan, or,
for a time budget, an estimate from the run's own speed once it is warm (see
:func:`time_horizon`). A resumed run, or another rank of a data-parallel one, then applies
exactly the learning rates an uninterrupted run applies.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from seq2seq.config import TrainConfig

WARM_SECONDS = 60.0  # a time-budgeted run estimates its horizon after this long (or a tenth of its budget) ...
WARM_STEPS = 20  # ... and at least this many steps


class LRSchedule:
    """Warm-up then decay over the run's step horizon, plateau, or constant."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig):
        self.optimizer, self.cfg = optimizer, cfg
        self.factor = 1.0  # plateau: current multiplier
        self.best = float("-inf")
        self.bad = 0

    def lr(self, step: int, horizon: int) -> float:
        """The learning rate of ``step`` for a run of ``horizon`` steps (0: not planned yet, the
        first steps of a time-budgeted run, which are warm-up: no decay yet). Past the horizon
        (a finished run trained further) it stays at its floor. The decay runs over the whole
        horizon, warm-up included, and the warm-up multiplies it: the peak is ``lr`` times the
        decay at the end of warm-up (0.99 lr for 200 of 3,000 steps, cosine)."""
        cfg = self.cfg
        if cfg.schedule == "constant":
            return cfg.lr
        warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        if cfg.schedule == "plateau":  # warm-up, then halved (plateau_factor) whenever valid BLEU stalls
            return cfg.lr * warm * self.factor
        if cfg.decay == "inverse_sqrt":
            return cfg.lr * warm * min(1.0, math.sqrt(max(1, cfg.warmup_steps) / (step + 1)))
        progress = min(1.0, step / horizon) if horizon else 0.0
        floor = cfg.min_lr_ratio
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.decay == "cosine" else 1 - progress
        return cfg.lr * warm * (floor + (1 - floor) * shape)

    def update(self, step: int, horizon: int) -> float:
        lr = self.lr(step, horizon)
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


class EpochPlan(Protocol):
    def epoch(self, epoch: int) -> list[list[int]]: ...


def budget_of(cfg: TrainConfig) -> dict[str, float]:
    """The limits a run is planned for (the ones set), as a run records them."""
    return {k: v for k, v in (("max_steps", cfg.max_steps), ("max_epochs", cfg.max_epochs),
                              ("time_budget", cfg.time_budget)) if v is not None}


def step_horizon(cfg: TrainConfig, data: EpochPlan, world: int) -> tuple[int, str]:
    """The horizon ``max_steps`` and ``max_epochs`` give (the nearer of the two), and how it was
    found; (0, "") when neither is set. An epoch trains ``len(plan) // world`` steps."""
    options = []
    if cfg.max_steps:
        options.append((cfg.max_steps, f"max_steps={cfg.max_steps}"))
    if cfg.max_epochs:
        steps = sum(len(data.epoch(e)) // world for e in range(cfg.max_epochs))
        options.append((steps, f"max_epochs={cfg.max_epochs} ({steps:,} steps in the batch plan)"))
    return min(options) if options else (0, "")


def warm(cfg: TrainConfig, step: int, elapsed: float) -> bool:
    """Whether a time-budgeted run has run long enough to estimate its speed."""
    return step >= WARM_STEPS and elapsed >= min(WARM_SECONDS, 6.0 * cfg.time_budget)


def time_horizon(cfg: TrainConfig, step: int, elapsed: float, seconds_per_step: float,
                 seconds_per_validation: float) -> int:
    """The step a time-budgeted run reaches its budget at: the steps left at the measured speed,
    less the time of the validations still to come (every ``valid_every`` steps and a last one)."""
    left = cfg.time_budget * 60 - elapsed
    horizon = step + max(0, math.floor(left / seconds_per_step))
    for _ in range(5):  # the validations to come depend on the horizon: a few rounds settle it
        validations = horizon // cfg.valid_every - step // cfg.valid_every + (horizon % cfg.valid_every != 0)
        horizon = step + max(0, math.floor((left - validations * seconds_per_validation) / seconds_per_step))
    return horizon


def time_plan(cfg: TrainConfig, data: EpochPlan, world: int, step: int, elapsed: float, seconds_per_step: float,
              seconds_per_validation: float) -> tuple[int, str]:
    """A time-budgeted run's horizon, estimated at ``step``, and how it was found: the budget's
    :func:`time_horizon`, or ``max_steps``/``max_epochs`` where they come first."""
    estimate = time_horizon(cfg, step, elapsed, seconds_per_step, seconds_per_validation)
    steps, basis = step_horizon(cfg, data, world)
    if steps and steps < estimate:
        return steps, basis
    return estimate, (f"time budget of {cfg.time_budget:g} min ({estimate:,} steps, estimated at step {step} from "
                      f"{seconds_per_step:.3f} s per step and {seconds_per_validation:.1f} s per validation)")


def teacher_forcing_ratio(cfg: TrainConfig, step: int) -> float:
    """Probability of feeding the reference token at ``step`` (scheduled sampling decays it)."""
    if cfg.sampling_schedule == "linear":
        return max(cfg.teacher_forcing, 1.0 - (1.0 - cfg.teacher_forcing) * step / cfg.sampling_k)
    if cfg.sampling_schedule == "inverse_sigmoid":
        k = cfg.sampling_k
        return max(cfg.teacher_forcing, k / (k + math.exp(min(step / k, 700.0))))
    return cfg.teacher_forcing
