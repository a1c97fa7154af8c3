"""The long-dependency tasks, generated on the fly: copy memory and the adding problem.

- Copy memory (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016): ``symbols`` symbols
  drawn from an alphabet of ``alphabet``, then T blanks, then a delimiter; the text encoder
  reads it all and the shared decoder must output the symbols. Scored by exact-match accuracy
  and by the cross-entropy per input step, ``sum over the symbols / (T + 2 * symbols)``,
  against the no-memory baseline ``symbols * log(alphabet) / (T + 2 * symbols)``.
- Adding problem (Hochreiter & Schmidhuber 1997, in the form of Le et al. 2015 and Arjovsky
  et al. 2016): T pairs (value, marker), values uniform in [0, 1], one marker in each half; the
  target is the sum of the two marked values. Many to one: the same text encoder over vectors,
  a linear head on its summary (:class:`~seq2seq.models.model.Regressor`). Scored by MSE
  against the constant baseline 1/6.

Every batch is a function of (seed, batch number) alone, so runs are deterministic and resume
exactly; validation and test sets come from seeds of their own.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from seq2seq.config import Config, ConfigError, SyntheticConfig
from seq2seq.data.batching import SourceBatch, TextBatch
from seq2seq.experiment import log
from seq2seq.models.model import LossSum, Regressor, Seq2Seq, build_text_encoder, build_translation_model
from seq2seq.runtime import move, seed_everything
from seq2seq.search import greedy_search
from seq2seq.tokenizers import BOS, EOS
from seq2seq.tracking import logged_rows, make_tracker
from seq2seq.train.trainer import Trainer

FIRST_SYMBOL = EOS + 1  # ids below are pad, unk, <s>, </s>
BATCHES_PER_EPOCH = 1000  # an "epoch" of generated data: only numbers the batches
ADDING_BASELINE_MSE = 1 / 6  # predicting 1 for the sum of two U(0, 1): its variance, 2/12


@dataclass
class VectorBatch(SourceBatch):
    """Adding problem inputs (batch, T, 2) of (value, marker), and the sums (batch,)."""

    src: Tensor
    src_lens: Tensor  # (batch,) on the CPU
    target: Tensor
    tgt_in: None = None  # nothing to feed a decoder

    def to(self, device: torch.device) -> "VectorBatch":
        return VectorBatch(move(self.src, device), self.src_lens, move(self.target, device))

    def num_tokens(self) -> int:
        return int(self.src_lens.sum())


def vocab_size(cfg: SyntheticConfig) -> int:
    """Special ids, the alphabet, the blank and the delimiter."""
    return FIRST_SYMBOL + cfg.alphabet + 2


def copy_batch(cfg: SyntheticConfig, n: int, generator: torch.Generator) -> TextBatch:
    """n copy-memory sequences: src (n, symbols + T + 1), targets (n, symbols + 1)."""
    data = torch.randint(FIRST_SYMBOL, FIRST_SYMBOL + cfg.alphabet, (n, cfg.symbols), generator=generator)
    blank, delimiter = FIRST_SYMBOL + cfg.alphabet, FIRST_SYMBOL + cfg.alphabet + 1
    src = torch.cat([data, torch.full((n, cfg.length), blank), torch.full((n, 1), delimiter)], dim=1)
    src_lens = torch.full((n,), src.size(1))
    tgt_in = torch.cat([torch.full((n, 1), BOS), data], dim=1)
    tgt_out = torch.cat([data, torch.full((n, 1), EOS)], dim=1)
    return TextBatch(src, src_lens, tgt_in, tgt_out)


def adding_batch(cfg: SyntheticConfig, n: int, generator: torch.Generator) -> VectorBatch:
    """n adding-problem sequences of T (value, marker) pairs, one marker in each half."""
    values = torch.rand(n, cfg.length, generator=generator)
    half = max(cfg.length // 2, 1)
    first = torch.randint(0, half, (n,), generator=generator)
    second = torch.randint(half, max(cfg.length, half + 1), (n,), generator=generator).clamp_max(cfg.length - 1)
    second = torch.where(second == first, (first + 1) % cfg.length, second)  # T = 1 or 2: keep two markers
    markers = torch.zeros(n, cfg.length)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    return VectorBatch(torch.stack([values, markers], dim=-1), torch.full((n,), cfg.length),
                       (values * markers).sum(dim=1))


def make_batch(cfg: SyntheticConfig, n: int, seed: int) -> TextBatch | VectorBatch:
    generator = torch.Generator().manual_seed(seed)
    return copy_batch(cfg, n, generator) if cfg.task == "copy" else adding_batch(cfg, n, generator)


class SyntheticData:
    """Training data for the Trainer: batch k of every run with the same seed is the same."""

    def __init__(self, cfg: SyntheticConfig, seed: int):
        self.cfg, self.seed = cfg, seed

    def epoch(self, epoch: int) -> list[list[int]]:
        return [[epoch * BATCHES_PER_EPOCH + b] for b in range(BATCHES_PER_EPOCH)]

    def batch(self, indices: list[int]) -> TextBatch | VectorBatch:
        return make_batch(self.cfg, self.cfg.batch_size, self.seed * 1_000_003 + indices[0])


def build_model(cfg: Config) -> Seq2Seq | Regressor:
    """Copy: a text encoder and the shared decoder. Adding: the encoder over 2-vectors and a head."""
    if cfg.synthetic.task == "copy":
        return build_translation_model(cfg.model, vocab_size(cfg.synthetic), vocab_size(cfg.synthetic))
    return Regressor(build_text_encoder(cfg.model, 0, input_dim=2))


def mse_loss(prediction: Tensor, batch: VectorBatch) -> list[LossSum]:
    return [LossSum(F.mse_loss(prediction.float(), batch.target, reduction="sum"), batch.target.numel())]


def evaluate(model: Seq2Seq | Regressor, cfg: SyntheticConfig, batch: TextBatch | VectorBatch,
             device: torch.device, chunk: int = 500) -> dict[str, float]:
    """Copy: exact-match and per-symbol accuracy of greedy outputs, cross-entropy per input step
    and its no-memory baseline. Adding: MSE and its constant baseline."""
    model.eval()
    with torch.no_grad():
        if cfg.task == "adding":
            predictions = torch.cat([model((batch.src[i:i + chunk].to(device), batch.src_lens[i:i + chunk]))
                                     for i in range(0, batch.size, chunk)]).float().cpu()
            mse = float(F.mse_loss(predictions, batch.target))
            return {"mse": mse, "baseline_mse": ADDING_BASELINE_MSE, "mse_to_baseline": mse / ADDING_BASELINE_MSE}
        exact = symbols = nll = 0.0
        for i in range(0, batch.size, chunk):
            part = TextBatch(batch.src[i:i + chunk], batch.src_lens[i:i + chunk], batch.tgt_in[i:i + chunk],
                             batch.tgt_out[i:i + chunk]).to(device)
            memory = model.encode(*part.inputs)
            logits = model.decode(memory, part.tgt_in).logits[:, :cfg.symbols].float()  # (n, symbols, vocab)
            data = part.tgt_out[:, :cfg.symbols]
            nll += float(F.cross_entropy(logits.transpose(1, 2), data, reduction="sum"))
            outputs = [h.tokens[:cfg.symbols] for h in greedy_search(model.decoder, memory, cfg.symbols + 1)]
            for out, want in zip(outputs, data.tolist()):
                hits = sum(a == b for a, b in zip(out, want))
                exact, symbols = exact + (hits == cfg.symbols and len(out) == cfg.symbols), symbols + hits
    steps = cfg.length + 2 * cfg.symbols  # Arjovsky et al.'s sequence length T + 20
    return {"accuracy": exact / batch.size, "symbol_accuracy": symbols / (batch.size * cfg.symbols),
            "cross_entropy": nll / batch.size / steps,
            "baseline_cross_entropy": cfg.symbols * math.log(cfg.alphabet) / steps}


def solved(cfg: SyntheticConfig, scores: dict[str, float]) -> bool:
    """The bar of the long-dependency study: accuracy >= 0.9 (copy), MSE below a tenth of the baseline (adding)."""
    return scores["accuracy"] >= 0.9 if cfg.task == "copy" else scores["mse"] < ADDING_BASELINE_MSE / 10


def solved_at_step(cfg: SyntheticConfig, log: Path) -> int | None:
    """The first validation step whose validation scores meet :func:`solved`'s bar, read from the
    run's ``metrics.jsonl`` (which holds every session of a resumed run); None if none did.
    How long a cell needs to learn a task, to the resolution of ``train.valid_every``."""
    measure = "valid/accuracy" if cfg.task == "copy" else "valid/mse"
    steps = [row["step"] for row in logged_rows(log, measure)
             if solved(cfg, {k.removeprefix("valid/"): v for k, v in row.items()})]
    return min(steps, default=None)


def run(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Train on generated batches within the step budget, then score the fixed test set."""
    t0 = time.monotonic()
    if cfg.train.objective != "xent":
        raise ConfigError(f"train.objective={cfg.train.objective} trains translation and captioning models; "
                          f"the long-dependency tasks train with cross-entropy or MSE")
    seed_everything(cfg.train.seed)
    task = cfg.synthetic
    model = build_model(cfg)
    valid = make_batch(task, task.valid_examples, seed=10**15 + cfg.train.seed)  # seeds no training batch uses
    test = make_batch(task, task.test_examples, seed=2 * 10**15 + cfg.train.seed)
    tracker = make_tracker(cfg.tracking, run_dir, cfg.to_dict(), job_type=f"long-dependency-{task.task}")

    def validate(trainer: Trainer) -> dict[str, float]:
        scores = evaluate(trainer.model, task, valid, trainer.device)
        return {**scores, "score": scores["accuracy"] if task.task == "copy" else -scores["mse"]}

    trainer = Trainer(model, SyntheticData(task, cfg.train.seed), cfg.train, run_dir, tracker, validate,
                      {"task": f"long_dependency_{task.task}", "config": cfg.to_dict()},
                      loss=None if task.task == "copy" else mse_loss)
    log(f"{task.task}, T = {task.length}: {model.num_parameters():,} parameters on {trainer.device}")
    progress = trainer.fit()
    if progress.stop_reason == "interrupted":
        tracker.finish()
        return {"interrupted": True, "train_steps": progress.step}
    with trainer.autocast():  # at the training precision, as validation
        scores = evaluate(trainer.model, task, test, trainer.device)  # the last weights: equal steps, no selection
    results: dict[str, Any] = {
        "task": task.task, "length": task.length, "cell": cfg.model.enc_cell,
        **{f"test_{k}": v for k, v in scores.items()}, "solved": solved(task, scores),
        "solved_at_step": solved_at_step(task, run_dir / "metrics.jsonl"),
        "train_steps": progress.step, "train_steps_per_second": progress.step / max(progress.train_time, 1e-9),
        "clipped_fraction": progress.clipped_steps / max(progress.step, 1),
        "parameters": model.num_parameters(), "device": str(trainer.device), **trainer.record(t0),
        "seed": cfg.train.seed,
    }
    tracker.summary(results)
    tracker.finish()
    return results

