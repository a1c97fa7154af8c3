"""Sequence-level training: SCST and MRT losses, their rewards, and fine-tuning a trained run."""

import json

import pytest
import torch
from conftest import padded_batch, tiny_model, toy_translation

from seq2seq.config import Config, ConfigError, TrainConfig
from seq2seq.rewards import CiderD, make_reward
from seq2seq.search import sample
from seq2seq.train.checkpoints import CheckpointError, load_weights
from seq2seq.train.sequence_level import Samples, SequenceLevel


class _Batch:
    def __init__(self, tgt_out: torch.Tensor):
        self.tgt_out = tgt_out


def _ids_text(ids: list[list[int]]) -> list[str]:
    return [" ".join(map(str, seq)) for seq in ids]


def _sevens(hyps: list[str], refs: list[str]) -> list[float]:
    """A toy reward: the share of 7s in the output."""
    return [h.split().count("7") / max(len(h.split()), 1) for h in hyps]


def _objective(objective: str, **kw) -> SequenceLevel:
    cfg = TrainConfig(objective=objective, init_from="x", samples=4, **kw)
    model = tiny_model(attention="bahdanau").train()
    return SequenceLevel(model, cfg, _sevens, _ids_text, max_len=6)


def _given(logp: list[float], tokens: list[list[int]]) -> Samples:
    scored = torch.tensor([len(t) + 1 for t in tokens])
    return Samples(tokens, torch.tensor(logp, requires_grad=True), scored, None, None)


@pytest.mark.parametrize("objective", ["scst", "mrt"])
def test_the_loss_raises_the_probability_of_outputs_rewarded_above_their_siblings(objective):
    seq = _objective(objective)
    out = _given([-3.0, -3.0, -3.0, -3.0], [[7, 7], [5, 5], [7, 5], [5, 5, 5]])  # rewards 1, 0, 0.5, 0
    terms = seq.terms(out, _Batch(torch.tensor([[5, 2]])))
    sum(t.total / t.count for t in terms).backward()
    grad = out.logp.grad.tolist()
    assert grad[0] < 0 and grad[1] > 0 and grad[3] > 0  # descent raises log p of the best, lowers the worst
    assert grad[0] < grad[2]
    assert seq.stats["train/reward"] == pytest.approx(0.375)


def test_mrt_counts_an_output_drawn_twice_once():
    seq = _objective("mrt")
    out = _given([-2.0, -2.0, -2.0, -2.0, -1.0, -1.0, -1.0, -1.0],
                 [[7], [7], [5], [5, 5], [7], [5], [6], [7, 7]])  # input 1 drew [7] twice; input 2 has no repeat
    terms = seq.terms(out, _Batch(torch.tensor([[5, 2], [5, 2]])))
    terms[0].total.backward()
    assert out.logp.grad[1] == 0 and out.logp.grad[0] != 0  # the repeat is no candidate of its own
    # expected rewards: input 1 over {[7], [5], [5, 5]} = 1/3, input 2 over its four = (1 + 0 + 0 + 1)/4
    assert seq.stats["train/reward_baseline"] == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_a_sample_is_scored_with_the_probability_it_was_drawn_with():
    seq = _objective("mrt")  # dropout 0: the scoring pass is the drawing policy
    src, lens = padded_batch([5, 4])
    torch.manual_seed(1)
    drawn = sample(seq.model.decoder, seq.model.encode(src, lens), 4, 6)
    torch.manual_seed(1)
    out = seq((src, lens), torch.tensor([[5, 2], [6, 2]]))
    assert out.tokens == [h.tokens for h in drawn]
    assert out.logp.tolist() == pytest.approx([h.logprob for h in drawn], abs=1e-5)  # padding and start excluded


def test_scst_with_the_greedy_baseline_judges_samples_against_the_greedy_output():
    seq = _objective("scst", scst_baseline="greedy")
    out = _given([-2.0, -2.0, -2.0, -2.0], [[7], [5], [7, 5], [5, 7, 7]])._replace(greedy=[[7, 5, 5, 5]])
    terms = seq.terms(out, _Batch(torch.tensor([[5, 2]])))
    terms[0].total.backward()
    assert [g < 0 for g in out.logp.grad.tolist()] == [True, False, True, True]  # above 0.25: raised
    assert seq.stats["train/reward_baseline"] == pytest.approx(0.25)


def test_scst_steps_raise_the_expected_reward_of_a_model():
    torch.manual_seed(3)
    seq = _objective("scst")
    src, lens = padded_batch([5, 4, 6])
    optimizer = torch.optim.Adam(seq.parameters(), lr=0.03)
    batch = _Batch(torch.tensor([[5, 2], [6, 2], [8, 2]]))

    def expected_reward() -> float:
        torch.manual_seed(0)
        hyps = sample(seq.model.decoder, seq.model.encode(src, lens), 64, 6)
        return sum(_sevens(_ids_text([h.tokens]), [""])[0] for h in hyps) / len(hyps)

    before = expected_reward()
    for _ in range(15):
        terms = seq.terms(seq((src, lens), batch.tgt_out), batch)
        optimizer.zero_grad()
        sum(t.total / t.count for t in terms).backward()
        optimizer.step()
    assert expected_reward() > before + 0.2


def test_sampling_draws_k_outputs_per_input_within_the_limit():
    model = tiny_model()
    src, lens = padded_batch([5, 3])
    hyps = sample(model.decoder, model.encode(src, lens), 3, 4)
    assert len(hyps) == 6
    assert all(len(h.tokens) <= 4 and (h.finished or len(h.tokens) == 4) for h in hyps)
    assert len({tuple(h.tokens) for h in hyps}) > 1  # drawn, not argmax


def test_cider_d_weighs_rare_ngrams_and_scores_an_exact_match_highest():
    corpus = [["a red circle"], ["a blue square"], ["a green triangle"], ["a red square"]]
    cider = CiderD(corpus)
    exact, near, wrong = cider(["a red circle", "a red square", "a blue triangle"], ["a red circle"] * 3)
    assert exact == pytest.approx(0.75)  # a 3-word caption has no 4-grams: 3 of the 4 orders match fully
    assert exact > near > wrong >= 0.0
    assert make_reward("bleu")(["le chat dort"], ["le chat dort"]) == [pytest.approx(1.0)]
    with pytest.raises(ConfigError, match="captioning reward"):
        make_reward("cider")


def test_the_cider_d_reward_counts_words_as_the_test_metric_does():
    cider = CiderD([["woman: red hair"], ["man: red hair"], ["grinning face."]])
    exact = cider(["woman : red hair"], ["woman : red hair"])
    assert cider(["woman: red hair"], ["woman : red hair"]) == pytest.approx(exact)  # the colon is a word apart
    assert cider(["Woman"], ["woman: red hair"])[0] > 0  # "woman" is matched in "woman:"


def test_sequence_level_options_are_checked():
    with pytest.raises(ConfigError, match="train.init_from"):
        Config(train=TrainConfig(objective="scst")).validate()
    with pytest.raises(ConfigError, match="train.samples"):
        Config(train=TrainConfig(objective="mrt", init_from="x", samples=1)).validate()
    with pytest.raises(ConfigError, match="train.objective"):
        Config(train=TrainConfig(objective="rl")).validate()


def test_weights_that_do_not_fit_are_one_line(toy_run):
    with pytest.raises(CheckpointError, match=r"train.init_from=.*do not fit this model \(.*in the checkpoint"):
        load_weights(tiny_model(), toy_run)


def test_scst_fine_tunes_a_trained_run_and_says_so(toy_run, tmp_path):
    before = json.loads((toy_run / "results.json").read_text())
    results = toy_translation(tmp_path / "scst", "train.objective=scst", f"train.init_from={toy_run}",
                              "train.max_steps=30", "train.valid_every=30", "train.lr=1e-4", "train.warmup_steps=0",
                              "train.log_every=10")
    assert results["objective"] == "scst" and results["init_from"] == str(toy_run)
    assert results["test_bleu_beam"] > before["test_bleu_beam"] - 5  # fine-tuned, not restarted from scratch
    tokenizers = sorted(p.name for p in (tmp_path / "scst" / "tokenizers").iterdir())
    assert [(tmp_path / "scst" / "tokenizers" / n).read_bytes() for n in tokenizers] == \
        [(toy_run / "tokenizers" / n).read_bytes() for n in tokenizers]  # the starting model's tokenizers
    logged = [json.loads(line) for line in (tmp_path / "scst" / "metrics.jsonl").read_text().splitlines()]
    assert any("train/reward" in r and "train/reward_baseline" in r for r in logged)


def test_starting_from_a_model_trained_with_other_tokenizers_is_one_line(toy_run, tmp_path):
    from seq2seq.train.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="trained with other tokenizers"):
        toy_translation(tmp_path / "joint", "data.joint_vocab=true", f"train.init_from={toy_run}",
                        "train.max_steps=5")


def test_a_start_whose_luong_scores_were_scaled_otherwise_is_refused(tmp_path):
    """Scaling adds no weights, so only the configs can tell: an unscaled model fine-tuned as a
    scaled one would silently divide its scores by sqrt(d) from the first step."""
    from seq2seq.config import ModelConfig
    from seq2seq.train.checkpoints import save_checkpoint

    def config(scale: bool) -> dict:
        return Config(model=ModelConfig(attention="luong_general", attention_scale=scale)).validate().to_dict()

    unscaled = tiny_model("gru", "luong_general", attention_scale=False)
    path = save_checkpoint(tmp_path / "unscaled.pt", {"model": unscaled.state_dict(), "config": config(False)})
    with pytest.raises(CheckpointError, match="model.attention_scale=false; set the same"):
        load_weights(tiny_model("gru", "luong_general"), path, config=config(True))
    assert load_weights(unscaled, path, config=config(False)) == path
