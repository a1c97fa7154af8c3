"""End to end on the user's own files: a tiny run, its folder, results and the translate tool."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from seq2seq.tasks.translator import Translator
from seq2seq.train.checkpoints import CheckpointError

ROOT = Path(__file__).resolve().parent.parent


def test_run_folder_holds_what_a_user_needs(toy_run):
    for name in ("config.yaml", "tokenizers/src.model", "tokenizers/tgt.model", "checkpoints/best.pt",
                 "checkpoints/last.pt", "metrics.jsonl"):
        assert (toy_run / name).exists(), name


def test_translator_translates_in_order_with_empty_lines(toy_run):
    translator = Translator.load(toy_run, device="cpu")
    out = translator.translate(["the cat", "", "   ", "a big red dog sleeps"], beam=3, nbest=2)
    assert [t.source for t in out] == ["the cat", "", "   ", "a big red dog sleeps"]
    assert out[1].text == "" and out[2].text == "" and out[1].candidates == []
    assert len(out[0].candidates) == 2 and out[0].candidates[0].score >= out[0].candidates[1].score


def _translate(args, stdin):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "translate.py"), *args], input=stdin,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_batch_mode_keeps_one_line_per_input_line(toy_run):
    lines = ["the cat eats", "", "a dog", "\u00e9l\u00e8ve\tx", "the small bird sees a fish", ""]
    proc = _translate([str(toy_run), "--beam", "2", "--batch-size", "2"], "\n".join(lines) + "\n")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.split("\n")
    assert out[-1] == "" and len(out) - 1 == len(lines)
    assert out[1] == "" and out[5] == ""
    assert all(out[i] for i in (0, 2, 4))


def test_batch_mode_jsonl_has_scores_and_nbest(toy_run):
    proc = _translate([str(toy_run), "--format", "jsonl", "--nbest", "3"], "the dog sleeps\n\n")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 2 and rows[0]["source"] == "the dog sleeps"
    assert len(rows[0]["nbest"]) == 3 and rows[0]["translation"] == rows[0]["nbest"][0]["translation"]
    assert rows[1] == {"source": "", "translation": "", "score": None, "nbest": []}


def _repl(run_dir: Path, keystrokes: bytes) -> tuple[int, str]:
    """Drive the REPL through a pseudo-terminal (it needs one); its exit code and screen."""
    import os
    import pty

    pid, fd = pty.fork()
    if pid == 0:
        os.execv(sys.executable, [sys.executable, str(ROOT / "tools" / "translate.py"), str(run_dir)])
    os.write(fd, keystrokes)
    output = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode("utf-8", "replace")


def test_translating_imports_only_what_translation_needs(toy_run):
    code = ("import sys, runpy; sys.argv = ['seq2seq-translate', sys.argv[1]]\n"
            "try:\n    runpy.run_module('seq2seq.cli.translate', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torchvision', 'matplotlib', 'wandb', 'sacrebleu') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, str(toy_run)], input="the cat\n", capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] and out[-1] == "[]"  # a translation, then no image, plotting or tracking library loaded


def test_training_imports_no_plotting_or_tracking_library():
    """matplotlib (half a second) is imported when W&B wants a figure; wandb when it is on."""
    code = ("import sys, seq2seq.tasks.translation, seq2seq.tasks.captioning, seq2seq.train.trainer\n"
            "print(sorted(m for m in ('matplotlib', 'wandb') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_repl_accepts_commands_and_quits(toy_run):
    code, text = _repl(toy_run, b":beam 2\n:nbest 2\n:align\nthe cat sleeps\n\n")
    assert code == 0, text
    assert "beam 2, nbest 2" in text and "alignment on" in text and "1. " in text and "->" in text


def test_repl_survives_odd_input(toy_run):
    code, text = _repl(toy_run, ":beam ²\n:bema 3\n:)\n".encode() + b"the \xff cat\n:beam 0\nthe cat\n\n")
    assert code == 0, text
    assert ":beam takes a whole number of at least 1, not '²'" in text and "no command :bema" in text
    assert "not UTF-8 text (byte 0xff)" in text and "not '0'" in text and "Traceback" not in text
    assert "commands:" not in text  # ":)" was translated, not taken for a command (which printed the help)


def test_repl_says_which_beam_runs(toy_run):
    code, text = _repl(toy_run, b":nbest 3\n:beam 1\nthe cat\n\n")
    assert code == 0, text
    assert "beam 1, nbest 3 (beam 1 cannot give 3 alternatives: running beam 3" in text and "3. " in text


def test_batch_size_sets_the_search_batches(toy_run):
    import io

    from seq2seq.cli import translate as cli

    translator = Translator.load(toy_run, device="cpu")
    sizes, search = [], translator._search
    translator._search = lambda src, *rest: sizes.append(src.size(0)) or search(src, *rest)
    out = io.StringIO()
    cli.batch_mode(translator, cli.parse_args([str(toy_run), "--batch-size", "100"]), io.StringIO("the cat\n" * 150),
                   out)
    assert sizes == [100, 50] and out.getvalue().count("\n") == 150


def test_bleu_by_source_length_counts_words(toy_run):
    from seq2seq.data.corpora import Example
    from seq2seq.tasks.translation import evaluate

    translator = Translator.load(toy_run, device="cpu")
    examples = [Example("the bigger cats", ["les plus grands chats"]), Example("a dog sleeps", ["un chien dort"])]
    assert len(translator.src_tok.encode([examples[0].src])[0]) == 7  # more subword pieces than words
    by_length = evaluate(translator, examples, beam=1)["by_length"]
    assert {name: n for name, (_, n) in by_length.items()} == {"1-5": 2}


@pytest.mark.parametrize("kind", ["missing", "corrupt", "foreign", "folder"])
def test_bad_checkpoint_is_one_line(tmp_path, kind):
    import torch

    path = tmp_path / "model.pt"
    if kind == "corrupt":
        path.write_bytes(b"PK\x03\x04 truncated")
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    elif kind == "folder":
        path = tmp_path
    proc = _translate([str(path)], "hello\n")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and str(path) in proc.stderr
    assert "Traceback" not in proc.stderr
    with pytest.raises(CheckpointError):
        Translator.load(path)


def test_checkpoint_without_its_tokenizer(toy_run, tmp_path):
    import shutil

    shutil.copy(toy_run / "checkpoints" / "best.pt", tmp_path / "best.pt")
    with pytest.raises(CheckpointError, match="tokenizer .* is missing"):
        Translator.load(tmp_path / "best.pt")


def test_joint_vocabulary_is_shared(tmp_path):
    from conftest import toy_pairs

    from seq2seq.config import load_config
    from seq2seq.data.corpora import split_corpus
    from seq2seq.tasks.translation import build_tokenizers

    cfg = load_config(overrides=["data.joint_vocab=true", "data.vocab_size=60"])
    corpus = split_corpus("toy", toy_pairs(500, 4))
    src, tgt = build_tokenizers(cfg, corpus, tmp_path)
    assert src is tgt and src.path == tmp_path / "tokenizers" / "joint.model"
    assert src.decode(src.encode(["le chat"])) == ["le chat"] and src.decode(src.encode(["the cat"])) == ["the cat"]


def test_a_hostile_line_is_translated_in_bounded_parts(toy_run):
    import time

    translator = Translator.load(toy_run, device="cpu")
    limit = translator.cfg.data.max_len
    for line in ("x" * 10_000, "word " * 3000):
        started = time.process_time()  # this process's CPU time: a stall shows, other processes' load does not
        (tr,) = translator.translate([line])
        assert time.process_time() - started < 5, line[:10]
        assert tr.longest_part >= len(translator.src_tok.encode([line])[0]) and "\n" not in tr.text
        if tr.longest_part > limit:
            assert tr.parts >= tr.longest_part // limit and tr.attention is None
    sizes, search = [], translator._search
    translator._search = lambda src, *rest: sizes.append(tuple(src.shape)) or search(src, *rest)
    translator.translate(["the cat " * 500], batch_size=4)
    assert max(n for n, _ in sizes) <= 4 and max(t for _, t in sizes) <= limit  # parts searched a window at a time


def test_a_paragraph_comes_back_sentence_by_sentence_on_one_line(toy_run):
    translator = Translator.load(toy_run, device="cpu")
    sentences = [f"the {animal} sleeps." for animal in ("cat", "dog", "bird", "fish")] * 5
    (paragraph,) = translator.translate([" ".join(sentences)])
    alone = translator.translate(sentences)
    assert paragraph.parts == 20 and paragraph.text == " ".join(t.text for t in alone)
    (whole,) = translator.translate([" ".join(sentences)], split=False)
    assert whole.parts == 1


def test_a_paragraph_is_scored_as_one_hypothesis_of_all_its_steps(toy_run):
    translator = Translator.load(toy_run, device="cpu")
    translator.cfg.search.length_penalty = alpha = 0.6
    sentences = ["the cat sleeps.", "the big dog eats a fish."]
    (paragraph,) = translator.translate([" ".join(sentences)])
    alone = [t.candidates[0] for t in translator.translate(sentences)]
    steps = [len(c.tokens) + 1 for c in alone]  # each ended with its end token
    logprob = sum(c.score * n ** alpha for c, n in zip(alone, steps))
    assert paragraph.parts == 2 and paragraph.candidates[0].score == pytest.approx(logprob / sum(steps) ** alpha)


def test_the_tool_warns_about_long_lines_and_keeps_one_line_each(toy_run):
    long_line = "the big dog " * 1000
    proc = _translate([str(toy_run)], f"the cat\n{long_line}\n\na fish\n")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.split("\n")
    assert len(out) == 5 and out[2] == "" and all(out[i] for i in (0, 1, 3))
    assert "line 2: a sentence of" in proc.stderr and "longer than the 80 the model was trained on" in proc.stderr
    assert proc.stderr.count("\n") == 1  # one line, no traceback


def test_a_line_fed_to_an_open_pipe_is_answered_before_it_closes(toy_run):
    import select

    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "translate.py"), str(toy_run)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        answers = []
        for line, wait in (("the cat eats", 90), ("a small bird", 10)):  # the first wait includes loading the model
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], wait)
            assert ready, f"no answer to {line!r} within {wait} s while the pipe stayed open"
            answers.append(proc.stdout.readline())
        assert all(a.strip() for a in answers)
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()


def test_repl_says_when_it_split_a_line(toy_run):
    code, text = _repl(toy_run, b"the cat sleeps. the dog eats.\n" + b"the big dog " * 60 + b"\n\n")
    assert code == 0, text
    assert "translated sentence by sentence: 2 sentences" in text
    assert "note: a sentence of" in text and "translated in" in text


def test_training_logs_the_attention_entropy_and_largest_score(toy_run):
    import math

    records = [json.loads(line) for line in (toy_run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "train/loss" in r]
    assert len(logged) == 300 // 50
    for r in logged:
        assert 0 < r["train/attention_entropy"] < math.log(80)  # nats over at most data.max_len positions
        assert r["train/attention_max_score"] > 0


def test_kept_checkpoints_average_into_a_model_the_tool_loads(tmp_path):
    from conftest import toy_translation

    run_dir = tmp_path / "run"
    toy_translation(run_dir, "train.max_steps=100", "train.valid_every=20", "train.keep_checkpoints=3")
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*.pt"))
    assert kept == ["step-100.pt", "step-60.pt", "step-80.pt"]
    proc = subprocess.run([sys.executable, "-m", "seq2seq.cli.average", str(run_dir), "--last", "3"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "averaged.pt" in proc.stdout, proc.stderr
    tool = _translate([str(run_dir / "checkpoints" / "averaged.pt")], "the cat eats\n")
    assert tool.returncode == 0 and tool.stdout.strip(), tool.stderr


def test_the_tool_leaves_sentence_splitting_to_the_model_unless_told():
    from seq2seq.cli.translate import parse_args

    assert parse_args(["run"]).split is None  # the translator then reads the model's search.split_sentences
    assert parse_args(["run", "--no-split"]).split is False


def test_a_word_limit_trains_on_the_short_pairs_with_the_tokenizers_of_all(toy_run, tmp_path, capsys):
    """data.max_train_words (Bahdanau et al.'s "-30" models): the model trains on the pairs of at most
    N words a side, the tokenizers still learn from every pair, and a limit nothing meets is one line."""
    from conftest import toy_pairs, toy_translation

    from seq2seq.config import ConfigError, load_config

    short = sum(len(s.split()) <= 3 and len(t.split()) <= 3 for s, t in toy_pairs(2000, 1))
    assert 0 < short < 2000
    results = toy_translation(tmp_path / "run", "data.max_train_words=3", "train.max_steps=2", "train.valid_every=2")
    assert f"{short:,} of 2,000 training pairs have at most 3 words a side" in capsys.readouterr().out
    assert results["train_steps"] == 2
    for name in ("src.model", "tgt.model"):
        assert (tmp_path / "run" / "tokenizers" / name).read_bytes() == (toy_run / "tokenizers" / name).read_bytes()
    with pytest.raises(ConfigError, match="data.max_train_words=1 leaves none of the 2,000 training pairs"):
        toy_translation(tmp_path / "none", "data.max_train_words=1", "train.max_steps=2")
    with pytest.raises(ConfigError, match="data.max_train_words must be at least 1"):
        load_config(overrides=["data.max_train_words=0"])
