"""The long-dependency tasks: generators, baselines, the models that read them, a study over them."""

import math

import pytest
import torch
import yaml

from seq2seq.config import load_config
from seq2seq.models.rnn import make_rnn
from seq2seq.study import load_study, run_study
from seq2seq.tasks.long_dependency import (
    ADDING_BASELINE_MSE,
    FIRST_SYMBOL,
    SyntheticData,
    build_model,
    evaluate,
    make_batch,
    run,
    solved_at_step,
)
from seq2seq.tokenizers import BOS, EOS
from seq2seq.tracking import JsonlTracker
from seq2seq.train.gradients import gradient_flow

SMALL = ["model.attention=none", "model.bidirectional=false", "model.emb_dim=16", "model.enc_hidden=32",
         "model.dec_hidden=32", "model.readout_dim=16", "model.dropout=0", "train.label_smoothing=0",
         "train.precision=fp32", "train.device=cpu", "train.time_budget=null", "train.max_steps=100",
         "train.log_every=10",
         "tracking.enabled=false"]


def _cfg(*extra):
    return load_config(None, [*SMALL, *extra])


def test_copy_sequences_are_symbols_blanks_and_a_delimiter():
    cfg = _cfg("synthetic.task=copy", "synthetic.length=7").synthetic
    batch = make_batch(cfg, 50, seed=3)
    assert batch.src.shape == (50, 10 + 7 + 1) and batch.src_lens.tolist() == [18] * 50
    data = batch.src[:, :10]
    assert bool(((data >= FIRST_SYMBOL) & (data < FIRST_SYMBOL + 8)).all())
    assert bool((batch.src[:, 10:17] == FIRST_SYMBOL + 8).all()) and bool((batch.src[:, 17] == FIRST_SYMBOL + 9).all())
    assert torch.equal(batch.tgt_out[:, :10], data) and bool((batch.tgt_out[:, 10] == EOS).all())
    assert bool((batch.tgt_in[:, 0] == BOS).all()) and torch.equal(batch.tgt_in[:, 1:], data)


def test_adding_sequences_mark_one_value_in_each_half():
    cfg = _cfg("synthetic.task=adding", "synthetic.length=20").synthetic
    batch = make_batch(cfg, 200, seed=4)
    values, markers = batch.src[..., 0], batch.src[..., 1]
    assert batch.src.shape == (200, 20, 2) and bool(((values >= 0) & (values < 1)).all())
    assert markers.sum(dim=1).tolist() == [2.0] * 200
    assert markers[:, :10].sum(dim=1).tolist() == [1.0] * 200
    assert torch.allclose(batch.target, (values * markers).sum(dim=1))


@pytest.mark.parametrize("task", ["copy", "adding"])
def test_generators_are_deterministic_for_a_seed(task):
    cfg = _cfg(f"synthetic.task={task}", "synthetic.length=12").synthetic
    a, b, c = make_batch(cfg, 30, seed=5), make_batch(cfg, 30, seed=5), make_batch(cfg, 30, seed=6)
    assert torch.equal(a.src, b.src) and not torch.equal(a.src, c.src)
    data = SyntheticData(cfg, seed=1)
    assert data.epoch(2)[3] == [2003]
    assert torch.equal(data.batch([2003]).src, SyntheticData(cfg, seed=1).batch([2003]).src)


def test_the_baselines_are_what_no_memory_achieves():
    copy = _cfg("synthetic.task=copy", "synthetic.length=30")
    model = build_model(copy)
    torch.nn.init.zeros_(model.decoder.out.weight)  # uniform over the vocabulary, whatever the input:
    with torch.no_grad():  # put all the mass on the 8 symbols, uniformly: the no-memory guess
        model.decoder.out.bias.fill_(-1e4)
        model.decoder.out.bias[FIRST_SYMBOL:FIRST_SYMBOL + 8] = 0.0
    scores = evaluate(model, copy.synthetic, make_batch(copy.synthetic, 40, seed=1), torch.device("cpu"))
    assert scores["baseline_cross_entropy"] == pytest.approx(10 * math.log(8) / (30 + 20))
    assert scores["cross_entropy"] == pytest.approx(scores["baseline_cross_entropy"], rel=1e-5)
    adding = make_batch(_cfg("synthetic.task=adding").synthetic, 20000, seed=2)
    assert float(((adding.target - 1.0) ** 2).mean()) == pytest.approx(ADDING_BASELINE_MSE, rel=0.03)


def test_a_gru_learns_the_copy_task_at_t5_within_seconds(tmp_path):
    """Three symbols of four, five blanks: the copy task at a size a test can train."""
    cfg = _cfg("synthetic.task=copy", "synthetic.length=5", "synthetic.symbols=3", "synthetic.alphabet=4",
               "model.enc_cell=gru", "model.dec_cell=gru", "train.max_steps=300", "train.valid_every=300",
               "train.lr=1e-2", "train.warmup_steps=20", "synthetic.batch_size=64", "synthetic.test_examples=500")
    results = run(cfg, tmp_path)
    assert results["test_accuracy"] >= 0.9 and results["solved"] and results["solved_at_step"] == 300
    assert results["test_cross_entropy"] < results["test_baseline_cross_entropy"] / 10


def test_solved_at_step_is_the_first_validation_over_the_bar(tmp_path):
    """Read from metrics.jsonl: training lines and a resumed session's repeated validations are
    ignored, a later dip does not move it, and a run that never met the bar has none."""
    log = tmp_path / "metrics.jsonl"
    tracker = JsonlTracker(log)
    for step, accuracy in [(500, 0.3), (1000, 0.95), (1500, 0.85), (1000, 0.95)]:
        tracker.log({"train/loss": 0.1}, step=step)
        tracker.log({"valid/accuracy": accuracy, "valid/score": accuracy}, step=step)
    copy, adding = _cfg("synthetic.task=copy").synthetic, _cfg("synthetic.task=adding").synthetic
    assert solved_at_step(copy, log) == 1000
    assert solved_at_step(copy, tmp_path / "absent.jsonl") is None
    tracker = JsonlTracker(tmp_path / "adding.jsonl")
    for step, mse in [(500, 0.1), (1000, ADDING_BASELINE_MSE / 20)]:
        tracker.log({"valid/mse": mse, "valid/score": -mse}, step=step)
    assert solved_at_step(adding, tmp_path / "adding.jsonl") == 1000
    tracker.log({"valid/mse": 0.2, "valid/score": -0.2}, step=1500)
    assert solved_at_step(adding, tmp_path / "adding.jsonl") == 1000
    assert solved_at_step(adding, log) is None  # no mse logged: nothing met the bar


def test_the_adding_model_reads_vectors_and_the_probe_measures_it():
    cfg = _cfg("synthetic.task=adding", "synthetic.length=15", "model.enc_cell=lstm")
    model = build_model(cfg)
    batch = make_batch(cfg.synthetic, 8, seed=1)
    assert model(batch.inputs).shape == (8,)
    flow = gradient_flow(model, batch.inputs, None, lambda out: ((out - batch.target) ** 2).mean())
    assert len(flow.by_distance["len_10-19"]) == 15 and "head" in flow.layers


def test_uniform_lengths_skip_packing_with_the_same_states():
    model = build_model(_cfg("synthetic.task=copy", "synthetic.length=3", "model.bidirectional=true"))
    batch = make_batch(_cfg("synthetic.length=3").synthetic, 3, seed=1)
    padded = torch.cat([batch.src, torch.zeros(1, batch.src.size(1), dtype=torch.long)])
    padded[3, :4] = batch.src[0, :4]
    plain = model.encoder(batch.src, batch.src_lens)  # no padding: the unpacked path
    packed = model.encoder(padded, torch.tensor([*batch.src_lens.tolist(), 4]))
    assert torch.allclose(plain.states, packed.states[:3], atol=1e-6)
    assert torch.allclose(plain.summary, packed.summary[:3], atol=1e-6)


def test_recurrent_gain_sets_every_singular_value():
    rnn = make_rnn("gru", 4, 6, layers=2, recurrent_gain=1.5)
    for block in rnn.weight_hh_l1.split(6):
        assert torch.allclose(torch.linalg.svdvals(block), torch.full((6,), 1.5), atol=1e-5)


def test_a_long_dependency_study_crosses_runs_with_lengths(tmp_path):
    study_file = tmp_path / "tiny_gradients.yaml"
    study_file.write_text(yaml.safe_dump({
        "task": "long_dependency", "budget": {"max_steps": 6},
        "overrides": [*SMALL, "train.valid_every=3", "train.log_every=2", "train.gradient_flow_every=3",
                      "synthetic.valid_examples=20",
                      "synthetic.test_examples=20", "synthetic.batch_size=8"],
        "runs": {"copy_rnn": ["synthetic.task=copy", "model.enc_cell=rnn", "model.dec_cell=rnn"],
                 "adding_lstm": ["synthetic.task=adding", "model.enc_cell=lstm", "train.optimizer=sgd"]},
        "grid": {"synthetic.length": [4, 8]},
        "summary": {"plots": ["by_sequence_length", "gradient_flow", "grad_norm"]},
    }, sort_keys=False), encoding="utf-8")
    study = load_study(study_file)
    assert [s.name for s in study.run_specs()] == ["copy_rnn,length=4", "copy_rnn,length=8",
                                                   "adding_lstm,length=4", "adding_lstm,length=8"]
    folder = run_study(study, tmp_path / "studies", log=lambda line: None)
    results = yaml.safe_load((folder / "adding_lstm,length=8" / "results.json").read_text())
    assert results["task"] == "adding" and results["length"] == 8 and results["train_steps"] == 6
    assert 0 <= results["test_mse"] and results["test_baseline_mse"] == pytest.approx(1 / 6)
    for plot in ("by_sequence_length", "gradient_flow", "grad_norm"):
        assert (folder / f"{plot}.png").stat().st_size > 0, plot
    assert "| `copy_rnn,length=4` | finished | 1 |" in (folder / "summary.md").read_text()


def test_the_exploding_study_plots_the_run_that_overflowed(tmp_path):
    """The shipped exploding study, 30 steps, one seed: without clipping the loss overflows (the run
    fails, recorded); its gradient norms up to that step are what the grad_norm plot is for."""
    from seq2seq.cli.study import prepare
    from seq2seq.study.aggregate import collect
    from seq2seq.study.plots import logged_curves
    from seq2seq.study.runner import run_state

    study = prepare("exploding", budget=30, seeds=[1], root=tmp_path)
    folder = run_study(study, tmp_path, log=lambda line: None)
    specs = study.run_specs()
    states = [run_state(study, s, folder / s.folder) for s in specs]
    assert states == ["failed", "finished"]
    assert "training loss became inf" in (folder / "clipping_off" / "seed-1" / "error.txt").read_text()
    curves = logged_curves(collect(study, folder, specs, states), "train/grad_norm")
    off, on = curves["clipping_off"], curves["clipping_at_1"]
    assert off[-1]["step"] < 30 and off[-1]["train/grad_norm"] > 1e6 * off[0]["train/grad_norm"]
    assert on[-1]["step"] == 30 and on[-1]["train/grad_norm"] < on[0]["train/grad_norm"]
    assert (folder / "grad_norm.png").stat().st_size > 0
