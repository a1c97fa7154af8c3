"""Greedy and batched beam search over the shared decoder, for any memory.

Search sees only ``decoder.init_state``, ``decoder.step`` and a :class:`Memory`, so the same
code decodes translations and captions. A hypothesis takes at most ``max_len`` steps (its
end token included); one that reaches the limit without ending is returned unfinished.

Beam search ranks finished hypotheses (those that produced the end token) above unfinished
ones, whatever their scores: length normalisation would otherwise let a repetitive loop that
never ends, and so never pays for its end token, beat a complete translation. An unfinished
hypothesis is returned only for an input where no hypothesis finished within its limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from seq2seq.models.decoder import RNNDecoder
from seq2seq.models.memory import Memory
from seq2seq.tokenizers import BOS, EOS


@dataclass
class Hypothesis:
    tokens: list[int]  # output ids, without start and end tokens
    score: float  # log-probability / (steps ** length_penalty)
    logprob: float  # summed log-probability of the steps taken (end token included)
    finished: bool  # False when the length limit stopped it
    attention: Tensor | None  # (steps, mem_len) weights of each step, on the CPU


def max_lengths(mem_lens: Tensor, ratio: float, offset: int) -> Tensor:
    """Per-input step limits: ``ratio * length + offset`` (batch,)."""
    return (mem_lens.float() * ratio).long() + offset


@torch.no_grad()
def greedy_search(decoder: RNNDecoder, memory: Memory, max_len: Tensor | int) -> list[Hypothesis]:
    """The most probable token at each step, for a whole batch at once."""
    batch = memory.states.size(0)
    limits = _limits(max_len, batch)
    state = decoder.init_state(memory)
    prev = torch.full((batch,), BOS, dtype=torch.long, device=memory.states.device)
    steps_tok, steps_lp, steps_att = [], [], []
    alive = torch.ones(batch, dtype=torch.bool, device=prev.device)
    for t in range(int(limits.max())):
        logits, state, weights = decoder.step(prev, state, memory)
        lp, prev = torch.log_softmax(logits.float(), dim=-1).max(dim=-1)  # (batch,)
        steps_tok.append(prev)
        steps_lp.append(lp)
        steps_att.append(weights)
        alive = alive & (prev != EOS) & (t + 1 < limits.to(prev.device))
        if not bool(alive.any()):
            break
    tokens = torch.stack(steps_tok, dim=1).tolist()  # (batch, steps)
    logps = torch.stack(steps_lp, dim=1).cpu()
    attn = None if steps_att[0] is None else torch.stack(steps_att, dim=1).float().cpu()
    hyps = []
    for b in range(batch):
        seq = tokens[b][: int(limits[b])]
        n = seq.index(EOS) + 1 if EOS in seq else len(seq)
        logprob = float(logps[b, :n].sum())
        hyps.append(Hypothesis(seq[: n - 1] if EOS in seq else seq, logprob / n, logprob, EOS in seq,
                               None if attn is None else attn[b, :n]))
    return hyps


@torch.no_grad()
def beam_search(decoder: RNNDecoder, memory: Memory, beam: int, max_len: Tensor | int,
                length_penalty: float = 1.0, nbest: int = 1) -> list[list[Hypothesis]]:
    """Batched beam search; returns the ``nbest`` best hypotheses of each input, best first.

    Each step extends every live hypothesis, keeps the ``2*beam`` best candidates per input,
    moves those ending in the top ``beam`` to the finished list and keeps the best ``beam``
    others alive. An input is done when it has ``beam`` finished hypotheses or hits its limit.
    """
    if not 1 <= nbest <= beam:
        raise ValueError(f"nbest must be between 1 and the beam size {beam}, got {nbest}")
    batch, k = memory.states.size(0), beam
    device = memory.states.device
    limits = _limits(max_len, batch).tolist()
    memory = memory.repeat_interleave(k)  # (batch*k, ...)
    state = decoder.init_state(memory)
    prev = torch.full((batch * k,), BOS, dtype=torch.long, device=device)
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all hypotheses start equal: keep one so the first step does not repeat it
    history = torch.empty(batch * k, 0, dtype=torch.long, device=device)  # tokens of live hypotheses
    attn_history: Tensor | None = None  # (batch*k, steps, mem_len)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    done = [False] * batch
    base = (torch.arange(batch, device=device) * k).unsqueeze(1)  # (batch, 1) first row of each input

    def finalize(b: int, row: int, token: int | None, logprob: float, steps: int, ended: bool) -> None:
        tokens = history[row].tolist() + ([] if token is None else [token])
        att = None if attn_history is None else attn_history[row, :steps].float().cpu()
        finished[b].append(Hypothesis(tokens, logprob / steps ** length_penalty, logprob, ended, att))

    for t in range(max(limits)):
        logits, state, weights = decoder.step(prev, state, memory)
        logp = torch.log_softmax(logits.float(), dim=-1)  # (batch*k, vocab)
        vocab = logp.size(-1)
        cand = (scores.view(-1, 1) + logp).view(batch, k * vocab)
        top, idx = cand.topk(min(2 * k, k * vocab), dim=1)  # (batch, 2k)
        origin, token = idx // vocab, idx % vocab
        if weights is not None:  # the attention of this step, per row, appended before any finalizing
            step_att = weights.unsqueeze(1)  # (batch*k, 1, mem_len)
            attn_history = step_att if attn_history is None else torch.cat([attn_history, step_att], dim=1)
        # keep the best k candidates that do not end: rank them first, then the others
        is_eos = token == EOS
        positions = torch.arange(top.size(1), device=device).expand_as(top)
        order = torch.where(is_eos, positions + top.size(1), positions).argsort(dim=1)[:, :k]  # (batch, k)
        new_scores, new_origin, new_token = top.gather(1, order), origin.gather(1, order), token.gather(1, order)

        # finalize end tokens ranked within the top k, and every live hypothesis at its limit
        top_l, origin_l, eos_l = top.tolist(), origin.tolist(), is_eos.tolist()
        for b in range(batch):
            if done[b]:
                continue
            for j in range(k):
                if eos_l[b][j] and top_l[b][j] > float("-inf"):
                    finalize(b, b * k + origin_l[b][j], None, top_l[b][j], t + 1, True)
            if t + 1 >= limits[b]:
                for s, o, tok in zip(new_scores[b].tolist(), new_origin[b].tolist(), new_token[b].tolist()):
                    if s > float("-inf"):
                        finalize(b, b * k + o, tok, s, t + 1, False)
            if len(finished[b]) >= k or t + 1 >= limits[b]:
                done[b] = True
        if all(done):
            break

        rows = (base + new_origin).view(-1)  # (batch*k,) the hypothesis each survivor extends
        done_mask = torch.tensor(done, device=device).unsqueeze(1)
        scores = new_scores.masked_fill(done_mask, float("-inf"))
        state = state.select(rows)
        history = torch.cat([history.index_select(0, rows), new_token.view(-1, 1)], dim=1)
        if attn_history is not None:
            attn_history = attn_history.index_select(0, rows)
        prev = new_token.view(-1)
    return [sorted(hyps, key=lambda h: (h.finished, h.score), reverse=True)[:nbest] for hyps in finished]


def beam_for_nbest(beam: int, nbest: int) -> tuple[int, str]:
    """The beam that yields ``nbest`` hypotheses, and a note saying so when it is wider than ``beam``."""
    if nbest <= beam:
        return beam, ""
    return nbest, f"beam {beam} cannot give {nbest} alternatives: running beam {nbest}"


def search(decoder: RNNDecoder, memory: Memory, beam: int, max_len: Tensor | int, length_penalty: float = 1.0,
           nbest: int = 1) -> list[list[Hypothesis]]:
    """Greedy search for ``beam == 1``, beam search otherwise; n-best lists for every input."""
    if beam == 1:
        return [[h] for h in greedy_search(decoder, memory, max_len)]
    return beam_search(decoder, memory, beam, max_len, length_penalty, min(nbest, beam))


def _limits(max_len: Tensor | int, batch: int) -> Tensor:
    if isinstance(max_len, int):
        return torch.full((batch,), max_len, dtype=torch.long)
    return max_len.cpu().long().clamp(min=1)
