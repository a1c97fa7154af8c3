"""Sequence-level training, one mechanism for both tasks: SCST and MRT.

Cross-entropy trains every step on the reference's prefix; at test time the model runs on its
own outputs and is judged by BLEU or CIDEr, not by likelihood. Sequence-level objectives
train on what the model itself produces, scored by the test metric:

* **SCST**, self-critical sequence training (Rennie et al. 2017): draw k outputs per input,
  score each with a reward r, and raise the log-probability of those that beat a baseline b:
  ``loss = -sum_i (r_i - b_i) log p(y_i | x)`` (REINFORCE), per sampled token. The baseline
  is the reward of the model's own greedy output (``greedy``, the paper's) or the mean reward
  of the input's other samples (``mean``, the "new SCST" of ruotianluo/self-critical.pytorch:
  no extra decoding, and every sample is judged against its siblings).
* **MRT**, minimum risk training (Shen et al. 2016; Edunov et al. 2018): the expected cost
  ``1 - r`` over the k samples under the model's distribution renormalised over them,
  ``Q(y_i) = p(y_i)^alpha / sum_j p(y_j)^alpha``, per input; an output drawn twice counts once
  (the paper's candidates are a set).

Both fine-tune a trained model (``train.init_from``): a random model's samples all score 0.
A sample's reference is its batch row's target: one reference, also in captioning, whose
batches pair an image with one of its captions.
The outputs are drawn without gradient (:func:`seq2seq.search.sample`, which never outputs
padding or the start token), then scored by the decoder teacher-forced in one pass under the
same restriction, which is where the gradient flows (the encoder runs once for
both; the decoder's dropout draws a new mask in that pass, so the outputs come from a policy a
dropout mask away from the one the gradient follows: exact with dropout 0). :class:`SequenceLevel`
wraps the model as the module a training step runs, so DistributedDataParallel averages its
gradients over ranks as it does cross-entropy's; the weights stay the model's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from seq2seq.config import TrainConfig
from seq2seq.data.batching import pad_ids
from seq2seq.models.loss import token_losses
from seq2seq.models.model import LossSum, Output, Seq2Seq, summed_sequence_loss
from seq2seq.rewards import Reward, make_reward
from seq2seq.search import greedy_search, sample
from seq2seq.tokenizers import BOS, EOS, PAD, Tokenizer

OBJECTIVES = ("xent", "scst", "mrt")


class Samples(NamedTuple):
    """What a sequence-level forward pass hands its loss."""

    tokens: list[list[int]]  # batch*k sampled outputs (input b's are rows b*k .. b*k+k-1), no end token
    logp: Tensor  # (batch*k,) each sample's log-probability under the model, with gradient
    scored: Tensor  # (batch*k,) tokens scored per sample (its end token included)
    greedy: list[list[int]] | None  # the greedy output of each input (SCST's greedy baseline), else None
    xent: Output | None  # the teacher-forced pass over the references (train.xent_weight > 0), else None
    attention: None = None  # the attention probe records nothing of sampled passes


class SequenceLevel(nn.Module):
    """``train.objective`` scst or mrt around ``model``: forward samples and scores, :meth:`terms`
    turns the samples' rewards into the loss. ``decode`` maps id lists to the reward's text."""

    def __init__(self, model: Seq2Seq, cfg: TrainConfig, reward: Reward,
                 decode: Callable[[list[list[int]]], list[str]], max_len: int):
        super().__init__()
        self.model, self.cfg, self.reward, self.decode, self.max_len = model, cfg, reward, decode, max_len
        self.stats: dict[str, float] = {}  # the last batch's mean reward and baseline, for the training log

    def forward(self, inputs: tuple[Tensor, ...], tgt_in: Tensor, teacher_forcing: float = 1.0) -> Samples:
        k = self.cfg.samples
        memory = self.model.encode(*inputs)
        drawn = sample(self.model.decoder, memory, k, self.max_len)
        greedy = None
        if self.cfg.objective == "scst" and self.cfg.scst_baseline == "greedy":
            self.model.eval()  # the test-time output, without dropout (Rennie et al.)
            with torch.no_grad():
                greedy = [h.tokens for h in greedy_search(self.model.decoder, self.model.encode(*inputs), self.max_len)]
            self.model.train()
        cand_in, _ = pad_ids([[BOS] + h.tokens for h in drawn])  # (batch*k, steps)
        cand_out, _ = pad_ids([h.tokens + [EOS] * h.finished for h in drawn])
        cand_in, cand_out = cand_in[:, :cand_out.size(1)].to(tgt_in.device), cand_out.to(tgt_in.device)
        rows = torch.arange(tgt_in.size(0), device=tgt_in.device).repeat_interleave(k)
        logits = self.model.decode(memory.index_select(rows), cand_in).logits  # (batch*k, steps, vocab)
        logits = logits.index_fill(-1, torch.tensor([PAD, BOS], device=logits.device), float("-inf"))  # as drawn
        nll, _ = token_losses(logits.reshape(-1, logits.size(-1)), cand_out.reshape(-1))
        real = cand_out != PAD
        logp = -nll.view_as(cand_out).masked_fill(~real, 0.0).sum(dim=1)  # (batch*k,) padding scores inf
        xent = self.model.decode(memory, tgt_in) if self.cfg.xent_weight > 0 else None
        return Samples([h.tokens for h in drawn], logp, real.sum(dim=1), greedy, xent)

    def terms(self, out: Samples, batch: Any) -> list[LossSum]:
        """The objective's loss terms for ``batch`` (the trainer's ``loss``)."""
        k, cfg = self.cfg.samples, self.cfg
        refs = self.decode(_references(batch.tgt_out))  # one per input
        rewards = torch.tensor(self.reward(self.decode(out.tokens), [r for r in refs for _ in range(k)]),
                               dtype=torch.float32, device=out.logp.device).view(-1, k)  # (batch, k)
        if cfg.objective == "scst":
            if out.greedy is not None:
                baseline = torch.tensor(self.reward(self.decode(out.greedy), refs), dtype=torch.float32,
                                        device=rewards.device).unsqueeze(1)  # (batch, 1)
            else:
                baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)  # (batch, k) the others' mean
            advantage = (rewards - baseline).view(-1)  # (batch*k,)
            terms = [LossSum(-(advantage * out.logp).sum(), int(out.scored.sum()))]
        else:
            repeated = ~_first_copies(out, k).to(out.logp.device)  # (batch*k,)
            scores = (cfg.mrt_alpha * out.logp.float()).masked_fill(repeated, float("-inf"))
            q = torch.softmax(scores.view(-1, k), dim=1)  # (batch, k), over each input's distinct samples
            baseline = (q.detach() * rewards).sum(dim=1, keepdim=True)  # the expected reward
            terms = [LossSum((q * (1.0 - rewards)).sum(), rewards.size(0))]
        if out.xent is not None:
            loss, _, n = summed_sequence_loss(out.xent.logits, batch.tgt_out, cfg.label_smoothing)
            terms.append(LossSum(cfg.xent_weight * loss, n))
        self.stats = {"train/reward": float(rewards.mean()), "train/reward_baseline": float(baseline.mean())}
        return terms


def make_objective(cfg: TrainConfig, model: Seq2Seq, tokenizer: Tokenizer, max_len: int, default_reward: str,
                   train_refs: list[list[str]] | None = None) -> SequenceLevel | None:
    """The sequence-level objective ``cfg.objective`` names for ``model`` (None for cross-entropy):
    rewards on ``tokenizer``'s text, samples of at most ``max_len`` tokens (the task's training
    limit and its end token); ``train_refs``, each training input's references, weigh CIDEr-D."""
    if cfg.objective == "xent":
        return None
    reward = make_reward(default_reward if cfg.reward == "auto" else cfg.reward, train_refs)
    return SequenceLevel(model, cfg, reward, tokenizer.decode, max_len)


def _first_copies(out: Samples, k: int) -> Tensor:
    """(batch*k,) bool: whether each sample is the first of its input's k to be that output (its
    tokens and whether it ended). MRT's Q is a distribution over a set (Shen et al. 2016, Alg. 1):
    an output drawn twice is one candidate, not twice the weight."""
    first, seen = [], set()
    for i, (tokens, scored) in enumerate(zip(out.tokens, out.scored.tolist())):
        if i % k == 0:
            seen = set()
        key = (tuple(tokens), scored)
        first.append(key not in seen)
        seen.add(key)
    return torch.tensor(first)


def _references(tgt_out: Tensor) -> list[list[int]]:
    """The reference ids of each row of ``tgt_out`` (batch, tgt_len), without end token and padding."""
    return [[t for t in row if t not in (PAD, EOS)] for row in tgt_out.tolist()]
