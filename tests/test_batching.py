import random

import pytest

from seq2seq.data.batching import ParallelData, collate, token_batches
from seq2seq.tokenizers import BOS, EOS, PAD


def _lens(n, seed=0):
    rng = random.Random(seed)
    return [rng.randint(1, 30) for _ in range(n)], [rng.randint(1, 30) for _ in range(n)]


def test_every_pair_once_within_budget():
    src, tgt = _lens(2000)
    batches = token_batches(src, tgt, budget=500, seed=1, epoch=0)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(2000))
    for b in batches:
        padded = len(b) * (max(src[i] for i in b) + max(tgt[i] for i in b) + 1)
        assert padded <= 500 or len(b) == 1


def test_batches_are_length_buckets_not_fixed_counts():
    src, tgt = _lens(2000)
    batches = token_batches(src, tgt, budget=600, seed=1, epoch=0)
    sizes = {len(b) for b in batches}
    assert len(sizes) > 5  # short sentences come many to a batch, long ones few
    spread = [max(src[i] for i in b) - min(src[i] for i in b) for b in batches]
    assert sum(spread) / len(spread) <= 1.0  # similar lengths together


def test_deterministic_per_seed_and_epoch():
    src, tgt = _lens(500)
    assert token_batches(src, tgt, 300, 1, 0) == token_batches(src, tgt, 300, 1, 0)
    assert token_batches(src, tgt, 300, 1, 0) != token_batches(src, tgt, 300, 1, 1)
    assert token_batches(src, tgt, 300, 1, 0) != token_batches(src, tgt, 300, 2, 0)


def test_collate_adds_start_and_end_tokens():
    batch = collate([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]])
    assert batch.src.tolist() == [[5, 6, 7], [8, PAD, PAD]]
    assert batch.src_lens.tolist() == [3, 1]
    assert batch.tgt_in.tolist() == [[BOS, 9, 10, PAD], [BOS, 11, 12, 13]]
    assert batch.tgt_out.tolist() == [[9, 10, EOS, PAD], [11, 12, 13, EOS]]
    assert batch.num_tokens() == 4 + 7


def test_parallel_data_counts_tokens():
    data = ParallelData([[5, 6], [7]], [[8], [9, 10]], budget=100, seed=0)
    assert data.tokens_per_epoch() == 3 + 3 + 2
    assert sorted(i for b in data.epoch(0) for i in b) == [0, 1]


def _reference_batches(src_lens, tgt_lens, budget, seed, epoch):
    """The plan as first written, one sentence at a time in Python: the vectorised one must equal it."""
    rng = random.Random(seed * 1_000_003 + epoch)
    noise = [rng.random() for _ in src_lens]
    order = sorted(range(len(src_lens)), key=lambda i: (src_lens[i], tgt_lens[i], noise[i]))
    batches, current, max_src, max_tgt = [], [], 0, 0
    for i in order:
        s, t = max(max_src, src_lens[i]), max(max_tgt, tgt_lens[i] + 1)
        if current and (len(current) + 1) * (s + t) > budget:
            batches.append(current)
            current, s, t = [], src_lens[i], tgt_lens[i] + 1
        current.append(i)
        max_src, max_tgt = s, t
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


@pytest.mark.parametrize("n,budget,top", [(1, 50, 9), (7, 10, 9), (3000, 300, 60), (40_000, 6000, 120)])
def test_vectorised_plan_equals_the_sentence_by_sentence_one(n, budget, top):
    g = random.Random(n)
    src = [g.randint(1, top) for _ in range(n)]
    tgt = [g.randint(1, top) for _ in range(n)]
    for seed, epoch in ((1, 0), (7, 4)):
        assert token_batches(src, tgt, budget, seed, epoch) == _reference_batches(src, tgt, budget, seed, epoch)
    no_source = [0] * n  # captioning plans over target lengths alone
    assert token_batches(no_source, tgt, budget, 2, 1) == _reference_batches(no_source, tgt, budget, 2, 1)
