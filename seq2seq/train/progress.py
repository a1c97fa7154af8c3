"""Where a training run stands (saved in every checkpoint), what one step reports, the
statistics between log lines, how they are shown, and when a run is finished."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from seq2seq.config import TrainConfig


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint so a run resumes exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of the current epoch already trained
    elapsed: float = 0.0  # seconds of training, validation included, over all sessions
    train_time: float = 0.0  # seconds spent in training steps alone
    tokens: int = 0  # non-padding source + target tokens trained on
    examples: int = 0  # sentence pairs or images trained on
    best_score: float = float("-inf")
    best_step: int = 0
    bad_validations: int = 0  # validations since the best score
    longest_bad_streak: int = 0  # the most validations without a better score that a better one then ended
    last_validation: int = -1  # step of the last validation
    clipped_steps: int = 0  # steps whose gradient norm was above train.clip_norm
    stop_reason: str = ""
    horizon: int = 0  # the steps the schedule decays over, frozen once planned (0: not yet)
    horizon_basis: str = ""  # how it was planned, in words
    budget: dict[str, float] = field(default_factory=dict)  # the limits it was planned for (max_steps, ...)

    def count(self, stats: StepStats, seconds: float, world: int, clipped: bool) -> None:
        """Count one finished update: a step of ``world`` batches, one per rank."""
        self.step += 1
        self.batch_in_epoch += world
        self.tokens += stats.tokens
        self.examples += stats.examples
        self.train_time += seconds
        self.clipped_steps += clipped

    def record_validation(self, score: float) -> bool:
        """Count one validation at this step (higher scores are better); whether it is the best."""
        self.last_validation = self.step
        if score > self.best_score:
            self.longest_bad_streak = max(self.longest_bad_streak, self.bad_validations)
            self.best_score, self.best_step, self.bad_validations = score, self.step, 0
            return True
        self.bad_validations += 1
        return False


@dataclass
class StepStats:
    """One update as every rank sees it: the loss and token counts of all ranks' batches together."""

    loss: float
    grad_norm: float  # global, before clipping
    tokens: int
    examples: int
    stop_requested: bool  # Ctrl-C or SIGTERM reached some rank
    attention: dict[str, float] = field(default_factory=dict)  # this rank's attention figures, on logged steps


@dataclass
class Window:
    """Training statistics since the last log line."""

    steps: int = 0
    loss: float = 0.0
    grad_norm: float = 0.0  # summed global gradient norms before clipping
    clipped: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def add(self, loss: float, grad_norm: float, clipped: bool, tokens: int, seconds: float) -> None:
        self.steps, self.loss, self.grad_norm = self.steps + 1, self.loss + loss, self.grad_norm + grad_norm
        self.clipped, self.tokens, self.seconds = self.clipped + clipped, self.tokens + tokens, self.seconds + seconds

    def stats(self) -> dict[str, float]:
        n = max(self.steps, 1)
        return {"train/loss": self.loss / n, "train/grad_norm": self.grad_norm / n,
                "train/clipped_fraction": self.clipped / n,
                "train/tokens_per_second": self.tokens / max(self.seconds, 1e-9)}


def finish_reason(cfg: TrainConfig, p: Progress) -> str:
    """Why a run at ``p`` is done under ``cfg`` (budget, step or epoch limit, early stopping), or "".

    A time budget whose horizon was estimated ends at that horizon, not at the clock, so a
    resumed or slowed-down run ends at the same step; a raised budget goes back to the clock."""
    if cfg.time_budget is not None:
        planned = p.horizon and p.budget.get("time_budget") == cfg.time_budget and "time budget" in p.horizon_basis
        if planned and p.step >= p.horizon:
            return f"time budget of {cfg.time_budget:g} min reached: its horizon of {p.horizon:,} steps"
        if not planned and p.elapsed >= cfg.time_budget * 60:
            return f"time budget of {cfg.time_budget:g} min reached"
    if cfg.max_steps is not None and p.step >= cfg.max_steps:
        return f"max_steps={cfg.max_steps} reached"
    if cfg.max_epochs is not None and p.epoch >= cfg.max_epochs:
        return f"max_epochs={cfg.max_epochs} reached"
    if p.bad_validations >= cfg.patience:
        return f"no better validation score for {cfg.patience} validations"
    return ""


def longest_stall(scores: list[float]) -> int:
    """The most validations in a row without a better score (higher is better) that a better one
    then ended, as training counts them, from the scores in the order they were measured."""
    replay = Progress()
    for score in scores:
        replay.record_validation(score)
    return replay.longest_bad_streak


def outran_patience(cfg: TrainConfig, p: Progress) -> bool:
    """Whether a run at ``p`` trained past where early stopping with ``cfg.patience`` would have
    ended it (it was trained with a larger patience): it is not the run ``cfg`` describes. A run
    with ``cfg.patience`` itself stops at the validation that reaches it, so it is never saved with
    that many bad validations and steps after them."""
    stalled = p.bad_validations > cfg.patience or p.bad_validations == cfg.patience and p.step != p.last_validation
    return p.longest_bad_streak >= cfg.patience or stalled


class Display:
    """Training progress for a person: a tqdm bar on a terminal, else plain log lines."""

    def __init__(self) -> None:
        self.bar: Any = None

    def open(self, cfg: TrainConfig) -> None:
        if not sys.stderr.isatty():
            return
        from tqdm import tqdm

        if cfg.time_budget:
            self.bar = tqdm(total=int(cfg.time_budget * 60), unit="s", desc="training", dynamic_ncols=True)
        else:
            self.bar = tqdm(total=cfg.max_steps, unit="step", desc="training", dynamic_ncols=True)

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def report(self, cfg: TrainConfig, p: Progress, stats: dict[str, float]) -> None:
        """A log line (or the bar's state) after ``train.log_every`` steps."""
        if self.bar is not None:
            self.bar.n = min(self.bar.total, int(p.elapsed if cfg.time_budget else p.step)) \
                if self.bar.total else p.step
            self.bar.set_postfix(step=p.step, loss=f"{stats['train/loss']:.3f}",
                                 tok_s=f"{stats['train/tokens_per_second']:.0f}", refresh=False)
            self.bar.refresh()
            return
        eta = ""
        if cfg.time_budget:
            eta = f", eta {max(0.0, cfg.time_budget * 60 - p.elapsed) / 60:.1f} min"
        print(f"step {p.step} epoch {stats['train/epoch']:.2f}: loss {stats['train/loss']:.3f}, "
              f"lr {stats['train/lr']:.2e}, {stats['train/tokens_per_second']:.0f} tok/s{eta}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
