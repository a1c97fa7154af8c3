import pytest
import sacrebleu

from seq2seq.metrics import bleu, bleu_by_length, chrf


def test_multi_reference_bleu_matches_sacrebleu():
    hyps = ["the cat sat on the mat", "a dog barks", "hello there"]
    refs = [["the cat sat on the mat", "a cat sat on a mat"], ["the dog barks"], ["hi there", "hello there", "hey"]]
    streams = [["the cat sat on the mat", "the dog barks", "hi there"],
               ["a cat sat on a mat", None, "hello there"], [None, None, "hey"]]
    expected = sacrebleu.corpus_bleu(hyps, streams).score
    score = bleu(hyps, refs)
    assert score.score == pytest.approx(expected)
    assert "nrefs:var" in score.signature and "tok:13a" in score.signature and "case:mixed" in score.signature
    assert chrf(hyps, refs).score > 0


def test_more_references_never_lower_bleu():
    hyps = ["je suis très content de te voir", "il fait beau ce matin à Paris"]
    first = ["je suis très heureux de te voir", "il fait chaud ce matin à Paris"]
    one = bleu(hyps, [[first[0]], [first[1]]]).score
    two = bleu(hyps, [[first[0], hyps[0]], [first[1], hyps[1]]]).score
    assert two > one and two == pytest.approx(100.0)


def test_checks_inputs():
    with pytest.raises(ValueError, match="2 hypotheses but 1"):
        bleu(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="at least one reference"):
        bleu(["a"], [[]])


def test_bleu_by_length_buckets():
    hyps = ["a b", "a b c d e f g", "x"]
    refs = [["a b"], ["a b c d e f g"], ["y"]]
    out = bleu_by_length(hyps, refs, [2, 7, 1])
    assert list(out) == ["1-5", "6-10"]
    assert out["1-5"][1] == 2 and out["6-10"] == (pytest.approx(100.0), 1)
    assert bleu_by_length(hyps, refs, [0, 7, 1]) == {"1-5": (0.0, 1), "6-10": (pytest.approx(100.0), 1)}
