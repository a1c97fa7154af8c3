"""Ensembles in the one search: the mean of the members' probabilities at every step."""

import subprocess
import sys
from pathlib import Path

import torch
from conftest import padded_batch, tiny_model

from seq2seq.ensemble import Ensemble
from seq2seq.search import beam_search, greedy_search, search
from seq2seq.train.checkpoints import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _hyps(model, beam):
    src, lens = padded_batch([5, 3, 4], seed=1)
    return search(model.decoder, model.encode(src, lens), beam, 8, nbest=min(beam, 2))


def _same(a, b):
    for x, y in zip(a, b):
        assert [h.tokens for h in x] == [h.tokens for h in y]
        assert [round(h.score, 5) for h in x] == [round(h.score, 5) for h in y]


def test_an_ensemble_of_one_model_or_of_two_copies_is_that_model():
    model = tiny_model("gru", "bahdanau", seed=3)
    twin = tiny_model("gru", "bahdanau", seed=3)
    for beam in (1, 3):
        _same(_hyps(Ensemble([model]), beam), _hyps(model, beam))
        _same(_hyps(Ensemble([model, twin]), beam), _hyps(model, beam))


def test_the_members_probabilities_are_averaged_not_their_logits():
    a, b = tiny_model("gru", "bahdanau", seed=1), tiny_model("lstm", "luong_general", seed=2)  # other architectures
    src, lens = padded_batch([4, 2])
    prev = torch.full((2,), 2)
    ens = Ensemble([a, b])
    memory = ens.encode(src, lens)
    logp, _, attention = ens.step(prev, ens.init_state(memory), memory)
    probs = [torch.softmax(m.decoder.step(prev, m.decoder.init_state(mem), mem)[0], dim=-1)
             for m, mem in zip((a, b), memory.members)]
    torch.testing.assert_close(logp.exp(), (probs[0] + probs[1]) / 2)
    assert attention.shape == (2, 4)  # both attend over the same source positions: their mean


def test_beam_search_of_an_ensemble_at_beam_1_is_greedy():
    ens = Ensemble([tiny_model("gru", "bahdanau", seed=1), tiny_model("gru", "luong_dot", seed=2)])
    src, lens = padded_batch([5, 3, 4], seed=2)
    greedy = greedy_search(ens.decoder, ens.encode(src, lens), 8)
    beam = beam_search(ens.decoder, ens.encode(src, lens), 1, 8)
    assert [h.tokens for h in greedy] == [b[0].tokens for b in beam]


def test_the_tool_ensembles_runs_that_share_tokenizers_and_refuses_others(toy_run, tmp_path):
    from conftest import toy_translation

    shared, own = tmp_path / "shared" / "run", tmp_path / "own" / "run"
    toy_translation(shared, "train.max_steps=30", "train.valid_every=30", "train.seed=2",
                    f"data.tokenizers_from={toy_run}")
    toy_translation(own, "train.max_steps=30", "train.valid_every=30", "train.seed=2", "data.spm_model_type=bpe")
    tool = [sys.executable, str(ROOT / "tools" / "translate.py")]
    ok = subprocess.run([*tool, str(toy_run), str(shared)], input="the cat eats\n", capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0 and ok.stdout.strip(), ok.stderr
    refused = subprocess.run([*tool, str(toy_run), str(own)], input="the cat eats\n", capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and "have other src tokenizers" in refused.stderr
    assert refused.stderr.count("\n") == 1


def test_an_ensemble_is_scored_on_the_test_split(toy_run, tmp_path):
    import json
    import os

    out = tmp_path / "ensemble"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "evaluate.py"), str(toy_run), str(toy_run),
                           "--out", str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    single = json.loads((toy_run / "results.json").read_text())
    assert results["models"] == [str(toy_run)] * 2
    best = toy_run / "checkpoints" / "best.pt"
    assert results["checkpoints"] == [{"path": str(best), "step": load_checkpoint(best)["progress"]["step"]}] * 2
    assert abs(results["test_bleu_beam"] - single["test_bleu_beam"]) < 1e-6  # two copies = the model
    assert (out / "test.beam3.txt").read_text() == (toy_run / "test.beam3.txt").read_text()
    kept = (toy_run / "results.json").read_text()
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "evaluate.py"), str(toy_run),
                           "--out", str(toy_run)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2 and "already holds results.json" in proc.stderr  # a run's results are not replaced
    assert (toy_run / "results.json").read_text() == kept
