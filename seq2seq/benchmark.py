"""Speed and memory of a configuration, beside the machine's own matrix-multiply rate.

Numbers alone depend on the machine; the ratios printed next to them (achieved FLOP/s over
the matmul rate measured in the same run) do not, so they compare across CPUs and GPUs.
"""

from __future__ import annotations

import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seq2seq.config import Config
from seq2seq.data.batching import ParallelData
from seq2seq.models.decoder import RNNDecoder
from seq2seq.models.encoders import TextEncoder
from seq2seq.models.model import Seq2Seq
from seq2seq.profiling import breakdown_table, profile_steps, scope_function
from seq2seq.tasks.translator import Translator
from seq2seq.tracking import Tracker
from seq2seq.train.trainer import Trainer

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def matmul_rate(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048,
                seconds: float = 1.0, shape: tuple[int, int, int] | None = None) -> float:
    """Sustained FLOP/s of an n x n matrix product on ``device``, or of an (m x k) . (k x n)
    one for ``shape=(m, k, n)`` (a recurrent step's: the sentences of a batch times its
    recurrent matrix, which a sequential recurrence cannot make bigger)."""
    m, k, n = shape or (n, n, n)
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
        if device.type == "cuda" and count % 10:
            continue
        _sync(device)
    _sync(device)
    return 2 * m * k * n * count / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rnn_flops(rnn: torch.nn.RNNBase) -> int:
    """Forward multiply-add FLOPs of one time step of a (multi-layer, bidirectional) RNN."""
    gates, h, dirs = GATES[rnn.mode.lower().replace("rnn_tanh", "rnn")], rnn.hidden_size, 2 if rnn.bidirectional else 1
    total, inp = 0, rnn.input_size
    for _ in range(rnn.num_layers):
        total += dirs * 2 * gates * h * (inp + h)
        inp = h * dirs
    return total


def forward_flops(model: Seq2Seq, src_len: float, tgt_len: float) -> dict[str, float]:
    """Forward FLOPs per source token and per target token (matrix products only).

    Attention terms scale with the memory length, so they are taken at the average
    ``src_len``; key projections are counted once per memory vector.
    """
    dec: RNNDecoder = model.decoder
    enc = model.encoder
    per_src = _rnn_flops(enc.rnn) if isinstance(enc, TextEncoder) else 0
    per_tgt = _rnn_flops(dec.rnn)
    att = dec.attention
    if att is not None:
        key_proj = getattr(att, "key_proj", None)
        if key_proj is not None:
            per_src += 2 * key_proj.in_features * key_proj.out_features
        key_dim = key_proj.out_features if key_proj is not None else dec.hidden
        value_dim = key_proj.in_features if key_proj is not None else key_dim
        per_tgt += 2 * src_len * (key_dim + value_dim)  # scores and context
        if hasattr(att, "query_proj"):  # Bahdanau: W q; its add and tanh are elementwise, not products
            per_tgt += 2 * att.query_proj.in_features * att.query_proj.out_features
    for layer in (getattr(dec, "combine", None), getattr(dec, "readout", None), dec.tie_proj, dec.out):
        if layer is not None:
            per_tgt += 2 * layer.in_features * layer.out_features
    for bridges in (dec.bridge, dec.cell_bridge):  # once per sentence: spread over its target tokens
        for bridge in bridges or []:
            per_tgt += 2 * bridge.in_features * bridge.out_features / max(tgt_len, 1.0)
    return {"per_source_token": float(per_src), "per_target_token": float(per_tgt)}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@dataclass
class BenchResult:
    values: dict[str, Any]
    breakdown: dict[str, float] | None = None  # seconds per training step by part, when profiled

    def table(self) -> str:
        width = max(len(k) for k in self.values)
        rows = []
        for k, v in self.values.items():
            text = f"{v:,.4g}" if isinstance(v, float) else str(v)
            rows.append(f"{k:<{width}}  {text}")
        if self.breakdown:
            rows += ["", "where a training step's time goes (torch.profiler):", breakdown_table(self.breakdown)]
        return "\n".join(rows)


def describe(cfg: Config) -> str:
    m = cfg.model
    return (f"{'bi-' if m.bidirectional else ''}{m.enc_cell} {m.enc_hidden}x{m.enc_layers} -> {m.dec_cell} "
            f"{m.dec_hidden}x{m.dec_layers}, attention {m.attention}{' + input feeding' if m.input_feeding else ''}")


def benchmark_translation(cfg: Config, translator: Translator, data: ParallelData, test_sources: list[str],
                          steps: int = 30, warmup: int = 5, beam: int = 5, profile: int = 0,
                          trace: Path | None = None, decode_repeats: int = 3) -> BenchResult:
    """Training tokens/s, greedy and beam sentences/s (the best of ``decode_repeats`` alternating
    rounds), peak memory and utilisation ratios; with ``profile``, that many more training steps
    are profiled (a Chrome trace to ``trace``)."""
    model = translator.model
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, data, cfg.train, Path(tmp), Tracker(), lambda t: {"score": 0.0}, {})
    device, amp = trainer.device, trainer.amp_dtype
    translator.device, translator.amp_dtype = device, amp
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rate32 = matmul_rate(device, torch.float32)
    rate_amp = matmul_rate(device, amp) if amp is not None else rate32

    batches = data.epoch(0)
    if len(batches) < warmup + steps + profile:
        raise ValueError(f"the data has {len(batches)} batches; the benchmark needs {warmup + steps + profile}")
    for indices in batches[:warmup]:
        trainer.train_step(data.batch(indices).to(device))
    src_tokens = tgt_tokens = 0
    _sync(device)
    start = time.perf_counter()
    for indices in batches[warmup:warmup + steps]:
        batch = data.batch(indices).to(device)
        trainer.train_step(batch)
        src_tokens += int(batch.src_lens.sum())
        tgt_tokens += int((batch.tgt_out != 0).sum())
    _sync(device)
    train_seconds = time.perf_counter() - start
    sentences = sum(len(b) for b in batches[warmup:warmup + steps])
    flops = forward_flops(model, src_tokens / sentences, tgt_tokens / sentences)
    rnn = model.decoder.rnn  # the decoder's recurrent step: (sentences x hidden) . (hidden x gates*hidden)
    step_shape = (round(sentences / steps), rnn.hidden_size, GATES[rnn.mode.lower().replace("rnn_tanh", "rnn")]
                  * rnn.hidden_size)
    rate_step = matmul_rate(device, amp or torch.float32, shape=step_shape)
    train_flop = 3 * (src_tokens * flops["per_source_token"] + tgt_tokens * flops["per_target_token"])

    def decode_rate(b: int) -> float:
        _sync(device)
        t0 = time.perf_counter()
        translator.translate(test_sources, beam=b)
        _sync(device)
        return len(test_sources) / (time.perf_counter() - t0)

    rounds = [(decode_rate(1), decode_rate(beam)) for _ in range(max(1, decode_repeats))]
    greedy, beamed = max(r[0] for r in rounds), max(r[1] for r in rounds)
    breakdown = None
    if profile:
        profiled = iter(batches[warmup + steps:warmup + steps + profile])
        trainer.loss = scope_function(trainer.loss, "loss (log-softmax, NLL)")
        breakdown = profile_steps(model, lambda: trainer.train_step(data.batch(next(profiled)).to(device)), profile,
                                  trace)
    return BenchResult({
        "model": describe(cfg), "parameters": model.num_parameters(), "device": str(device),
        "precision": str(amp or "fp32").replace("torch.", ""),
        "train_steps_timed": steps,
        "train_tokens_per_second": (src_tokens + tgt_tokens) / train_seconds,
        "train_sentences_per_second": sentences / train_seconds,
        "forward_flops_per_source_token": flops["per_source_token"],
        "forward_flops_per_target_token": flops["per_target_token"],
        "train_gflops_per_second": train_flop / train_seconds / 1e9,
        "matmul_fp32_gflops_per_second": rate32 / 1e9,
        "matmul_compute_dtype_gflops_per_second": rate_amp / 1e9,
        "train_utilisation_of_matmul_rate": train_flop / train_seconds / rate_amp,
        "matmul_step_shape": "x".join(map(str, step_shape)),
        "matmul_step_shape_gflops_per_second": rate_step / 1e9,
        "train_utilisation_of_step_shape_rate": train_flop / train_seconds / rate_step,
        "greedy_sentences_per_second": greedy,
        f"beam{beam}_sentences_per_second": beamed,
        f"beam{beam}_cost_over_greedy": greedy / beamed,
        "test_sentences": len(test_sources),
        "peak_memory_mb": peak_memory_mb(device),
    }, breakdown)
