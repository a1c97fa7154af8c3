"""The training loop shared by every task.

A :class:`Trainer` takes a model, its training data (anything with ``epoch(n)`` returning
batches of indices and ``batch(indices)`` building a batch) and a ``validate`` function
returning metrics with a ``score`` to maximise. It handles teacher forcing and scheduled
sampling, Adam with gradient clipping, the schedules of :mod:`seq2seq.train.schedules` (over a step
horizon planned once and frozen), periodic validation, early stopping, a time budget, atomic
checkpoints and exact resumption (refused where precision or world size would change mid-run;
on the CPU data-parallel ranks seed their random draws from the step, so they resume exactly too).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seq2seq import provenance
from seq2seq.config import ConfigError, TrainConfig
from seq2seq.data.batching import Batch, TrainData
from seq2seq.files import WriteError
from seq2seq.models.model import LossSum, Output, attention_penalty, mean_loss, summed_sequence_loss
from seq2seq.runtime import autocast, loss_scaler, pick_device, precision_name, seed_rank
from seq2seq.tracking import Tracker
from seq2seq.train import faults
from seq2seq.train.checkpoints import (
    keep_step,
    load_checkpoint,
    load_model_weights,
    load_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
    training_precision,
)
from seq2seq.train.distributed import Dist, collective_failed, current
from seq2seq.train.faults import CollectiveTimeout, StopNow, StopSignals, check_resumable, non_finite_parameter
from seq2seq.train.gradients import gradient_flow
from seq2seq.train.probes import AttentionProbe
from seq2seq.train.progress import Display, Progress, StepStats, Window, finish_reason
from seq2seq.train.schedules import LRSchedule, budget_of, step_horizon, teacher_forcing_ratio, time_plan, warm
from seq2seq.train.sequence_level import SequenceLevel


def make_optimizer(params: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam (its fused kernel: one pass over each parameter), or plain SGD (the optimiser of the
    exploding-gradient papers)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True)


class Trainer:
    def __init__(self, model: nn.Module, data: TrainData, cfg: TrainConfig, run_dir: Path, tracker: Tracker,
                 validate: Callable[["Trainer"], dict[str, float]], checkpoint_extra: dict[str, Any],
                 param_groups: list[dict[str, Any]] | None = None,
                 loss: Callable[[Any, Batch], list[LossSum]] | None = None, dist: Dist | None = None,
                 objective: SequenceLevel | None = None):
        self.device = pick_device(cfg.device)
        self.dist = dist if dist is not None else current()  # torchrun's process group, if any
        self.amp_dtype, _ = training_precision(cfg, self.device, run_dir, self.dist)
        self.model = model.to(self.device)
        self.objective = objective  # a sequence-level objective wrapping the model (train.objective), or None
        # what training steps run: the model or its objective, maybe in DistributedDataParallel
        self.net = self.dist.wrap(objective.to(self.device) if objective else self.model)
        self.data, self.cfg, self.run_dir, self.tracker = data, cfg, Path(run_dir), tracker
        self.validate_fn, self.checkpoint_extra = validate, checkpoint_extra
        params = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
        self.optimizer = make_optimizer(params, cfg)
        self.scaler = loss_scaler(self.device, self.amp_dtype)  # fp16: loss scaling; otherwise a pass-through
        self.loss = objective.terms if objective else loss or self.sequence_loss  # (output, batch) -> loss terms
        self.schedule = LRSchedule(self.optimizer, cfg)
        self.progress = Progress()
        self.display = Display()  # a progress bar on a terminal, else log lines (rank 0)
        self.signals = StopSignals()  # Ctrl-C / SIGTERM: stop after the current step
        self._clock = time.monotonic()  # when progress.elapsed was last brought up to date
        self._saved: dict[str, int] = {}  # checkpoint name -> the step it holds
        self._last_save = time.monotonic()
        self.sessions: list[dict[str, Any]] = []  # provenance of every training session of this run
        self._speed_mark: tuple[int, float, float] | None = None  # (step, elapsed, validating) at its start
        self._validating = 0.0  # seconds spent in validate() this session, checkpoints included
        self._elapsed_before = 0.0  # seconds of training in earlier sessions of a resumed run

    # --- checkpoints -----------------------------------------------------------------

    def checkpoint_path(self, name: str) -> Path:
        return self.run_dir / "checkpoints" / f"{name}.pt"

    def save(self, name: str) -> Path:
        """Write checkpoint ``name`` atomically (rank 0 alone). Refuses non-finite weights; a failed
        write is one line saying that the previous checkpoint there is intact."""
        path, step = self.checkpoint_path(name), self.progress.step
        if not self.dist.main:
            return path
        bad = non_finite_parameter(self.model)
        if bad is not None:
            raise FloatingPointError(f"step {step}: parameter {bad} is not finite; {path} was not overwritten"
                                     f"{self._kept(name)}")
        try:
            self._write_checkpoint(path)
        except WriteError as err:
            raise WriteError(f"{err}{self._kept(name)}") from None
        self._saved[name], self._last_save = step, time.monotonic()
        return path

    def _kept(self, name: str) -> str:
        """What is left on disk to go on from (a failed write leaves ``name``'s old file whole)."""
        if "last" not in self._saved:
            return ""
        return (f"; {self.checkpoint_path('last')} still holds step {self._saved['last']} and the run resumes "
                f"from it with the same command")

    def _write_checkpoint(self, path: Path) -> None:
        save_checkpoint(path, {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "schedule": self.schedule.state_dict(),
            "progress": asdict(self.progress),
            "rng": rng_state(self.device),
            "precision": precision_name(self.amp_dtype),  # what evaluation and the tools run at
            "sessions": self.sessions,
            **self.checkpoint_extra,
        })

    def resume(self, path: Path) -> None:
        """Continue from a checkpoint: weights, optimiser, schedule, RNG and data position."""
        # read on the CPU: the optimiser moves its moments to the parameters' device and keeps
        # Adam's step counters on the CPU, where they cost no device sync
        ckpt = load_checkpoint(path, map_location="cpu")
        if not self.cfg.allow_mismatched_resume:
            check_resumable(path, ckpt, precision_name(self.amp_dtype), self.dist.world)
        load_model_weights(self.model, ckpt["model"], str(path))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):  # fp16 runs' loss scale (a disabled scaler saves nothing)
            self.scaler.load_state_dict(ckpt["scaler"])
        self.schedule.load_state_dict(ckpt["schedule"])
        self.progress = Progress(**ckpt["progress"])
        self._elapsed_before = self.progress.elapsed
        self.sessions = list(ckpt.get("sessions", []))
        self._saved = {"last": self.progress.step} if Path(path) == self.checkpoint_path("last") else {}
        set_rng_state(ckpt["rng"], self.device)

    def record(self, started: float) -> dict[str, Any]:
        """What trained this run (see :mod:`seq2seq.provenance`), the plan it followed and what it
        cost, for results.json. ``started``: ``time.monotonic()`` when this process's task began;
        ``total_minutes`` adds the training time of earlier sessions of a resumed run."""
        p = self.progress
        return {**provenance.summarise(self.sessions), "budget": p.budget, "schedule_horizon": p.horizon,
                "schedule_horizon_basis": p.horizon_basis, "objective": self.cfg.objective,
                "init_from": self.cfg.init_from, "train_minutes": p.elapsed / 60, "stop_reason": p.stop_reason,
                "total_minutes": (time.monotonic() - started + self._elapsed_before) / 60}

    # --- the horizon -------------------------------------------------------------------

    def _plan_horizon(self) -> None:
        """Freeze the schedule's horizon from max_steps or max_epochs, unless a time budget
        will estimate it (:meth:`_estimate_horizon`) or it is frozen already."""
        p = self.progress
        if p.horizon or self.cfg.time_budget:
            return
        p.horizon, p.horizon_basis = step_horizon(self.cfg, self.data, self.dist.world)
        p.budget = budget_of(self.cfg)

    def _estimate_horizon(self) -> None:
        """A time-budgeted run, once warm: validate once (its cost counts), then freeze the
        horizon the budget allows at the speed measured since the middle of the warm-up window.
        Rank 0 decides and estimates; every rank applies its figures."""
        p, cfg = self.progress, self.cfg
        if not cfg.time_budget or p.horizon:
            return
        if self._speed_mark is None and warm(cfg, 2 * p.step, 2 * p.elapsed):
            self._speed_mark = (p.step, p.elapsed, self._validating)
        ready = self._speed_mark is not None and p.step > self._speed_mark[0] and warm(cfg, p.step, p.elapsed)
        if not self.dist.from_main(ready):
            return
        elapsed, validated = p.elapsed, self._validating  # up to this step, before its validation
        started = time.monotonic()
        self.validate(save=False)
        seconds_per_validation = time.monotonic() - started
        plan = None
        if self.dist.main:  # rank 0 decided it was ready: its mark is set
            mark_step, mark_elapsed, mark_validating = self._speed_mark
            training = elapsed - mark_elapsed - (validated - mark_validating)  # the steps alone since the mark
            speed = max(training / (p.step - mark_step), 1e-6)  # seconds per step
            plan = time_plan(cfg, self.data, self.dist.world, p.step, p.elapsed, speed, seconds_per_validation)
        p.horizon, p.horizon_basis = self.dist.from_main(plan)
        p.budget = budget_of(cfg)
        self.log(f"schedule horizon: {p.horizon:,} steps, from the {p.horizon_basis}")
        last = self.save("last")
        if p.step % cfg.valid_every == 0 and self.dist.main:  # the scheduled validation of this step, done
            keep_step(last, p.step, cfg.keep_checkpoints)

    # --- the loop ----------------------------------------------------------------------

    def autocast(self) -> torch.autocast:
        return autocast(self.device, self.amp_dtype)

    def sequence_loss(self, out: Output, batch: Batch) -> list[LossSum]:
        """The sequence models' loss: label-smoothed cross-entropy per token, plus the attention
        penalty if any, per token (Xu et al.'s weight against a caption's summed NLL) or per caption."""
        loss, _, n = summed_sequence_loss(out.logits, batch.tgt_out, self.cfg.label_smoothing)
        terms = [LossSum(loss, n)]
        if self.cfg.attention_reg > 0 and out.attention is not None:
            penalty = attention_penalty(out.attention.float(), out.memory_mask, batch.tgt_out)
            per = n if self.cfg.attention_reg_per == "token" else penalty.count
            terms.append(LossSum(self.cfg.attention_reg * penalty.total, per))
        return terms

    def train_step(self, batch: Batch) -> StepStats:
        """One update on this rank's ``batch`` (and the other ranks' batches, if any). A step whose
        loss or gradient is not finite is not applied (the loop then stops): the weights stay finite."""
        self.net.train()
        ratio = teacher_forcing_ratio(self.cfg, self.progress.step)
        logged = (self.progress.step + 1) % self.cfg.log_every == 0
        with self.autocast(), AttentionProbe(self.model, logged) as probe:
            out = self.net(batch.inputs, batch.tgt_in, ratio)
        terms = self.loss(out, batch)
        # each term over its count in all ranks' batches; DDP averages the ranks' gradients, hence * world
        counts = self.dist.sum(torch.tensor([float(t.count) for t in terms], dtype=torch.float64)).tolist()
        loss = sum(t.total / max(c, 1.0) for t, c in zip(terms, counts)) * self.dist.world
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)  # clipping and the norm see the true gradient
        limit = self.cfg.clip_norm if self.cfg.clip_norm > 0 else float("inf")  # inf: measure, do not clip
        grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), limit))
        value = loss.item() / self.dist.world
        if math.isfinite(value) and math.isfinite(grad_norm):  # the norm is global: all ranks agree on it
            self.scaler.step(self.optimizer)
        self.scaler.update()  # fp16: an overflow halves the scale (that step was skipped above)
        # after the update, so that a signal during it stops the run at this step's end
        shared = self.dist.sum(torch.tensor([value, batch.num_tokens(), batch.size, float(self.signals.requested)],
                                            dtype=torch.float64)).tolist()
        return StepStats(shared[0], grad_norm, int(shared[1]), int(shared[2]), shared[3] > 0,
                         {**probe.record(out, batch), **(self.objective.stats if self.objective else {})})

    def probe_gradient_flow(self, batch: Batch) -> None:
        """Measure and log the gradient flow on ``batch`` at the current weights (see seq2seq.train.gradients)."""
        loss = self.sequence_loss if self.objective else self.loss  # the probe runs the model, not the objective
        flow = gradient_flow(self.model, batch.inputs, batch.tgt_in, lambda out: mean_loss(loss(out, batch)))
        step = self.progress.step
        self.tracker.log(flow.scalars(), step=step)
        if flow.by_distance:
            self.tracker.lines("gradient_flow/by_distance", flow.by_distance, "distance from the last token", step)

    def _tick(self) -> None:
        """Add the wall time since the last tick to ``progress.elapsed``."""
        now = time.monotonic()
        self.progress.elapsed += now - self._clock
        self._clock = now

    def _stop_requested(self) -> bool:
        """Whether Ctrl-C or SIGTERM reached any rank."""
        return bool(self.dist.sum(torch.tensor([float(self.signals.requested)])).item() > 0)

    def _budget_left(self) -> bool:
        """Whether to go on; rank 0 decides for all (its clock is the run's)."""
        self.progress.stop_reason = self.dist.from_main(finish_reason(self.cfg, self.progress))
        return not self.progress.stop_reason

    def validate(self, save: bool = True) -> dict[str, float]:
        """Run the task's validation, track the best score, checkpoint best (and ``save``: last)."""
        p, started = self.progress, time.monotonic()
        self.model.eval()
        with torch.no_grad(), self.autocast():
            metrics = self.validate_fn(self)
        score = metrics["score"]
        self.schedule.on_validation(score)
        improved = p.record_validation(score)
        self.tracker.log({f"valid/{k}": v for k, v in metrics.items()}, step=p.step)
        self.log(f"validation at step {p.step}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())
                 + (" (best)" if improved else f" (best {p.best_score:.2f} at step {p.best_step})"))
        self._tick()  # the checkpoints count this validation's time: a resumed run keeps its budget
        if improved:
            self.save("best")
        if save and self.dist.main:
            keep_step(self.save("last"), p.step, self.cfg.keep_checkpoints)  # step-<n>.pt for averaging
        self._validating += time.monotonic() - started
        return metrics

    def log(self, message: str) -> None:
        if self.dist.main:
            self.display.write(message)

    def fit(self) -> Progress:
        """Resume from ``checkpoints/last.pt`` when the run folder has one, then :meth:`train`."""
        last = self.checkpoint_path("last")
        if self.dist.from_main(last.exists()):  # every rank resumes, or none (a rank missing the file fails)
            self.resume(last)
            self.log(f"resuming from {last} at step {self.progress.step}")
        elif self.cfg.init_from:
            path = load_weights(self.model, self.cfg.init_from, self.checkpoint_extra.get("tokenizers"),
                                self.checkpoint_extra.get("config"))
            self.log(f"starting from the weights of {path} (a fresh optimiser)")
        progress = self.train()
        self.log(f"training stopped at step {progress.step}: {progress.stop_reason}")
        self.dist.barrier()  # every rank then reads the checkpoints rank 0 wrote
        return progress

    def train(self) -> Progress:
        """Train until the budget, step or epoch limit, or early stopping; then validate once more.

        A run that is already finished under the current config returns at once, untouched;
        raising a limit (budget, max_steps, max_epochs, patience) continues it. Data-parallel ranks
        draw their own dropout masks and samples, seeded from the seed, the rank and the step:
        on the CPU before every step, so a resumed run draws what an uninterrupted one would; on
        GPUs (not bitwise reproducible anyway) at the first step of a session, as each reseed
        there rebuilds cuDNN's dropout state of multi-layer RNNs.
        """
        cfg, p = self.cfg, self.progress
        if not self._budget_left() and p.last_validation == p.step:
            return p
        self._plan_horizon()
        self.sessions = provenance.add_session(self.sessions, provenance.session(
            self.device, precision_name(self.amp_dtype), self.dist.world))
        if self.dist.main:
            self.display.open(cfg)
        self.signals.install()
        window = Window()
        self._clock = time.monotonic()
        try:
            if cfg.gradient_flow_every and p.step == 0 and self.dist.main:  # at initialisation
                self.probe_gradient_flow(self.data.batch(self.data.epoch(0)[0]).to(self.device))
            rank, world, first = self.dist.rank, self.dist.world, p.step
            while self._budget_left():
                batches = self.data.epoch(p.epoch)
                if len(batches) < world:  # no step would ever run: the loop would spin
                    raise ConfigError(f"the training data makes {len(batches)} batch(es) an epoch, fewer than the "
                                      f"{world} process(es) that each need one a step: use fewer processes or "
                                      f"smaller batches")
                # each step takes the next `world` batches of the epoch's plan, one per rank
                while p.batch_in_epoch + world <= len(batches) and self._budget_left():
                    t0 = time.monotonic()
                    lr = self.schedule.update(p.step, p.horizon)
                    batch = self.data.batch(batches[p.batch_in_epoch + rank]).to(self.device)
                    if self.dist.active and (self.device.type == "cpu" or p.step == first):
                        seed_rank(cfg.seed, rank, p.step)  # each rank its own draws (see _train's docstring)
                    step = self.train_step(batch)
                    loss, grad_norm = step.loss, step.grad_norm
                    dt = time.monotonic() - t0
                    clipped = 0 < cfg.clip_norm < grad_norm
                    p.count(step, dt, world, clipped)
                    window.add(loss, grad_norm, clipped, step.tokens, dt)
                    self._tick()
                    # fp16: an overflowing step is skipped and the scale halved; below 1 the run has diverged
                    overflow = self.scaler.is_enabled() and self.scaler.get_scale() >= 1.0
                    if not (math.isfinite(loss) and (math.isfinite(grad_norm) or overflow)):
                        self.tracker.log(window.stats(), step=p.step)  # the explosion stays visible in W&B
                        raise faults.diverged(loss, grad_norm, p.step, self._kept("last"))
                    if cfg.gradient_flow_every and p.step % cfg.gradient_flow_every == 0 and self.dist.main:
                        self.probe_gradient_flow(batch)  # after this step's update
                    if p.step % cfg.log_every == 0:
                        stats = {**window.stats(), **step.attention, "train/lr": lr,
                                 "train/teacher_forcing": teacher_forcing_ratio(cfg, p.step),
                                 "train/epoch": p.epoch + p.batch_in_epoch / len(batches)}
                        self.tracker.log(stats, step=p.step)
                        if self.dist.main:
                            self.display.report(cfg, p, stats)
                        window = Window()
                    self._estimate_horizon()  # may validate this step (its weights are scored once)
                    if p.step % cfg.valid_every == 0 and p.last_validation != p.step:
                        self.validate()  # saves last.pt too
                    elif cfg.checkpoint_minutes and time.monotonic() - self._last_save >= cfg.checkpoint_minutes * 60:
                        self.save("last")  # after the step's work: a kill loses at most checkpoint_minutes
                    if step.stop_requested:
                        self.log(f"stopping at step {p.step} (signal received)")
                        raise KeyboardInterrupt
                if p.batch_in_epoch + world > len(batches):  # fewer batches left than ranks: they are left out
                    p.epoch, p.batch_in_epoch = p.epoch + 1, 0
            if p.last_validation != p.step:
                self.validate()
            self._budget_left()  # the final validation may have started early stopping
            self.save("last")
            if self._stop_requested():  # Ctrl-C during the final validation: stop before the test evaluation
                p.stop_reason = "interrupted"
        except RuntimeError as err:  # a collective timed out or a peer vanished: a line, never a hang
            if not (self.dist.active and collective_failed(err)):
                raise
            raise CollectiveTimeout.at(self.dist.rank, self.dist.world, p.step, cfg.collective_timeout, err,
                                       self.checkpoint_path("last")) from None
        except StopNow:
            p.stop_reason = "interrupted"  # mid-step: the last checkpoint on disk is the consistent state
            self.log(f"stopped at once; the run resumes from {self.checkpoint_path('last')}, not from step {p.step}")
        except KeyboardInterrupt:
            p.stop_reason = "interrupted"
            try:
                self.save("last")  # raised at a step boundary: the state after the last complete step
            except StopNow:  # a second Ctrl-C during that save: the atomic write left a whole checkpoint
                self.log(f"stopped during the save; the run resumes from {self.checkpoint_path('last')}")
        finally:
            self.signals.restore()
            self.display.close()
        return p
