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
from seq2seq.tokenizers import BOS, EOS, PAD


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
def greedy_search(decoder: RNNDecoder, memory: Memory, max_len: Tensor | int,
                  length_penalty: float = 1.0) -> list[Hypothesis]:
    """The most probable token at each step, for a whole batch at once; scored like a beam's
    hypothesis (the length penalty changes only the score, never the choice)."""
    batch = memory.states.size(0)
    limits = _limits(max_len, batch)
    state = decoder.init_state(memory)  # keys from the encoder's own output, as in training
    memory = memory.for_search()
    prev = torch.full((batch,), BOS, dtype=torch.long, device=memory.states.device)
    steps_tok, steps_lp, steps_att = [], [], []
    alive = torch.ones(batch, dtype=torch.bool, device=prev.device)
    for t in range(int(limits.max())):
        logits, state, weights = decoder.step(prev, state, memory)
        lp, prev = _never_outputs(torch.log_softmax(logits, dim=-1, dtype=torch.float32)).max(dim=-1)  # (batch,)
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
        hyps.append(Hypothesis(seq[: n - 1] if EOS in seq else seq, logprob / n ** length_penalty, logprob,
                               EOS in seq, None if attn is None else attn[b, :n]))
    return hyps


@torch.no_grad()
def beam_search(decoder: RNNDecoder, memory: Memory, beam: int, max_len: Tensor | int,
                length_penalty: float = 1.0, nbest: int = 1) -> list[list[Hypothesis]]:
    """Batched beam search; returns the ``nbest`` best hypotheses of each input, best first.

    Each step extends every live hypothesis with one ``topk`` over all of an input's
    candidates, keeps the ``2*beam`` best, records those ending in the top ``beam`` as
    finished and keeps the best ``beam`` others alive. An input is done when ``beam`` of its
    hypotheses have ended or it hits its limit; its rows then leave the batch. Everything
    stays in tensors until the search ends: live scores, back-pointers, tokens, attention and
    the finished hypotheses, which are ranked and traced back once, at the end.
    """
    if not 1 <= nbest <= beam:
        raise ValueError(f"nbest must be between 1 and the beam size {beam}, got {nbest}")
    batch, k, device = memory.states.size(0), beam, memory.states.device
    limits = _limits(max_len, batch).to(device)
    if int(limits.max()) < 1:
        return [[] for _ in range(batch)]
    state = decoder.init_state(memory)  # one row per input: the first step is alike for its k hypotheses
    memory = memory.for_search()
    prev = torch.full((batch,), BOS, dtype=torch.long, device=device)
    scores = torch.full((batch, k), float("-inf"), device=device)  # (live, k) summed log-probabilities
    scores[:, 0] = 0.0  # all hypotheses start equal: keep one so the first step does not repeat it
    inputs = torch.arange(batch, device=device)  # (live,) the input each block of k rows searches for
    n_ended = torch.zeros(batch, dtype=torch.long, device=device)  # (live,)
    trail = _Trail()
    ends: list[_Ends] = []
    for t in range(int(limits.max())):
        logits, state, weights = decoder.step(prev, state, memory)
        if t == 0:  # branch out: k rows per input from here on, all reading the input's one memory row
            rows = torch.arange(batch, device=device).repeat_interleave(k)  # (batch*k,)
            logits = logits.index_select(0, rows)
            state = state.follow_beams(rows, None)
            weights = None if weights is None else weights.index_select(0, rows)
        trail.attention.append(weights)  # (rows before this step's selection, mem_len) or None
        logp = _never_outputs(torch.log_softmax(logits, dim=-1, dtype=torch.float32))  # (live*k, vocab)
        live, vocab = scores.shape[0], logp.size(-1)
        cand = logp.add_(scores.view(-1, 1)).view(live, k * vocab)  # every extension's summed log-probability
        top, idx = cand.topk(min(2 * k, k * vocab), dim=1)  # (live, 2k)
        parent = idx // vocab + (torch.arange(live, device=device) * k).unsqueeze(1)  # the rows they extend
        token = idx % vocab
        # keep the best k candidates that do not end: rank them first, then the others
        is_eos = token == EOS
        positions = torch.arange(top.size(1), device=device).expand_as(top)
        order = torch.where(is_eos, positions + top.size(1), positions).argsort(dim=1)[:, :k]  # (live, k)
        new_scores, new_parent, new_token = top.gather(1, order), parent.gather(1, order), token.gather(1, order)

        # end tokens ranked within the top k finish; at its limit, every live hypothesis does
        owner = inputs.unsqueeze(1).expand(live, k)
        ended = is_eos[:, :k] & (top[:, :k] > float("-inf"))
        at_limit = (t + 1 >= limits[inputs]).unsqueeze(1)  # (live, 1)
        cut = at_limit & (new_scores > float("-inf"))
        ends.append(_Ends.of(t, owner, parent[:, :k], None, top[:, :k], ended))
        ends.append(_Ends.of(t, owner, new_parent, new_token, new_scores, cut))
        n_ended = n_ended + ended.sum(dim=1)
        done = (n_ended >= k) | at_limit.squeeze(1)  # (live,)
        if bool(done.all()):
            break
        keep = None
        if bool(done.any()):  # finished inputs leave the batch
            keep = (~done).nonzero().squeeze(1)  # (live',)
            new_scores, new_parent, new_token = new_scores[keep], new_parent[keep], new_token[keep]
            inputs, n_ended = inputs[keep], n_ended[keep]
            memory = memory.index_select(keep)
        rows = new_parent.view(-1)  # (live'*k,) the hypothesis each survivor extends
        state = state.follow_beams(rows, keep)
        prev = new_token.view(-1)
        scores = new_scores
        trail.tokens.append(prev)
        trail.parents.append(rows)
    return _best(_Ends.cat(ends), trail, batch, nbest, length_penalty)


@torch.no_grad()
def sample(decoder: RNNDecoder, memory: Memory, k: int, max_len: int) -> list[Hypothesis]:
    """``k`` outputs per input drawn from the model's distribution a token at a time (ancestral
    sampling), for sequence-level training: input b's samples are rows b*k .. b*k+k-1. The
    draws use torch's global generator, which checkpoints save: a resumed run draws alike."""
    rows = torch.arange(memory.states.size(0), device=memory.states.device).repeat_interleave(k)
    memory = memory.index_select(rows)  # (batch*k, ...) each input's memory once per sample
    n = rows.numel()
    state = decoder.init_state(memory)
    memory = memory.for_search()
    prev = torch.full((n,), BOS, dtype=torch.long, device=rows.device)
    steps_tok, steps_lp = [], []
    alive = torch.ones(n, dtype=torch.bool, device=rows.device)
    for _ in range(max_len):
        logits, state, _ = decoder.step(prev, state, memory)
        logp = torch.log_softmax(_never_outputs(logits.float()), dim=-1)  # (batch*k, vocab), renormalised
        prev = torch.multinomial(logp.exp(), 1).squeeze(1)  # (batch*k,)
        steps_tok.append(prev)
        steps_lp.append(logp.gather(1, prev.unsqueeze(1)).squeeze(1) * alive)  # nothing after the end token
        alive = alive & (prev != EOS)
        if not bool(alive.any()):
            break
    tokens, logps = torch.stack(steps_tok, dim=1).tolist(), torch.stack(steps_lp, dim=1).sum(dim=1).tolist()
    hyps = []
    for seq, logprob in zip(tokens, logps):
        ended = EOS in seq
        seq = seq[: seq.index(EOS)] if ended else seq
        hyps.append(Hypothesis(seq, logprob / (len(seq) + ended), logprob, ended, None))
    return hyps


class _Trail:
    """Per step, the tokens and back-pointers of the live hypotheses, and the attention of each row."""

    def __init__(self) -> None:
        self.tokens: list[Tensor] = []  # step s: (rows after step s,) the token each live row took
        self.parents: list[Tensor] = []  # step s: (rows after step s,) its row before step s
        self.attention: list[Tensor | None] = []  # step s: (rows before step s, mem_len)

    def trace(self, steps: Tensor, rows: Tensor) -> tuple[Tensor, Tensor | None]:
        """Tokens (n, max steps) and attention (n, max steps + 1, mem_len) of hypotheses that
        extended row ``rows[i]`` (numbered as before step ``steps[i]``) at step ``steps[i]``."""
        n, last = rows.numel(), int(steps.max()) if rows.numel() else 0
        tokens = torch.zeros(n, last, dtype=torch.long, device=rows.device)
        first = self.attention[0]
        attention = None if first is None else first.new_zeros(n, last + 1, first.size(-1))
        cur = rows.clone()
        for s in range(last, -1, -1):
            through = steps > s  # hypotheses whose row ``cur`` is numbered as after step s
            if s < last:
                tokens[through, s] = self.tokens[s][cur[through]]
                cur[through] = self.parents[s][cur[through]]
            if attention is not None:
                at = steps >= s
                attention[at, s] = self.attention[s][cur[at]]
        return tokens, attention


@dataclass
class _Ends:
    """Finished hypotheses, one entry each: the input, the step it ended at, the row it extended
    (numbered as before that step), its last token (-1 for the end token) and its log-probability."""

    inputs: Tensor
    steps: Tensor
    rows: Tensor
    last: Tensor
    logprob: Tensor

    @staticmethod
    def of(step: int, owner: Tensor, parent: Tensor, token: Tensor | None, logprob: Tensor, mask: Tensor) -> "_Ends":
        last = torch.full_like(parent, -1) if token is None else token
        return _Ends(owner[mask], torch.full_like(owner[mask], step), parent[mask], last[mask], logprob[mask])

    @staticmethod
    def cat(ends: list["_Ends"]) -> "_Ends":
        return _Ends(*(torch.cat(field) for field in zip(*(e.astuple() for e in ends))))

    def astuple(self) -> tuple[Tensor, ...]:
        return self.inputs, self.steps, self.rows, self.last, self.logprob


def _best(ends: _Ends, trail: _Trail, batch: int, nbest: int, length_penalty: float) -> list[list[Hypothesis]]:
    """Rank each input's finished hypotheses (ended ones first, then by score) and trace the best back."""
    inputs, steps, last, logprob = ends.inputs.tolist(), ends.steps.tolist(), ends.last.tolist(), ends.logprob.tolist()
    per_input: list[list[tuple[bool, float, int]]] = [[] for _ in range(batch)]
    for i, b in enumerate(inputs):
        per_input[b].append((last[i] < 0, logprob[i] / (steps[i] + 1) ** length_penalty, i))
    chosen = [sorted(c, key=lambda r: (r[0], r[1]), reverse=True)[:nbest] for c in per_input]
    picks = torch.tensor([i for c in chosen for *_, i in c], dtype=torch.long, device=ends.rows.device)
    tokens, attention = trail.trace(ends.steps[picks], ends.rows[picks])
    tokens_l = tokens.tolist()
    attention = None if attention is None else attention.float().cpu()
    out, j = [], 0
    for c in chosen:
        hyps = []
        for ended, score, i in c:
            n = steps[i] + 1
            seq = tokens_l[j][: n - 1] + ([] if ended else [last[i]])
            hyps.append(Hypothesis(seq, score, logprob[i], ended, None if attention is None else attention[j, :n]))
            j += 1
        out.append(hyps)
    return out


def beam_for_nbest(beam: int, nbest: int) -> tuple[int, str]:
    """The beam that yields ``nbest`` hypotheses, and a note saying so when it is wider than ``beam``."""
    if nbest <= beam:
        return beam, ""
    return nbest, f"beam {beam} cannot give {nbest} alternatives: running beam {nbest}"


def search(decoder: RNNDecoder, memory: Memory, beam: int, max_len: Tensor | int, length_penalty: float = 1.0,
           nbest: int = 1) -> list[list[Hypothesis]]:
    """Greedy search for ``beam == 1``, beam search otherwise; n-best lists for every input."""
    if beam == 1:
        return [[h] for h in greedy_search(decoder, memory, max_len, length_penalty)]
    return beam_search(decoder, memory, beam, max_len, length_penalty, min(nbest, beam))


def _never_outputs(scores: Tensor) -> Tensor:
    """(rows, vocab) log-probabilities or logits with padding and the start token at -inf (in
    place): the decoder has an output for them, but neither is ever a token of an output.
    Greedy and beam search mask the model's log-probabilities (their scores stay the model's);
    sampling masks logits and draws from what is left."""
    scores[:, PAD] = float("-inf")  # scalar fills: no index tensor copied to the device each step
    scores[:, BOS] = float("-inf")
    return scores


def _limits(max_len: Tensor | int, batch: int) -> Tensor:
    if isinstance(max_len, int):
        return torch.full((batch,), max_len, dtype=torch.long)
    return max_len.cpu().long().clamp(min=1)
