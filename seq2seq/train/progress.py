"""Where a training run stands (saved in every checkpoint), what one step reports, the
statistics between log lines, and when a run is finished."""

from __future__ import annotations

from dataclasses import dataclass

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
    last_validation: int = -1  # step of the last validation
    clipped_steps: int = 0  # steps whose gradient norm was above train.clip_norm
    stop_reason: str = ""


@dataclass
class StepStats:
    """One update as every rank sees it: the loss and token counts of all ranks' batches together."""

    loss: float
    grad_norm: float  # global, before clipping
    tokens: int
    examples: int
    stop_requested: bool  # Ctrl-C or SIGTERM reached some rank


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
    """Why a run at ``p`` is done under ``cfg`` (budget, step or epoch limit, early stopping), or ""."""
    if cfg.time_budget is not None and p.elapsed >= cfg.time_budget * 60:
        return f"time budget of {cfg.time_budget:g} min reached"
    if cfg.max_steps is not None and p.step >= cfg.max_steps:
        return f"max_steps={cfg.max_steps} reached"
    if cfg.max_epochs is not None and p.epoch >= cfg.max_epochs:
        return f"max_epochs={cfg.max_epochs} reached"
    if p.bad_validations >= cfg.patience:
        return f"no better validation score for {cfg.patience} validations"
    return ""
