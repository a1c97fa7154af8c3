import pytest
import torch
from conftest import ATTENTIONS, CELLS, padded_batch, tiny_model

from seq2seq.models.memory import Memory
from seq2seq.search import beam_search, greedy_search, max_lengths
from seq2seq.tokenizers import BOS, EOS, PAD

LENS = [7, 3, 5, 1, 6]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_beam_one_equals_greedy(cell, attention):
    model = tiny_model(cell, attention, tgt_vocab=8, seed=3)
    src, lens = padded_batch(LENS)
    memory = model.encode(src, lens)
    greedy = greedy_search(model.decoder, memory, max_lengths(lens, 2.0, 3), length_penalty=0.6)
    beam = beam_search(model.decoder, memory, 1, max_lengths(lens, 2.0, 3), length_penalty=0.6)
    assert [h.tokens for h in greedy] == [b[0].tokens for b in beam]
    assert [h.finished for h in greedy] == [b[0].finished for b in beam]
    for g, (b,) in zip(greedy, beam):
        assert g.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert g.score == pytest.approx(b.score, abs=1e-4)  # the same length penalty


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_batched_beam_equals_one_at_a_time(attention):
    model = tiny_model("gru", attention, tgt_vocab=8, seed=4)
    src, lens = padded_batch(LENS)
    batched = beam_search(model.decoder, model.encode(src, lens), 4, 10, nbest=3)
    for i, n in enumerate(LENS):
        alone = beam_search(model.decoder, model.encode(src[i:i + 1, :n], lens[i:i + 1]), 4, 10, nbest=3)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in batched[i]], abs=1e-4)


def test_nbest_is_sorted_and_attention_matches_steps():
    model = tiny_model("gru", "luong_general", tgt_vocab=8, seed=5)
    src, lens = padded_batch(LENS)
    for hyps in beam_search(model.decoder, model.encode(src, lens), 5, 12, nbest=5):
        ranks = [(h.finished, h.score) for h in hyps]  # finished first, then by score
        assert ranks == sorted(ranks, reverse=True) and len(hyps) == 5
        for h in hyps:
            steps = len(h.tokens) + (1 if h.finished else 0)
            assert h.attention.shape[0] == steps
            assert h.score == pytest.approx(h.logprob / steps)
            assert EOS not in h.tokens


def test_unfinished_hypothesis_is_returned_at_the_limit():
    model = tiny_model("gru", "bahdanau", tgt_vocab=8, seed=6)
    with torch.no_grad():  # make the end token impossible
        model.decoder.out.bias[EOS] = -1e9
    src, lens = padded_batch([4, 2])
    memory = model.encode(src, lens)
    beam = beam_search(model.decoder, memory, 3, torch.tensor([5, 2]), nbest=2)
    for hyps, limit in zip(beam, (5, 2)):
        assert len(hyps) == 2 and all(not h.finished and len(h.tokens) == limit for h in hyps)
    greedy = greedy_search(model.decoder, memory, torch.tensor([5, 2]))
    assert [len(h.tokens) for h in greedy] == [5, 2] and not any(h.finished for h in greedy)
    assert greedy[0].tokens == beam_search(model.decoder, memory, 1, torch.tensor([5, 2]))[0][0].tokens


def test_length_penalty_prefers_longer_when_larger():
    model = tiny_model("gru", "luong_general", tgt_vocab=8, seed=7)
    src, lens = padded_batch(LENS)
    memory = model.encode(src, lens)
    short = beam_search(model.decoder, memory, 5, 15, length_penalty=0.0)
    long = beam_search(model.decoder, memory, 5, 15, length_penalty=2.0)
    assert sum(len(h[0].tokens) for h in long) >= sum(len(h[0].tokens) for h in short)


def test_max_lengths_and_bad_nbest():
    assert max_lengths(torch.tensor([1, 10]), 1.5, 2).tolist() == [3, 17]
    model = tiny_model()
    src, lens = padded_batch([3])
    with pytest.raises(ValueError, match="nbest"):
        beam_search(model.decoder, model.encode(src, lens), 2, 5, nbest=3)


class LoopingDecoder:
    """Next-token probabilities depend on the previous token alone: after <s>, A (0.6) or B (0.4);
    B always ends; A repeats itself (0.99) or turns into C (0.01), which repeats itself; neither
    A nor C ever ends."""

    A, B, C = 4, 5, 6

    def __init__(self):
        probs = torch.full((7, 7), 1e-9)
        probs[BOS, self.A], probs[BOS, self.B] = 0.6, 0.4
        probs[self.A, self.A], probs[self.A, self.C] = 0.99, 0.01
        probs[self.B, EOS] = 1.0
        probs[self.C, self.C] = 1.0
        self.logits = probs.log()

    def init_state(self, memory):
        return self

    def follow_beams(self, parents, kept):
        return self

    def step(self, prev, state, memory):
        return self.logits[prev], state, None


def test_a_finished_hypothesis_beats_an_endless_loop():
    memory = Memory(torch.zeros(1, 1, 1), torch.ones(1, 1, dtype=torch.bool), torch.zeros(1, 1))
    hyps = beam_search(LoopingDecoder(), memory, 2, 10, nbest=2)[0]
    # normalised, the unfinished A-loop scores about -0.06 and "B </s>" about -0.46: the loop must still lose
    assert hyps[0].finished and hyps[0].tokens == [LoopingDecoder.B] and hyps[0].score == pytest.approx(-0.46, abs=0.01)
    assert not hyps[1].finished and hyps[1].tokens == [LoopingDecoder.A] * 10 and hyps[1].score > hyps[0].score


class RecordingDecoder:
    """Wraps a decoder and records the hypotheses and the memory rows of each step."""

    def __init__(self, decoder):
        self.decoder, self.rows, self.memory_rows = decoder, [], []

    def init_state(self, memory):
        return self.decoder.init_state(memory)

    def step(self, prev, state, memory):
        self.rows.append(prev.size(0))
        self.memory_rows.append(memory.states.size(0))
        return self.decoder.step(prev, state, memory)


def test_finished_inputs_leave_the_batch():
    model = tiny_model("gru", "bahdanau", tgt_vocab=8, seed=6)
    with torch.no_grad():  # no hypothesis ends: each input runs to its own limit
        model.decoder.out.bias[EOS] = -1e9
    src, lens = padded_batch([4, 2, 3])
    recorder = RecordingDecoder(model.decoder)
    hyps = beam_search(recorder, model.encode(src, lens), 3, torch.tensor([5, 2, 3]), nbest=3)
    # the first step once per input, then 3 inputs x beam 3, then the inputs at limits 2 and 3 drop out
    assert recorder.rows == [3, 9, 6, 3, 3]
    assert recorder.memory_rows == [3, 3, 2, 1, 1]  # one memory row per live input, never copied per hypothesis
    assert [len(h[0].tokens) for h in hyps] == [5, 2, 3]
    alone = beam_search(model.decoder, model.encode(src[:1, :4], lens[:1]), 3, 5, nbest=3)[0]
    assert [h.tokens for h in alone] == [h.tokens for h in hyps[0]]
    assert [h.score for h in alone] == pytest.approx([h.score for h in hyps[0]], abs=1e-5)



@pytest.mark.parametrize("search", [greedy_search, lambda decoder, memory, limit: [
    h for nbest in beam_search(decoder, memory, 3, limit, nbest=3) for h in nbest]])
def test_padding_and_the_start_token_are_never_outputs(search):
    model = tiny_model("gru", "bahdanau", tgt_vocab=8, seed=2)
    with torch.no_grad():  # the untrained model would rather say nothing at all
        model.decoder.out.bias[PAD] = model.decoder.out.bias[BOS] = 50.0
    src, lens = padded_batch([4, 2])
    hyps = search(model.decoder, model.encode(src, lens), 5)
    assert all(PAD not in h.tokens and BOS not in h.tokens and h.tokens for h in hyps)


@pytest.mark.parametrize("attention, fp32", [("bahdanau", False), ("bahdanau", True), ("luong_general", True),
                                             ("luong_dot", False), ("luong_dot", True)])
def test_search_casts_the_memory_once_under_autocast_and_finds_the_same(monkeypatch, attention, fp32):
    model = tiny_model("gru", attention, seed=3, attention_fp32=fp32).eval()
    src, lens = padded_batch([5, 3, 4])

    def searched() -> list:
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            memory = model.encode(src, lens)
            assert memory.states.dtype == torch.float32  # the encoder's GRU runs in fp32 under autocast
            beams = beam_search(model.decoder, memory, 3, 6, nbest=3)
            greedy = [greedy_search(model.decoder, memory, 6)]
            return [[(h.tokens, h.score, h.attention.dtype, h.attention.tolist()) for h in b] for b in beams + greedy]

    with torch.autocast("cpu", torch.bfloat16):
        assert model.encode(src, lens).for_search().states.dtype == torch.bfloat16
    cast_once = searched()
    monkeypatch.setattr(Memory, "for_search", lambda self: self)  # each step's attention casts the states
    assert searched() == cast_once
