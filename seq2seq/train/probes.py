"""What the training log records of the attention, every ``log_every`` steps: the mean entropy
of its weights (``train/attention_entropy``, nats) and the largest |score| of the batch
(``train/attention_max_score``). A softmax that collapses onto one position shows as the
entropy falling toward 0 while the scores keep growing, as it happens, not after the run."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from seq2seq.tokenizers import PAD


class AttentionProbe:
    """``with AttentionProbe(model, on) as probe:`` around a forward pass; then
    :meth:`record` gives its figures (nothing when ``on`` is false or the model has no attention)."""

    def __init__(self, model: nn.Module, on: bool):
        decoder = getattr(model, "decoder", None)
        self.attention = getattr(decoder, "attention", None) if on else None

    def __enter__(self) -> "AttentionProbe":
        if self.attention is not None:
            self.attention.largest_score = torch.zeros(())  # every attention call raises it
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.attention is not None:
            self.largest, self.attention.largest_score = self.attention.largest_score, None

    def record(self, out: Any, batch: Any) -> dict[str, float]:
        """The figures of the probed pass: the entropy of the weights ``out.attention`` (batch,
        tgt_len, mem_len) averaged over the real steps of ``batch.tgt_out``, and the largest score."""
        if self.attention is None or out.attention is None:
            return {}
        p = out.attention.detach().float().clamp_min(1e-12)  # padded memory positions have weight 0: they add 0
        entropy = -(p * p.log()).sum(dim=-1)  # (batch, tgt_len)
        real = batch.tgt_out != PAD
        return {"train/attention_entropy": float(entropy[real].mean()),
                "train/attention_max_score": float(self.largest)}
