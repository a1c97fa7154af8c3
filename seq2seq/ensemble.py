"""Ensembles: several trained models searched as one (Luong et al. 2015; fairseq's EnsembleModel).

At every step each member reads its own memory of the input with its own decoder, and the
ensemble's distribution over the next token is the mean of the members' probabilities,
``log p(y) = logsumexp_i log p_i(y) - log N``, not a mean of their logits. :class:`Ensemble`
offers what search uses of a model (``encode``, and as its ``decoder`` ``init_state`` and
``step``), so the one search decodes it, greedy and beam alike, n-best included. Members
must share the target vocabulary (the same tokenizer); their encoders may differ. The
attention reported is the members' mean where they attend over the same positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from seq2seq.config import Config
from seq2seq.models.decoder import DecoderState
from seq2seq.models.memory import Memory
from seq2seq.tokenizers import Tokenizer
from seq2seq.train.checkpoints import CheckpointError, Trained, load_trained


@dataclass
class EnsembleMemory:
    """One memory per member, of the same inputs; what search reads of a memory."""

    members: list[Memory]

    @property
    def states(self) -> Tensor:
        return self.members[0].states  # search takes the batch size and the device from it

    def index_select(self, rows: Tensor) -> "EnsembleMemory":
        return EnsembleMemory([m.index_select(rows) for m in self.members])

    def for_search(self) -> "EnsembleMemory":
        return EnsembleMemory([m.for_search() for m in self.members])


@dataclass
class EnsembleState:
    members: list[DecoderState]

    def follow_beams(self, parents: Tensor, kept: Tensor | None) -> "EnsembleState":
        return EnsembleState([s.follow_beams(parents, kept) for s in self.members])


class Ensemble(nn.Module):
    """Models searched together; ``ensemble.decoder`` is the ensemble itself, so code that
    searches ``model.decoder`` over ``model.encode(...)`` searches the ensemble unchanged."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.models = nn.ModuleList(models)

    @property
    def decoder(self) -> "Ensemble":
        return self

    def encode(self, *inputs: Tensor) -> EnsembleMemory:
        return EnsembleMemory([m.encode(*inputs) for m in self.models])

    def init_state(self, memory: EnsembleMemory) -> EnsembleState:
        return EnsembleState([m.decoder.init_state(mem) for m, mem in zip(self.models, memory.members)])

    def step(self, prev: Tensor, state: EnsembleState, memory: EnsembleMemory
             ) -> tuple[Tensor, EnsembleState, Tensor | None]:
        """prev (batch,) -> the log of the members' mean probabilities (batch, vocab), new state, mean attention."""
        outs = [m.decoder.step(prev, s, mem) for m, s, mem in zip(self.models, state.members, memory.members)]
        logp = torch.stack([torch.log_softmax(logits.float(), dim=-1) for logits, _, _ in outs])  # (members, batch, V)
        mixed = torch.logsumexp(logp, dim=0) - math.log(len(outs))  # log of the mean probability
        weights = [w for _, _, w in outs]
        same = all(w is not None and w.shape == weights[0].shape for w in weights)
        attention = torch.stack([w.float() for w in weights]).mean(dim=0) if same else None
        return mixed, EnsembleState([s for _, s, _ in outs]), attention


def load_members(paths: Sequence[str | Path], task: str, build: Callable[[Config, dict[str, Tokenizer]], nn.Module],
                 same_input: Callable[[Config], object] = lambda cfg: None) -> tuple[nn.Module, Trained]:
    """One trained model, or an :class:`Ensemble` of several, and the first member (whose config
    and tokenizers serve them all). Members must share their tokenizers (``data.tokenizers_from``)
    and what ``same_input`` reads of their config (how they see an image); otherwise one
    CheckpointError naming both runs. The precision they were trained at is kept where all
    agree; mixed members are served in fp32."""
    members = [load_trained(path, task, build) for path in paths]
    first = members[0]
    for path, member in zip(paths[1:], members[1:]):
        for side, tok in member.tokenizers.items():
            if side not in first.tokenizers or tok.sha256() != first.tokenizers[side].sha256():
                raise CheckpointError(f"{path} and {paths[0]} have other {side} tokenizers: ensemble members must "
                                      f"share them (train one with data.tokenizers_from={paths[0]})")
        if same_input(member.config) != same_input(first.config):
            raise CheckpointError(f"{path} and {paths[0]} read their inputs differently "
                                  f"({same_input(member.config)} vs {same_input(first.config)})")
    if len(members) == 1:
        return first.model, first
    precision = first.precision if all(m.precision == first.precision for m in members) else "fp32"
    return Ensemble([m.model for m in members]), first._replace(precision=precision)
