import pytest
from conftest import toy_pairs

from seq2seq.tokenizers import BOS, EOS, PAD, UNK, SubwordTokenizer, TokenizerError, train_sentencepiece


def test_special_ids_are_fixed_and_round_trip(tmp_path):
    texts = [s for s, _ in toy_pairs(300, 0)]
    tok = train_sentencepiece(texts, tmp_path / "spm.model", vocab_size=40)
    assert (tok.sp.pad_id(), tok.sp.unk_id(), tok.sp.bos_id(), tok.sp.eos_id()) == (PAD, UNK, BOS, EOS)
    ids = tok.encode(["the big cat sleeps"])
    assert all(i > EOS for i in ids[0])
    assert tok.decode(ids) == ["the big cat sleeps"]
    assert tok.decode([[BOS] + ids[0] + [EOS, PAD]]) == ["the big cat sleeps"]
    assert "".join(tok.pieces(ids[0])).replace("\u2581", " ").strip() == "the big cat sleeps"


def test_small_corpus_gets_smaller_vocabulary(tmp_path):
    tok = train_sentencepiece(["a b c"] * 10, tmp_path / "s.model", vocab_size=1000)
    assert len(tok) < 1000


def test_bad_model_file(tmp_path):
    (tmp_path / "x.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="x.model"):
        SubwordTokenizer(tmp_path / "x.model")
