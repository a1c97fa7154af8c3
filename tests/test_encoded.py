"""The user's files read on demand, and encoded corpora memory-mapped from the cache: the same
splits, pairs and batches as the in-memory path."""

import pickle
import random

import numpy as np
import pytest
import torch

from seq2seq.data import encoded
from seq2seq.data.batching import ParallelData
from seq2seq.data.corpora import CorpusError, group_references, load_corpus, normalise, split_corpus
from seq2seq.data.encoded import TokenArray, encode_corpus
from seq2seq.data.parallel_files import read_pairs
from seq2seq.experiment import spread
from seq2seq.tokenizers import train_sentencepiece


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQ2SEQ_CACHE", str(tmp_path / "cache"))


def toy_pairs(n: int = 3000, seed: int = 0) -> list[tuple[str, str]]:
    """Pairs with repeats, several translations per source, blank sides and unnormalised text."""
    rng = random.Random(seed)
    words = "the a cat dog sees eats big small red house tree runs".split()
    pairs = []
    for _ in range(n):
        src = " ".join(rng.choices(words, k=rng.randint(1, 12)))
        pairs.append((src, " ".join(reversed(src.split())) + rng.choice(["", " !", " ."])))
    pairs += pairs[:200] + [(" e\u0301t\u00e9 ", "summer"), ("", "empty"), ("empty", "  ")]
    rng.shuffle(pairs)
    return pairs


def write_tsv(path, pairs, newline="\n"):
    path.write_text("".join(f"{s}\t{t}{newline}" for s, t in pairs), encoding="utf-8")
    return path


def reference_encode(pairs, src_tok, tgt_tok, max_len):
    """The in-memory path as it was: lists of ids, filtered by length."""
    src, tgt = src_tok.encode([s for s, _ in pairs]), tgt_tok.encode([t for _, t in pairs])
    keep = [i for i in range(len(pairs)) if 0 < len(src[i]) <= max_len and 0 < len(tgt[i]) <= max_len]
    return [src[i] for i in keep], [tgt[i] for i in keep]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_a_split_file_matches_the_in_memory_split(tmp_path, newline):
    pairs = toy_pairs()
    corpus = load_corpus("files", train=str(write_tsv(tmp_path / "train.tsv", pairs, newline)))
    expected = split_corpus("files-en-fr", pairs)
    assert list(corpus.train) == expected.train and len(corpus.train) == len(expected.train)
    assert corpus.valid == expected.valid and corpus.test == expected.test
    assert corpus.train[5] == expected.train[5]


def test_the_split_of_a_file_is_cached(tmp_path, monkeypatch, capsys):
    from seq2seq.data import parallel_files

    path = write_tsv(tmp_path / "train.tsv", toy_pairs(800))
    first = load_corpus("files", train=str(path))
    real_split = parallel_files.split_pairs
    monkeypatch.setattr(parallel_files, "split_pairs", lambda pairs: pytest.fail("split again"))
    again = load_corpus("files", train=str(path))
    assert list(again.train) == list(first.train) and again.valid == first.valid and again.test == first.test
    monkeypatch.setattr(parallel_files, "split_pairs", real_split)
    (folder,) = (tmp_path / "cache" / "splits").iterdir()
    (folder / "train.npy").write_bytes(b"junk")
    assert list(load_corpus("files", train=str(path)).train) == list(first.train)
    assert "is damaged" in capsys.readouterr().out
    write_tsv(path, toy_pairs(800)[:700])  # the file changed: split again
    assert len(load_corpus("files", train=str(path)).train) < len(first.train)


def test_aligned_files_and_explicit_splits_match_the_in_memory_path(tmp_path):
    pairs = toy_pairs(500)
    (tmp_path / "a.en").write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    (tmp_path / "a.fr").write_text("".join(t + "\n" for _, t in pairs), encoding="utf-8")
    valid = write_tsv(tmp_path / "v.tsv", pairs[:20])
    corpus = load_corpus("files", train=f"{tmp_path / 'a.en'},{tmp_path / 'a.fr'}", valid=str(valid))
    kept = [(normalise(s), normalise(t)) for s, t in pairs]
    assert list(corpus.train) == [(s, t) for s, t in kept if s and t]
    assert corpus.valid == group_references(pairs[:20]) and corpus.test == []


def test_bad_lines_are_named_or_skipped(tmp_path, capsys):
    path = tmp_path / "bad.tsv"
    path.write_bytes(b"a\tb\nno tab here\nc\xe9\td\n\ne\tf")  # no final newline
    with pytest.raises(CorpusError, match=r"bad.tsv:2: expected source<TAB>target"):
        read_pairs(str(path))
    path.write_bytes(b"a\tb\nc\xe9\td\n\ne\tf")
    with pytest.raises(CorpusError, match=r"bad.tsv:2: not UTF-8 \(byte 0xe9 at column 2\)"):
        read_pairs(str(path))
    assert list(read_pairs(str(path), skip_bad=True)) == [("a", "b"), ("e", "f")]
    assert "skipped 1 line(s) not UTF-8 (line 2)" in capsys.readouterr().err
    (tmp_path / "empty.tsv").write_bytes(b"")
    assert list(read_pairs(str(tmp_path / "empty.tsv"))) == []


def test_spread_keeps_pairs_from_files_on_demand(tmp_path):
    pairs = [(f"s{i}", f"t{i}") for i in range(1000)]
    lazy = read_pairs(str(write_tsv(tmp_path / "p.tsv", pairs)))
    picked = spread(lazy, 37)
    assert hasattr(picked, "take") and list(picked) == spread(pairs, 37)
    assert spread(lazy, None) is lazy



def test_a_word_limit_keeps_pairs_from_files_on_demand(tmp_path):
    from seq2seq.tasks.translation import short_pairs

    pairs = [(" ".join(["w"] * (i % 5 + 1)), " ".join(["v"] * (i % 3 + 1))) for i in range(100)]
    lazy = read_pairs(str(write_tsv(tmp_path / "p.tsv", pairs)))
    kept = short_pairs(lazy, 2)
    short = [(s, t) for s, t in pairs if len(s.split()) <= 2 and len(t.split()) <= 2]
    assert hasattr(kept, "take") and list(kept) == short_pairs(pairs, 2) == short
    assert short_pairs(lazy, None) is lazy


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spm")
    pairs = toy_pairs()
    src = train_sentencepiece([s for s, _ in pairs], folder / "src.model", vocab_size=40)
    tgt = train_sentencepiece([t for _, t in pairs], folder / "tgt.model", vocab_size=40)
    return src, tgt


def test_the_encoded_corpus_yields_the_batches_of_the_in_memory_path(tmp_path, tokenizers):
    src_tok, tgt_tok = tokenizers
    corpus = load_corpus("files", train=str(write_tsv(tmp_path / "train.tsv", toy_pairs())))
    enc = encode_corpus(corpus.train, src_tok, tgt_tok, max_len=10)
    assert enc.fresh and f"{len(enc.src):,} training pairs encoded" in enc.describe()
    mapped = ParallelData(enc.src, enc.tgt, budget=300, seed=3)
    assert isinstance(mapped.src.ids, np.memmap) and mapped.src.ids.dtype == np.uint16
    lists = reference_encode(split_corpus("x", toy_pairs()).train, src_tok, tgt_tok, max_len=10)
    memory = ParallelData(*lists, budget=300, seed=3)
    assert 0 < len(mapped) == len(memory) < len(corpus.train)  # long pairs were dropped
    assert mapped.tokens_per_epoch() == memory.tokens_per_epoch()
    for epoch in (0, 1, 7):
        plan = mapped.epoch(epoch)
        assert plan == memory.epoch(epoch)
        for indices in plan[:5] + plan[-5:]:
            a, b = mapped.batch(indices), memory.batch(indices)
            for name in ("src", "src_lens", "tgt_in", "tgt_out"):
                assert torch.equal(getattr(a, name), getattr(b, name))


def test_worker_processes_encode_the_chunks_in_order(tmp_path, tokenizers, monkeypatch):
    """Chunks encoded by a pool of workers (from files, each worker mapping them itself, and from
    lists) give exactly the ids and order of encoding everything at once."""
    src_tok, tgt_tok = tokenizers
    pools = []

    class CountedPool(encoded.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pools.append(self)

    monkeypatch.setattr(encoded, "ProcessPoolExecutor", CountedPool)
    monkeypatch.setattr(encoded, "CHUNK", 97)  # about 30 chunks, several in flight per worker
    monkeypatch.setattr(encoded.os, "sched_getaffinity", lambda pid: {0, 1})
    from_files = load_corpus("files", train=str(write_tsv(tmp_path / "train.tsv", toy_pairs()))).train
    in_memory = split_corpus("x", toy_pairs()).train
    for pairs in (from_files, in_memory):
        enc = encode_corpus(pairs, src_tok, tgt_tok, max_len=10)
        src, tgt = reference_encode(list(pairs), src_tok, tgt_tok, max_len=10)
        assert [enc.src[i] for i in range(len(enc.src))] == src and [enc.tgt[i] for i in range(len(enc.tgt))] == tgt
        assert enc.meta["pairs"] + enc.meta["dropped"] == len(pairs)
    assert len(pools) == 2


def test_a_chunk_of_a_file_travels_as_its_spans_and_notices_a_changed_file(tmp_path):
    path = write_tsv(tmp_path / "train.tsv", toy_pairs(50))
    pairs = read_pairs(str(path))
    chunk = pairs.chunk(10, 20)
    assert list(pickle.loads(pickle.dumps(chunk))) == [pairs[i] for i in range(10, 20)]
    assert len(pickle.dumps(chunk)) < len(pickle.dumps(pairs))  # only the chunk's spans travel
    path.write_text(path.read_text(encoding="utf-8") + "more\tlines\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="changed while it was being read"):
        pickle.loads(pickle.dumps(chunk))


def test_an_encoded_corpus_is_written_once_and_rewritten_when_damaged(tmp_path, tokenizers, monkeypatch):
    src_tok, tgt_tok = tokenizers
    pairs = split_corpus("x", toy_pairs(300)).train
    enc = encode_corpus(pairs, src_tok, tgt_tok, max_len=50)
    first = [(np.array(a.ids), np.array(a.offsets)) for a in (enc.src, enc.tgt)]
    del enc
    real_encode = encoded._encode
    monkeypatch.setattr(encoded, "_encode", lambda *a: pytest.fail("encoded again"))
    again = encode_corpus(pairs, src_tok, tgt_tok, max_len=50)
    assert not again.fresh and "training pairs read from the cache" in again.describe()
    assert [again.src[i] for i in range(len(pairs))] == src_tok.encode([s for s, _ in pairs])
    (folder,) = (tmp_path / "cache" / "encoded").iterdir()
    del again
    with open(folder / "tgt.ids", "r+b") as f:
        f.truncate(10)  # a disk that filled up under another tool (no map of it is open)
    monkeypatch.setattr(encoded, "_encode", real_encode)
    fixed = encode_corpus(pairs, src_tok, tgt_tok, max_len=50)
    assert fixed.fresh and np.array_equal(fixed.tgt.ids, first[1][0]) and np.array_equal(fixed.tgt.offsets, first[1][1])
    assert encode_corpus(pairs[:-1], src_tok, tgt_tok, max_len=50).src.ids.size < first[0][0].size  # other pairs
    del fixed
    for gone in ("src.offsets.npy", "tgt.ids", "meta.json"):  # a file gone from a whole folder
        (folder / gone).unlink()
        again = encode_corpus(pairs, src_tok, tgt_tok, max_len=50)
        assert again.fresh and np.array_equal(again.src.offsets, first[0][1]), gone
        del again


def test_token_arrays_from_lists():
    arr = TokenArray.from_lists([[5, 6], [], [7, 8, 9]])
    assert len(arr) == 3 and arr[0] == [5, 6] and arr[1] == [] and arr[2] == [7, 8, 9]
    assert arr.lengths.tolist() == [2, 0, 3]
