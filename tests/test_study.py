"""The study runner: a tiny study end to end, resumed and skipped runs, decode studies, bad files."""

import dataclasses

import pytest
import yaml
from conftest import toy_overrides

from seq2seq.config import ConfigError
from seq2seq.experiment import open_run_dir
from seq2seq.study import load_study, run_study
from seq2seq.study.runner import describe_runs


def _study(tmp_path, name="tiny", **fields):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(fields), encoding="utf-8")
    return load_study(path)


def test_a_tiny_study_runs_resumes_and_skips(tmp_path):
    from seq2seq.tasks.translation import run

    root = tmp_path / "studies"
    study = _study(tmp_path, task="translation", overrides=toy_overrides(tmp_path, "train.valid_every=5",
                                                                                "train.gradient_flow_every=5"),
                   budget={"max_steps": 10},
                   runs={"gru": [], "lstm": ["model.enc_cell=lstm", "model.dec_cell=lstm"]},
                   summary={"plots": ["bleu_by_length", "metrics", "attention", "gradient_flow"]})
    lstm = study.run_specs()[1]
    assert lstm.config.train.max_steps == 10 and lstm.config.train.time_budget is None
    assert lstm.config.tracking.group == "tiny" and lstm.config.tracking.name == "tiny/lstm"
    half = dataclasses.replace(lstm.config, train=dataclasses.replace(lstm.config.train, max_steps=5))
    open_run_dir(half, root / "tiny" / "lstm")
    run(half, root / "tiny" / "lstm")  # an interrupted study: lstm trained 5 of its 10 steps
    assert [line.split()[1] for line in describe_runs(study, root)[2:]] == ["pending", "partial"]

    logs = []
    folder = run_study(study, root, log=logs.append)
    assert any("lstm: resuming" in line for line in logs) and any("gru: starting" in line for line in logs)
    for name in ("gru", "lstm"):
        results = yaml.safe_load((folder / name / "results.json").read_text())
        assert results["train_steps"] == 10 and results["stop_reason"] == "max_steps=10 reached"
    md = (folder / "summary.md").read_text()
    assert "| gru | finished |" in md and "| lstm | finished |" in md and "every run trains for 10 training steps" in md
    assert "![bleu_by_length](bleu_by_length.png)" in md and (folder / "metrics.png").stat().st_size > 0
    assert (folder / "attention.png").stat().st_size > 0  # the same sentences, one column per run
    assert (folder / "gradient_flow.png").stat().st_size > 0  # steps 0 and 10 of both runs
    assert len((folder / "summary.csv").read_text().splitlines()) == 3

    stamps = {p: p.stat().st_mtime_ns for name in ("gru", "lstm") for p in (folder / name).rglob("*") if p.is_file()}
    logs.clear()
    run_study(study, root, log=logs.append)  # the same command again: nothing to train
    assert [line.split(": ", 1)[1] for line in logs] == ["finished, skipped", "finished, skipped"]
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}


def test_a_diverged_run_is_recorded_and_the_study_goes_on(tmp_path, monkeypatch):
    import seq2seq.tasks.translation as translation

    real = translation.run

    def diverge(cfg, run_dir):
        if run_dir.name == "a":
            raise FloatingPointError("training loss became nan at step 3; lower train.lr or raise train.clip_norm")
        return real(cfg, run_dir)

    monkeypatch.setattr(translation, "run", diverge)
    study = _study(tmp_path, task="translation", overrides=toy_overrides(tmp_path), budget={"max_steps": 4},
                   runs={"a": [], "b": ["train.lr=0.001"]})
    logs = []
    folder = run_study(study, tmp_path / "studies", log=logs.append)
    assert "became nan" in (folder / "a" / "error.txt").read_text() and (folder / "b" / "results.json").is_file()
    assert "| a | failed |" in (folder / "summary.md").read_text()
    logs.clear()
    run_study(study, tmp_path / "studies", log=logs.append)
    assert "--only a retries it" in logs[0]


def test_a_decode_study_reuses_a_trained_model(toy_run, tmp_path):
    study = _study(tmp_path, name="beams", task="decode", model=str(toy_run),
                   grid={"search.beam": [1, 3], "search.length_penalty": [0.0, 1.0]}, summary={"plots": ["search"]})
    folder = run_study(study, tmp_path / "studies", log=lambda _: None)
    rows = (folder / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("run,state,test_bleu,brevity_penalty") and len(rows) == 5
    results = yaml.safe_load((folder / "beam=3,length_penalty=1.0" / "results.json").read_text())
    assert results["beam"] == 3 and results["length_penalty"] == 1.0 and 0 < results["brevity_penalty"] <= 1
    assert (folder / "search.png").is_file()


@pytest.mark.parametrize("fields, message", [
    ({"runs": {"a": []}, "budget": {"max_steps": 10}, "color": 1}, "unknown key(s) color"),
    ({"runs": {"a": []}, "budget": {"steps": 10}}, "'budget' must name one of max_steps"),
    ({"runs": {"a": []}, "budget": {"max_steps": -1}}, "must be a positive number"),
    ({"budget": {"max_steps": 10}}, "no runs"),
    ({"task": "decode", "runs": {"a": []}}, "needs 'model'"),
    ({"runs": {"a": ["model.attention=dot"]}, "budget": {"max_steps": 10}}, "run a: model.attention='dot'"),
    ({"runs": {"a": []}, "budget": {"max_steps": 10}, "summary": {"plots": ["pie"]}}, "unknown plot(s) pie"),
])
def test_bad_study_files_are_one_line(tmp_path, fields, message):
    with pytest.raises(ConfigError) as err:
        _study(tmp_path, **fields).run_specs()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_shipped_studies_resolve():
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parent.parent / "experiments" / "studies").glob("*.yaml")):
        study = load_study(path)
        if study.task != "decode":
            assert study.run_specs() and study.budget, path


def test_a_run_made_before_an_option_existed_keeps_its_config(tmp_path):
    from seq2seq.config import load_config
    from seq2seq.experiment import config_yaml, same_run_config

    cfg = load_config(overrides=["model.attention=bahdanau"])
    saved = yaml.safe_load(config_yaml(cfg))
    del saved["captions"]["twemoji_test"]  # as a run folder written before that option was added
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved), encoding="utf-8")
    assert same_run_config(tmp_path, cfg)
    assert not same_run_config(tmp_path, load_config(overrides=["model.attention=none"]))
