"""The study runner: a tiny study end to end, resumed and skipped runs, pruned runs, decode studies, bad files."""

import csv
import io
import json
import math
import shutil

import pytest
import torch
import yaml
from conftest import toy_overrides

from seq2seq.cli.study import main as study_main
from seq2seq.config import ConfigError
from seq2seq.experiment import open_run_dir, unlock_run_dir
from seq2seq.study import load_study, run_study
from seq2seq.study.records import export_records, prune, restore_records, verify_records
from seq2seq.study.runner import describe_runs


def _study(tmp_path, name="tiny", **fields):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(fields, sort_keys=False), encoding="utf-8")
    return load_study(path)


def _crash_after_checkpoint(monkeypatch, at_step):
    """The next training run dies at ``at_step`` (after a checkpoint), as a killed process would."""
    import seq2seq.train.trainer as training

    real = training.Trainer.train_step

    def step(self, batch):
        if self.progress.step == at_step:
            monkeypatch.setattr(training.Trainer, "train_step", real)
            raise RuntimeError("simulated crash")
        return real(self, batch)

    monkeypatch.setattr(training.Trainer, "train_step", step)


def test_a_tiny_study_runs_resumes_and_skips(tmp_path, monkeypatch):
    root = tmp_path / "studies"
    fields = dict(task="translation", overrides=toy_overrides(tmp_path, "train.valid_every=5",
                                                               "train.gradient_flow_every=5"),
                  budget={"max_steps": 10}, runs={"gru": [], "lstm": ["model.enc_cell=lstm", "model.dec_cell=lstm"]},
                  summary={"plots": ["bleu_by_length", "metrics", "attention", "gradient_flow"]})
    study = _study(tmp_path, **fields)
    lstm = study.run_specs()[1]
    assert lstm.config.train.max_steps == 10 and lstm.config.train.time_budget is None
    assert lstm.config.tracking.group == "tiny" and lstm.config.tracking.name == "tiny/lstm"
    _crash_after_checkpoint(monkeypatch, 7)  # an interrupted study: lstm has last.pt at step 5 of its 10
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_study(study, root, only=["lstm"], log=lambda _: None)
    listed = describe_runs(study, root)[2:]
    assert [line.split()[1] for line in listed] == ["pending", "partial"]
    assert listed[0].split()[2] == "-" and listed[1].split()[2:4] == ["step", "5"]  # where the partial run stands

    logs = []
    folder = run_study(study, root, log=logs.append)
    assert any("lstm: resuming" in line for line in logs) and any("gru: starting" in line for line in logs)
    for name in ("gru", "lstm"):
        results = yaml.safe_load((folder / name / "results.json").read_text())
        assert results["train_steps"] == 10 and results["stop_reason"] == "max_steps=10 reached"
        assert results["budget"] == {"max_steps": 10} and results["schedule_horizon"] == 10
    md = (folder / "summary.md").read_text()
    assert "| `gru` | finished | 1 |" in md and "| `lstm` | finished | 1 |" in md
    assert "recorded a budget of 10 training steps and trained 10 steps" in md
    assert "![bleu_by_length](bleu_by_length.png)" in md and (folder / "metrics.png").stat().st_size > 0
    assert (folder / "attention.png").stat().st_size > 0  # the same sentences, one column per run
    assert (folder / "gradient_flow.png").stat().st_size > 0  # steps 0 and 10 of both runs
    assert len((folder / "summary.csv").read_text().splitlines()) == 3

    stamps = {p: p.stat().st_mtime_ns for name in ("gru", "lstm") for p in (folder / name).rglob("*") if p.is_file()}
    logs.clear()
    run_study(study, root, log=logs.append)  # the same command again: nothing to train
    assert [line.split(": ", 1)[1] for line in logs] == ["finished, skipped", "finished, skipped"]
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}

    summary = (folder / "summary.csv").read_text()
    _study(tmp_path, name="beams", task="decode", model=str(root / "tiny" / "lstm"), runs={"beam1": ["search.beam=1"]})
    pruned, freed = prune(study, root)  # the checkpoints go, the record stays and the runs stay finished
    assert pruned == ["gru"] and freed > 0 and not (folder / "gru" / "checkpoints").exists()  # beams decodes lstm
    assert json.loads((folder / "gru" / "progress.json").read_text())["step"] == 10
    logs.clear()
    run_study(study, root, log=logs.append)
    assert [line.split(": ", 1)[1] for line in logs] == ["finished, skipped", "finished, skipped"]
    assert (folder / "summary.csv").read_text() == summary
    longer = _study(tmp_path, **{**fields, "budget": {"max_steps": 20}})
    with pytest.raises(ConfigError, match="checkpoints were pruned: it cannot train further"):
        open_run_dir(longer.run_specs()[0].config, folder / "gru")


def _summary_rows(folder, name="summary.csv"):
    return list(csv.DictReader((folder / name).open(encoding="utf-8")))


def test_another_budget_never_mixes_with_the_first(tmp_path, monkeypatch):
    """--budget 15 after a 30-step study: its own folder, trained at 15; the 30-step runs, asked
    for 15 in place, are 'changed' and give no figures; a run interrupted under another budget is
    not stretched to this one."""
    root = tmp_path / "studies"
    fields = {"task": "translation", "overrides": toy_overrides(tmp_path, "train.valid_every=15"),
              "runs": {"a": [], "b": ["train.lr=0.002"]}}
    study = _study(tmp_path, budget={"max_steps": 30}, **fields)
    run_study(study, root, log=lambda _: None)
    quick = study.with_budget(15)
    assert quick.folder == "tiny-budget-15" and quick.name == "tiny"
    folder = run_study(quick, root, log=lambda _: None)
    rows = _summary_rows(folder)
    assert [r["train_steps_mean"] for r in rows] == ["15.0", "15.0"] and {r["state"] for r in rows} == {"finished"}

    edited = _study(tmp_path, budget={"max_steps": 15}, **fields)  # the study file's budget changed in place
    assert [line.split()[1] for line in describe_runs(edited, root)[2:]] == ["changed", "changed"]
    logs = []
    folder = run_study(edited, root, log=logs.append)
    assert all("other options, another budget" in line for line in logs)
    rows = _summary_rows(folder)
    assert {r["state"] for r in rows} == {"changed"} and {r["test_bleu_beam_mean"] for r in rows} == {""}
    assert "| `a` | changed | 0 | – |" in (folder / "summary.md").read_text()

    longer = _study(tmp_path, name="other", budget={"max_steps": 30}, **fields)
    _crash_after_checkpoint(monkeypatch, 17)  # interrupted at step 17 of 30 (last.pt at 15)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_study(longer, root, only=["a"], log=lambda _: None)
    stretched = _study(tmp_path, name="other", budget={"max_steps": 60}, **fields)
    assert describe_runs(stretched, root)[2].split()[1] == "changed"  # never resumed onto another horizon


def test_seed_replicates_aggregate_and_test_against_the_baseline(tmp_path, capsys):
    """Two runs, two seeds: the layout, the mean ± sd columns, every run's bootstrap interval and
    provenance, and the paired test of a run that is clearly worse."""
    import json

    study = _study(tmp_path, task="translation", overrides=toy_overrides(tmp_path, "train.valid_every=40"),
                   budget={"max_steps": 40}, seeds=[1, 2], baseline="good",
                   runs={"good": [], "starved": ["train.lr=0.0002"]},
                   summary={"plots": ["metrics", "bleu_by_length", "attention"]})
    folder = run_study(study, tmp_path / "studies", log=lambda _: None)
    for run in ("good", "starved"):
        for seed in (1, 2):
            results = json.loads((folder / run / f"seed-{seed}" / "results.json").read_text())
            assert results["seed"] == seed and results["train_steps"] == 40
            low, high = results["test_bleu_beam_ci95"]
            assert low <= results["test_bleu_beam"] <= high
            assert results["precision"] == "fp32" and results["processes"] == 1 and results["device_name"]
            assert len(results["git_commit"] or "x" * 40) == 40 and results["torch_version"] == torch.__version__
    rows = {r["run"]: r for r in _summary_rows(folder)}
    for column in ("run", "state", "seeds", "test_bleu_beam_mean", "test_bleu_beam_sd", "delta", "ci95_low",
                   "ci95_high", "p_value", "significant", "precision", "device_name", "git_commit"):
        assert column in rows["good"], column
    good, starved = rows["good"], rows["starved"]
    assert good["seeds"] == starved["seeds"] == "2" and float(good["test_bleu_beam_sd"]) >= 0
    assert good["delta"] == "" and float(starved["delta"]) < 0  # the baseline is not tested against itself
    assert float(starved["ci95_low"]) <= float(starved["delta"]) <= float(starved["ci95_high"]) < 0
    assert float(starved["p_value"]) < 0.05 and starved["significant"] == "True"
    seeds = _summary_rows(folder, "summary_seeds.csv")
    assert [(r["run"], r["seed"]) for r in seeds] == [("good", "1"), ("good", "2"), ("starved", "1"),
                                                        ("starved", "2")]
    assert all(r["p_value"] for r in seeds if r["run"] == "starved") and not seeds[0]["p_value"]
    md = (folder / "summary.md").read_text()
    assert " ± " in md and "**yes**" in md and "seeds 1, 2" in md
    assert "(paired approximate randomisation (10,000 trials drawn as sacreBLEU" in md
    assert "Holm's correction for 1 comparison(s)" in md
    assert "difference of the pooled corpus scores" in md  # two seeds pooled: not the difference of the means

    records = tmp_path / "records"  # the study moves to another machine without weights or corpus text
    assert export_records(study, tmp_path / "studies", records) == [s.folder for s in study.run_specs()]
    exported = {p.relative_to(records / "tiny" / "good" / "seed-1").as_posix()
                for p in (records / "tiny" / "good" / "seed-1").rglob("*")}
    assert {"config.yaml", "results.json", "metrics.jsonl", "progress.json", "test.refs.sha256"} <= exported
    assert not exported & {"checkpoints", "tokenizers", "test.refs.jsonl", "test.src.txt"}
    for table in ("summary.csv", "summary_seeds.csv"):  # committed beside the records, as in docs/results
        shutil.copy2(folder / table, records / "tiny" / table)
    committed = (records / "tiny" / "summary.csv").read_text()
    (records / "tiny" / "summary.csv").write_text(committed.replace(starved["p_value"], "0.5", 1))
    verify = [str(tmp_path / "tiny.yaml"), "--verify", str(records)]
    assert study_main(verify) == 1  # the command's exit status, and the cell that differs
    assert f"summary.csv starved p_value: committed '0.5', rebuilt '{starved['p_value']}'\n" in capsys.readouterr().out
    header, *body = list(csv.reader(io.StringIO(committed)))
    keep = [i for i, column in enumerate(header) if column != "p_exact"]  # a table written before p_exact existed
    table = io.StringIO()
    csv.writer(table).writerows([[row[i] for i in keep] for row in [header, *body]])
    (records / "tiny" / "summary.csv").write_text(table.getvalue())
    (records / "tiny" / "summary_seeds.csv").unlink()
    assert study_main(verify) == 0  # the tables follow from the records alone
    assert capsys.readouterr().out == f"tiny: summary.csv in {records / 'tiny'} follow from its records\n"
    shutil.copy2(folder / "summary_seeds.csv", records / "tiny" / "summary_seeds.csv")
    shutil.rmtree(records / "tiny" / "starved" / "seed-2")  # a run that never finished there: trained here
    assert "summary_seeds.csv starved 2: committed finished, rebuilt pending (its record is missing or was made " \
        "otherwise)" in verify_records(study, records)
    elsewhere = tmp_path / "elsewhere"
    assert restore_records(study, records, elsewhere) == ["good/seed-1", "good/seed-2", "starved/seed-1"]
    follow_up = dict(task="translation", overrides=toy_overrides(tmp_path, "train.valid_every=40"), seeds=[1, 2],
                     runs={"baseline": [], "other": ["train.lr=0.003"]})  # a later study sharing tiny's "good"
    logs = []
    assert restore_records(_study(tmp_path, name="later", budget={"max_steps": 40}, **follow_up), records,
                           tmp_path / "later", logs.append) == ["baseline/seed-1", "baseline/seed-2"]
    assert logs[0] == "baseline (seed 1): restored from tiny/good/seed-1 (the same config)"
    later = _study(tmp_path, name="later", budget={"max_steps": 40}, **follow_up)
    assert export_records(later, tmp_path / "later", records) == []  # tiny's records, not copied under later/
    assert restore_records(_study(tmp_path, name="shorter", budget={"max_steps": 30}, **follow_up), records,
                           tmp_path / "shorter", logs.append) == []  # another budget is another run
    assert (elsewhere / "tiny" / "good" / "seed-1" / "test.refs.jsonl").read_text() == \
        (folder / "good" / "seed-1" / "test.refs.jsonl").read_text()  # written again from the data
    from seq2seq.study.runner import run_state
    from seq2seq.study.summary import write_summary

    specs = study.run_specs()  # summarised before the missing seed trains: its row has a mean, no test
    write_summary(study, elsewhere / "tiny", specs, [run_state(study, s, elsewhere / "tiny" / s.folder) for s in specs])
    partial = {r["run"]: r for r in _summary_rows(elsewhere / "tiny")}["starved"]
    assert partial["seeds"] == "1" and partial["test_bleu_beam_mean"] and partial["p_value"] == ""
    assert "not tested: 1/2 seeds of this run finished" in (elsewhere / "tiny" / "summary.md").read_text()
    assert not (elsewhere / "tiny" / "attention.png").exists()  # restored records have no weights to decode with
    logs = []
    again = run_study(study, elsewhere, log=logs.append)
    assert (again / "attention.png").stat().st_size > 0  # starved's seed 2, trained here: its first seed with weights
    assert [line.split(": ", 1)[1].split(" (")[0] for line in logs if "seed" in line.split(": ")[0]][:4] == \
        ["finished, skipped", "finished, skipped", "finished, skipped", "starting"]
    restored = {r["run"]: r for r in _summary_rows(again)}
    assert all(restored[run][k] == rows[run][k] for run in rows for k in ("test_bleu_beam_mean", "p_value"))
    (records / "tiny" / "good" / "seed-1" / "test.refs.sha256").write_text("0" * 64 + "\n")
    with pytest.raises(ConfigError, match="other test references than the data here gives"):
        restore_records(study, records, tmp_path / "third")
    assert not (tmp_path / "third" / "tiny" / "good" / "seed-1").exists()


def test_stale_rows_show_their_state_and_no_figures(tmp_path, monkeypatch):
    """A folder trained with other options, a partial run holding an earlier horizon's results,
    and a failed run: none of their numbers reach the table."""
    import json

    root = tmp_path / "studies"
    fields = {"task": "translation", "overrides": toy_overrides(tmp_path, "train.valid_every=10"),
              "budget": {"max_steps": 10}}
    study = _study(tmp_path, runs={"a": [], "b": [], "c": []}, **fields)
    run_study(study, root, log=lambda _: None)
    (root / "tiny" / "c" / "error.txt").write_text("diverged\n")
    edited = _study(tmp_path, runs={"a": ["train.lr=0.001"], "b": [], "c": []}, **fields)
    results = root / "tiny" / "b" / "results.json"
    stale = json.loads(results.read_text())
    stale["train_steps"] = 5  # as results of an earlier, shorter horizon beside a later checkpoint
    results.write_text(json.dumps(stale))
    from seq2seq.study.runner import run_state
    from seq2seq.study.summary import write_summary

    specs = edited.run_specs()
    states = [run_state(edited, s, root / "tiny" / s.folder) for s in specs]
    assert states == ["changed", "partial", "failed"]
    write_summary(edited, root / "tiny", specs, states)
    rows = _summary_rows(root / "tiny")
    assert [r["state"] for r in rows] == states and {r["test_bleu_beam_mean"] for r in rows} == {""}


def test_a_run_trained_past_the_study_s_early_stopping_is_changed_not_finished(tmp_path):
    """A run that went on through more validations without a better score than the study's
    patience allows is not the run the study defines; a larger patience than the run's is."""
    import json

    import torch

    from seq2seq.study.runner import run_state
    from seq2seq.train.checkpoints import load_checkpoint

    root = tmp_path / "studies"
    fields = {"task": "translation", "budget": {"max_steps": 10}}
    study = _study(tmp_path, runs={"a": []}, overrides=toy_overrides(tmp_path, "train.valid_every=5",
                                                                     "train.patience=100"), **fields)
    run_study(study, root, log=lambda _: None)
    last = root / "tiny" / "a" / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(last)
    ckpt["progress"].update(longest_bad_streak=2, bad_validations=0)  # as if scores had stalled twice, then risen
    torch.save(ckpt, last)

    def state(patience):
        edited = _study(tmp_path, runs={"a": []}, overrides=toy_overrides(
            tmp_path, "train.valid_every=5", f"train.patience={patience}"), **fields)
        return run_state(edited, edited.run_specs()[0], root / "tiny" / "a")

    assert [state(2), state(3), state(100)] == ["changed", "finished", "finished"]

    del ckpt["progress"]["longest_bad_streak"]  # a checkpoint saved before Progress kept it: rebuilt from the log
    torch.save(ckpt, last)
    scores = [(2, 1.0), (4, 0.5), (4, 0.5), (6, 0.5), (8, 2.0), (10, 1.0)]  # step 4 logged twice (a resumed run)
    (last.parent.parent / "metrics.jsonl").write_text("".join(
        json.dumps({"step": step, "valid/score": score}) + "\n" for step, score in scores))
    assert [state(2), state(3)] == ["changed", "finished"]


def test_transient_failures_leave_the_run_pending_and_stop_the_study(tmp_path, monkeypatch):
    import seq2seq.tasks.translation as translation
    from seq2seq.data.fetch import FetchError
    from seq2seq.files import WriteError

    study = _study(tmp_path, task="translation", overrides=toy_overrides(tmp_path), budget={"max_steps": 4},
                   runs={"a": [], "b": []})
    real = translation.run
    for error in (WriteError("cannot write x: No space left on device"), FetchError("fetching y failed")):
        def fail(cfg, run_dir, error=error):
            raise error

        monkeypatch.setattr(translation, "run", fail)
        with pytest.raises(type(error)):
            run_study(study, tmp_path / "studies", log=lambda _: None)
        assert not list((tmp_path / "studies").rglob("error.txt"))
        assert [line.split()[1] for line in describe_runs(study, tmp_path / "studies")[2:]] == ["pending", "pending"]
    monkeypatch.setattr(translation, "run", real)
    folder = run_study(study, tmp_path / "studies", log=lambda _: None)  # the cause fixed: the same command goes on
    assert {r["state"] for r in _summary_rows(folder)} == {"finished"}


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
    assert "| `a` | failed | 0 |" in (folder / "summary.md").read_text()
    logs.clear()
    run_study(study, tmp_path / "studies", log=logs.append)
    assert "--only a retries it" in logs[0]
    assert export_records(study, tmp_path / "studies", tmp_path / "records") == ["a", "b"]  # a failure is a result
    assert sorted(p.name for p in (tmp_path / "records" / "tiny" / "a").iterdir()) == ["config.yaml", "error.txt"]
    assert restore_records(study, tmp_path / "records", tmp_path / "elsewhere", log=lambda _: None) == ["a", "b"]
    assert [line.split()[1] for line in describe_runs(study, tmp_path / "elsewhere")[2:]] == ["failed", "finished"]
    assert (tmp_path / "elsewhere" / "tiny" / "a" / "error.txt").read_text() == (folder / "a" / "error.txt").read_text()


def test_a_decode_study_reuses_a_trained_model_and_notices_when_it_moves(toy_run, tmp_path):
    import shutil

    from seq2seq.train.checkpoints import load_checkpoint, save_checkpoint

    model = tmp_path / "model"
    shutil.copytree(toy_run, model)
    study = _study(tmp_path, name="beams", task="decode", model=str(model),
                   grid={"search.beam": [1, 3], "search.length_penalty": [0.0, 1.0]}, summary={"plots": ["search"]})
    folder = run_study(study, tmp_path / "studies", log=lambda _: None)
    rows = (folder / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("run,state,seeds,test_bleu_mean,test_bleu_sd,brevity_penalty_mean") and len(rows) == 5
    results = yaml.safe_load((folder / "beam=3,length_penalty=1.0" / "results.json").read_text())
    assert results["beam"] == 3 and results["length_penalty"] == 1.0 and 0 < results["brevity_penalty"] <= 1
    assert 0 < results["valid_brevity_penalty"] <= 1 and results["valid_bleu"] >= 0  # settings are chosen on valid
    assert len(results["checkpoint_sha256"]) == 64 and (folder / "search.png").is_file()
    older = folder / "beam=3,length_penalty=1.0" / "results.json"  # as decoded before validation was scored
    older.write_text(json.dumps({k: v for k, v in results.items() if not k.startswith("valid_")}))
    assert describe_runs(study, tmp_path / "studies")[2:][3].split()[1] == "changed"
    older.write_text(json.dumps(results))

    best = model / "checkpoints" / "best.pt"
    ckpt = load_checkpoint(best)
    next(iter(ckpt["model"].values())).add_(0.01)  # the model trained further since it was decoded
    save_checkpoint(best, {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    assert {line.split()[1] for line in describe_runs(study, tmp_path / "studies")[2:]} == {"changed"}


@pytest.mark.parametrize("fields, message", [
    ({"runs": {"a": []}, "budget": {"max_steps": 10}, "color": 1}, "unknown key(s) color"),
    ({"runs": {"a": []}, "budget": {"steps": 10}}, "'budget' must name one of max_steps"),
    ({"runs": {"a": []}, "budget": {"max_steps": -1}}, "must be a positive number"),
    ({"budget": {"max_steps": 10}}, "no runs"),
    ({"task": "decode", "runs": {"a": []}}, "needs 'model'"),
    ({"runs": {"a": ["model.attention=dot"]}, "budget": {"max_steps": 10}}, "run a: model.attention='dot'"),
    ({"runs": {"a": []}, "budget": {"max_steps": 10}, "summary": {"plots": ["pie"]}}, "unknown plot(s) pie"),
    ({"runs": {"b": {"average": "a", "last": 2}, "a": []}, "budget": {"max_steps": 10}}, "not a run above"),
    ({"runs": {"a": [], "b": {"ensemble": "a"}}, "budget": {"max_steps": 10}}, "give 'seeds'"),
    ({"runs": {"a": [], "b": {"average": "a", "last": 0}}, "budget": {"max_steps": 10}}, "'last' must be"),
    ({"runs": {"a": [], "b": {"average": "a", "last": 1}, "c": {"average": "b", "last": 1}},
      "budget": {"max_steps": 10}}, "cannot average 'b', an average itself"),
    ({"runs": {"a": [], "b": {"from": "a", "last": 1}}, "budget": {"max_steps": 10}}, "must be a list of overrides"),
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
        else:  # the model it decodes is a run folder of the study it names (seeded runs: one seed's)
            _, source, *folder = study.model.parts
            assert "/".join(folder) in {s.folder for s in load_study(path.parent / f"{source}.yaml").run_specs()}, path


def test_a_run_made_before_an_option_existed_keeps_its_config(tmp_path):
    from seq2seq.config import load_config
    from seq2seq.experiment import config_yaml, same_run_config

    cfg = load_config(overrides=["model.attention=bahdanau"])
    saved = yaml.safe_load(config_yaml(cfg))
    del saved["captions"]["twemoji_test"]  # as a run folder written before that option was added
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved), encoding="utf-8")
    assert same_run_config(tmp_path, cfg)
    assert not same_run_config(tmp_path, load_config(overrides=["model.attention=none"]))


def _study_command(study_file, root, *extra):
    import os
    import sys

    env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}
    return [sys.executable, "-m", "seq2seq.cli.study", str(study_file), "--root", str(root), *extra], env


def test_two_workers_and_a_second_process_share_one_study(tmp_path):
    """--workers 2 and another process started beside it: every run trained exactly once, none failed."""
    import subprocess

    study = _study(tmp_path, task="translation", overrides=toy_overrides(tmp_path, "train.valid_every=20"),
                   budget={"max_steps": 20}, seeds=[1, 2], runs={"a": [], "b": ["train.lr=0.002"]})
    root = tmp_path / "studies"
    pool, env = _study_command(study.path, root, "--workers", "2")
    second, _ = _study_command(study.path, root)
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd in (pool, second)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    log = "".join(outputs)
    assert "starting 2 workers with 1 thread(s) each" in log
    for folder in ("a/seed-1", "a/seed-2", "b/seed-1", "b/seed-2"):
        label = f"{folder.split('/')[0]} (seed {folder[-1]})"
        assert log.count(f"{label}: starting") == 1 and f"{label}: resuming" not in log, log
        assert (root / "tiny" / folder / "results.json").is_file()
    assert not list(root.rglob("error.txt"))
    assert {r["state"] for r in _summary_rows(root / "tiny")} == {"finished"}


def test_threads_reach_every_worker(monkeypatch):
    """--threads replaces the cores' share: several study commands on one machine must split the cores."""
    from seq2seq.study import workers

    started = []

    class Done:
        def __init__(self, command, env):
            started.append((command, env))

        def wait(self):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(workers.subprocess, "Popen", Done)
    logs = []
    assert workers.run_workers(["tiny"], 2, logs.append, threads=3) == 0
    assert logs == ["starting 2 workers with 3 thread(s) each"] and len(started) == 2
    assert all(c[-2:] == ["--threads", "3"] and e["OMP_NUM_THREADS"] == "3" for c, e in started)
    started.clear()
    workers.run_workers(["tiny"], 2, logs.append)
    assert started[0][0][-1] == str(workers.threads_per_worker(2))


def test_a_study_on_a_cluster_through_submitit(tmp_path):
    """--slurm submits one job per unfinished run (here with submitit's local executor), waits, summarises."""
    import subprocess

    pytest.importorskip("submitit")
    study = _study(tmp_path, task="translation", overrides=toy_overrides(tmp_path, "train.valid_every=10"),
                   budget={"max_steps": 10}, runs={"a": [], "b": ["train.lr=0.002"]})
    root = tmp_path / "studies"
    command, env = _study_command(study.path, root, "--slurm", "cluster=local", "timeout_min=10")
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "submitted 2 job(s) to local" in proc.stdout
    assert {r["state"] for r in _summary_rows(root / "tiny")} == {"finished"}
    assert list((root / "tiny" / "slurm").glob("*/*_log.out"))  # submitit's job logs


def test_in_a_grid_each_run_is_tested_against_the_baseline_at_its_own_point(tmp_path):
    study = _study(tmp_path, runs={"gru": [], "lstm": ["model.dec_cell=lstm"]}, grid={"train.lr": [0.1, 0.2]},
                   budget={"max_steps": 10}, baseline="gru")
    assert study.baseline_of("lstm,lr=0.2") == "gru,lr=0.2"
    assert study.baseline_of("gru,lr=0.2") is None  # a baseline is not tested against itself
    plain = _study(tmp_path, runs={"gru": [], "lstm": []}, budget={"max_steps": 10}, baseline="gru")
    assert plain.baseline_of("lstm") == "gru" and plain.baseline_of("gru") is None
    with pytest.raises(ConfigError, match="baseline 'rnn' is not one of its runs"):
        _study(tmp_path, runs={"gru": []}, grid={"train.lr": [0.1]}, budget={"max_steps": 10}, baseline="rnn")


def test_a_ladder_averages_fine_tunes_and_ensembles_seed_by_seed(tmp_path):
    """Runs built from runs: each waits for its source, reads the same seed's folder (an ensemble
    every seed's), is tested against the baseline, is skipped when done and is changed when a
    checkpoint it read changes."""
    import json
    import shutil

    from seq2seq.train.checkpoints import load_checkpoint, save_checkpoint

    root = tmp_path / "studies"
    ladder = dict(task="translation", seeds=[1, 2], baseline="single", budget={"max_steps": 20},
                  overrides=toy_overrides(tmp_path, "train.valid_every=10", "train.keep_checkpoints=2"),
                  runs={"single": [], "averaged": {"average": "single", "last": 2},
                        "tuned": {"from": "averaged", "overrides": ["train.lr=0.001"], "budget": {"max_steps": 10}},
                        "ensemble": {"ensemble": "averaged"}, "ensemble_tuned": {"ensemble": "tuned"}},
                  summary={"pairs": [["tuned", "averaged"], ["ensemble_tuned", "ensemble"],  # rung against rung
                                     ["single", "ensemble"]]})  # seeded runs against one output
    for pairs, error in [([["mrt", "averaged"]], "summary.pairs names mrt, not runs of the study"),
                         ([["tuned", "averaged"], ["averaged", "tuned"]], "tests averaged against tuned twice")]:
        with pytest.raises(ConfigError, match=error):
            _study(tmp_path, name="bad", **{**ladder, "summary": {"pairs": pairs}})
    study = _study(tmp_path, **ladder)
    states = {line.split()[0]: line.split()[1] for line in describe_runs(study, root)[2:]}
    assert states == {"single/seed-1": "pending", "single/seed-2": "pending", "averaged/seed-1": "waiting",
                      "averaged/seed-2": "waiting", "tuned/seed-1": "waiting", "tuned/seed-2": "waiting",
                      "ensemble": "waiting", "ensemble_tuned": "waiting"}
    logs = []
    folder = run_study(study, root, log=logs.append)
    assert all(state == "finished" for state in (line.split()[1] for line in describe_runs(study, root)[2:]))
    averaged = json.loads((folder / "averaged" / "seed-2" / "results.json").read_text())
    assert averaged["stage"] == "average" and (folder / "averaged" / "seed-2" / "checkpoints" / "averaged.pt").is_file()
    assert [p.rsplit("/", 3)[1:] for p in averaged["read"]] == [["seed-2", "checkpoints", "step-10.pt"],
                                                                ["seed-2", "checkpoints", "step-20.pt"]]
    tuned = json.loads((folder / "tuned" / "seed-1" / "results.json").read_text())
    assert tuned["train_steps"] == 10 and tuned["budget"] == {"max_steps": 10}
    assert yaml.safe_load((folder / "tuned" / "seed-1" / "config.yaml").read_text())["train"]["init_from"] == \
        str(root / "tiny" / "averaged" / "seed-1")
    ensemble = json.loads((folder / "ensemble" / "results.json").read_text())
    assert ensemble["models"] == [str(folder / "averaged" / f"seed-{s}" / "checkpoints" / "averaged.pt")
                                  for s in (1, 2)]
    rows = {r["run"]: r for r in _summary_rows(folder)}
    assert rows["ensemble"]["seeds"] == "1" and rows["single"]["p_value"] == ""
    assert all(0 <= float(rows[run]["p_value"]) <= 1 for run in ("averaged", "tuned", "ensemble"))
    assert rows["ensemble"]["git_commit"] == rows["single"]["git_commit"]  # what trained the models it read
    seeds = {(r["run"], r["seed"]): r for r in _summary_rows(folder, "summary_seeds.csv")}
    assert 0 <= float(seeds[("averaged", "2")]["p_value"]) <= 1
    assert all(0 <= float(seeds[("ensemble", f"all vs {s}")]["p_value"]) <= 1 for s in (1, 2))
    assert rows["ensemble"]["p_value"] == max((seeds[("ensemble", f"all vs {s}")]["p_value"] for s in (1, 2)),
                                              key=float)  # one output is not seeds-many: the weakest test
    pairs = {(r["run"], r["against"]): r for r in _summary_rows(folder, "summary_pairs.csv")}
    assert list(pairs) == [("tuned", "averaged"), ("ensemble_tuned", "ensemble"), ("single", "ensemble")]
    assert pairs[("single", "ensemble")]["test"].startswith("the least significant of its paired tests against each")
    assert all(r["tested_metric"] == "test_bleu_beam" and 0 <= float(r["p_value"]) <= float(r["p_holm"]) <= 1
               for r in pairs.values())
    md = (folder / "summary.md").read_text()
    assert "Holm's correction for these 3 comparison(s), a family of their own" in md
    assert "| `tuned` | `averaged` |" in md
    assert "Provenance differs" not in md
    assert "trained 20 steps; schedule horizon 20 steps" in md and "an ensemble of every seed of `averaged`" in md
    assert "fine-tuned from `averaged` `train.lr=0.001` (its own budget: 10 training steps)" in md

    logs.clear()
    run_study(study, root, log=logs.append)  # nothing left to do
    assert all(line.endswith("finished, skipped") for line in logs)
    from seq2seq.experiment import RunFinished
    from seq2seq.study.runner import _execute

    spec = next(s for s in study.run_specs() if s.folder == "averaged/seed-2")
    scored = (folder / "averaged" / "seed-2" / "results.json").read_text()
    with pytest.raises(RunFinished):  # a second worker that read "pending" before the first finished
        _execute(study, spec, folder / spec.folder, lambda: pytest.fail("claimed a rung already scored"))
    unlock_run_dir(folder / spec.folder)
    assert (folder / "averaged" / "seed-2" / "results.json").read_text() == scored

    records = tmp_path / "records"  # a finished ladder goes whole, sealed, without weights
    everything = [s.folder for s in study.run_specs()]
    assert export_records(study, root, records) == everything
    assert len({(records / "tiny" / name / "export.seal").read_text() for name in everything}) == 1
    for table in ("summary.csv", "summary_seeds.csv", "summary_pairs.csv"):
        shutil.copy2(folder / table, records / "tiny" / table)
    assert verify_records(study, records) == []  # every rung's row follows from the records, elsewhere
    elsewhere = tmp_path / "elsewhere"
    assert restore_records(study, records, elsewhere, log=lambda _: None) == everything  # init_from follows
    assert {line.split()[1] for line in describe_runs(study, elsewhere)[2:]} == {"finished"}
    redefined = _study(tmp_path, name="tiny", **{**ladder, "runs": {**ladder["runs"], "averaged": {
        "average": "single", "last": 1}}})
    states = {line.split()[0]: line.split()[1] for line in describe_runs(redefined, elsewhere)[2:]}
    assert states["averaged/seed-1"] == states["averaged/seed-2"] == "changed"  # not what the study asks now
    _study(tmp_path, **ladder)  # the study file as it was
    weights = elsewhere / "tiny" / "single" / "seed-1" / "checkpoints"  # a source with weights here is hashed:
    shutil.copytree(folder / "single" / "seed-1" / "checkpoints", weights)  # the very ones the rung read
    assert {line.split()[1] for line in describe_runs(study, elsewhere)[2:]} == {"finished"}
    ckpt = load_checkpoint(weights / "step-20.pt")
    next(iter(ckpt["model"].values())).add_(1.0)  # trained again: what its rungs read is new
    save_checkpoint(weights / "step-20.pt", ckpt)
    states = {line.split()[0]: line.split()[1] for line in describe_runs(study, elsewhere)[2:]}
    assert states["averaged/seed-1"] == "changed" and states["averaged/seed-2"] == "finished"
    assert restore_records(study, records, tmp_path / "half", log=lambda _: None) == everything
    shutil.rmtree(tmp_path / "half" / "tiny" / "ensemble")
    assert restore_records(study, records, tmp_path / "half", log=lambda _: None) == []  # whole or not at all
    (records / "tiny" / "tuned" / "seed-2" / "export.seal").write_text("another export\n")
    assert restore_records(study, records, tmp_path / "mixed", log=lambda _: None) == []

    assert prune(study, root)[0] == []  # what other runs read keeps its checkpoints (here: all that has any)
    step = folder / "single" / "seed-1" / "checkpoints" / "step-20.pt"
    ckpt = load_checkpoint(step)
    next(iter(ckpt["model"].values())).add_(1.0)  # the source trained again: what was read is stale
    save_checkpoint(step, ckpt)
    states = {line.split()[0]: line.split()[1] for line in describe_runs(study, root)[2:]}
    assert states["averaged/seed-1"] == "changed" and states["averaged/seed-2"] == "finished"
    assert states["tuned/seed-1"] == states["ensemble"] == "waiting" and states["tuned/seed-2"] == "finished"
    assert export_records(study, root, tmp_path / "partial") == []  # a ladder not all finished: none of it
    shutil.rmtree(folder / "averaged" / "seed-1")  # averaged again: what the fine-tuned run started from moved
    run_study(study, root, only=["averaged/seed-1"], log=lambda _: None)
    states = {line.split()[0]: line.split()[1] for line in describe_runs(study, root)[2:]}
    assert states["averaged/seed-1"] == "finished" and states["tuned/seed-1"] == states["ensemble"] == "changed"
    (folder / "tuned" / "seed-1" / "results.json").unlink()  # interrupted: it would resume from its own last.pt
    states = {line.split()[0]: line.split()[1] for line in describe_runs(study, root)[2:]}
    assert states["tuned/seed-1"] == "changed"  # begun from the old average: not resumed as if from the new


def test_a_run_budget_replaces_the_studys_whatever_its_unit(tmp_path):
    study = _study(tmp_path, task="translation", seeds=[1], budget={"max_steps": 20},
                   runs={"a": [], "b": {"from": "a", "budget": {"time_budget": 2}}})
    a, b = study.run_specs()
    assert (a.config.train.max_steps, a.config.train.time_budget) == (20, None)
    assert (b.config.train.max_steps, b.config.train.time_budget) == (None, 2)
    assert b.config.train.init_from == "studies/tiny/a/seed-1"  # under the default root, as the runner sees it
    with pytest.raises(ConfigError, match="--seeds lists none"):
        _study(tmp_path, name="ens", seeds=[1], budget={"max_steps": 20},
               runs={"a": [], "e": {"ensemble": "a"}}).with_seeds([])


def test_each_row_is_tested_on_the_first_metric_it_has_once_every_seed_finished(tmp_path):
    """A grid over copy (accuracy) and adding (MSE): each point is tested on the metric it
    recorded; a row with a seed still running shows its mean and no test."""
    from seq2seq.study.aggregate import Replicate, RunSummary, compare

    study = _study(tmp_path, task="long_dependency", runs={"gru": [], "lstm": ["model.dec_cell=lstm"]},
                   grid={"synthetic.task": ["copy", "adding"]}, seeds=[1, 2, 3], budget={"max_steps": 10},
                   baseline="gru")
    figures = {"gru": {"copy": [0.9, 0.95, 0.92], "adding": [0.01, 0.012, 0.011]},
               "lstm": {"copy": [0.1, 0.2, 0.15], "adding": [0.5, 0.6, 0.55]}}
    runs: dict[str, RunSummary] = {}
    for spec in study.run_specs():
        cell, task = spec.name.split(",")[0], "copy" if "copy" in spec.name else "adding"
        metric = "test_accuracy" if task == "copy" else "test_mse"
        finished = not (spec.name == "lstm,task=adding" and spec.seed == 3)
        results = {metric: figures[cell][task][spec.seed - 1]} if finished else {}
        runs.setdefault(spec.name, RunSummary(spec.name, [])).replicates.append(
            Replicate(spec, tmp_path, "finished" if finished else "partial", results))
    compare(study, list(runs.values()), ["test_accuracy", "test_mse"])
    copy, adding = runs["lstm,task=copy"], runs["lstm,task=adding"]
    assert copy.metric == "test_accuracy" and copy.comparison.delta == pytest.approx(0.15 - 0.9233, abs=1e-3)
    assert copy.comparison.p_value < 0.05 and copy.comparison.p_exact == pytest.approx(0.1)  # 3 vs 3's floor
    from seq2seq.study.summary import SIGNIFICANCE, _markdown, _significance

    assert dict(zip(SIGNIFICANCE, _significance(copy)))["p_exact"] == pytest.approx(0.1)
    page = "\n".join(_markdown(study, list(runs.values()), ["test_accuracy", "test_mse"], [], False, 2))
    assert "exact permutation test's p" in page
    assert next(line for line in page.splitlines() if line.startswith("| `lstm,task=copy`")).count("exact 0.1") == 1
    assert adding.comparison is None and adding.note == "not tested: 2/3 seeds of this run finished"
    assert adding.mean("test_mse") == pytest.approx(0.55)
    # the waiting row counts in Holm's family as p = 1: the interim summary claims no more than the final
    assert copy.adjusted_p == pytest.approx(min(1.0, 2 * copy.comparison.p_value))
    adding.replicates[2] = Replicate(adding.replicates[2].spec, tmp_path, "finished", {"test_mse": 0.55})
    compare(study, list(runs.values()), ["test_accuracy", "test_mse"])
    assert adding.metric == "test_mse" and adding.comparison.delta == pytest.approx(0.55 - 0.011)
    assert adding.note == "" and adding.adjusted_p <= 2 * adding.comparison.p_value

    # a seed without a finite value (or a baseline without the metric) leaves the row untested,
    # never tested on the seeds that happened to record it
    copy.replicates[1] = Replicate(copy.replicates[1].spec, tmp_path, "finished", {"test_accuracy": math.nan})
    compare(study, list(runs.values()), ["test_accuracy", "test_mse"])
    assert copy.comparison is None and copy.note.startswith("no metric recorded by every seed")
    assert math.isnan(copy.adjusted_p) and not copy.significant
    assert adding.adjusted_p == pytest.approx(min(1.0, 2 * adding.comparison.p_value))


def test_a_fine_tuning_run_that_died_before_its_first_checkpoint_records_its_new_start(tmp_path):
    from seq2seq.study.stages import STARTED_FROM, inputs_sha256, record_start

    source = tmp_path / "source.pt"
    source.write_bytes(b"weights of the first try")
    run_dir = tmp_path / "run"
    first = record_start(run_dir, [source])
    source.write_bytes(b"the source, trained again")
    again = record_start(run_dir, [source])  # no last.pt of its own: it starts from the source as it is now
    assert again != first and again == inputs_sha256([source])
    assert (run_dir / STARTED_FROM).read_text().strip() == again
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"its own progress")
    source.write_bytes(b"the source, trained a third time")
    assert record_start(run_dir, [source]) == again  # a resume goes on from its own last.pt


def test_records_without_the_outputs_a_paired_test_needs_are_tested_over_seeds(tmp_path):
    """Captioning runs from before greedy captions were kept: greedy BLEU-4 gets Welch's test
    over seeds, saying why, instead of no test at all."""
    from seq2seq.study.aggregate import Replicate, RunSummary, compare

    study = _study(tmp_path, task="captioning", runs={"a": [], "b": ["model.attention=none"]}, seeds=[1, 2, 3],
                   budget={"max_steps": 10}, baseline="a")
    greedy = {"a": [80.0, 81.0, 80.5], "b": [70.0, 71.5, 70.2]}
    runs: dict[str, RunSummary] = {}
    for spec in study.run_specs():
        folder = tmp_path / spec.folder
        folder.mkdir(parents=True)
        runs.setdefault(spec.name, RunSummary(spec.name, [])).replicates.append(Replicate(
            spec, folder, "finished", {"beam": 3, "test_bleu4_greedy": greedy[spec.name][spec.seed - 1]}))
    compare(study, list(runs.values()), ["test_bleu4_greedy"])
    c = runs["b"].comparison
    assert c is not None and c.delta == pytest.approx(70.5667 - 80.5, abs=1e-3) and c.p_value < 0.01
    assert "Welch" in c.test and "test.greedy.txt was not kept" in c.test and c.p_exact == pytest.approx(0.1)


def test_workers_killed_or_interrupted_stop_the_command(monkeypatch):
    """A worker killed by a signal is not a success, and Ctrl-C while waiting for the workers
    returns 130 so that no further study starts."""
    import signal

    from seq2seq.study import workers

    class Killed:
        def __init__(self, command, env):
            self.interrupted = False

        def wait(self):
            return -signal.SIGKILL  # e.g. the out-of-memory killer

        def poll(self):
            return -signal.SIGKILL

        def send_signal(self, signum):
            pass

    monkeypatch.setattr(workers.subprocess, "Popen", Killed)
    assert workers.run_workers(["tiny"], 2, lambda _: None, threads=1) == 128 + signal.SIGKILL

    class CtrlC(Killed):
        def wait(self):
            if not self.interrupted:  # the terminal's SIGINT reaches this process while it waits
                self.interrupted = True
                raise KeyboardInterrupt
            return 0

    monkeypatch.setattr(workers.subprocess, "Popen", CtrlC)
    assert workers.run_workers(["tiny"], 2, lambda _: None, threads=1) == 130


def test_workers_get_only_their_study_s_runs_and_the_exact_budget():
    from seq2seq.cli.study import _forwarded, parse_args

    args = parse_args(["a", "b", "--only", "run_of_a", "--only", "run_of_b", "--budget", "1234567", "--workers", "2"])
    forwarded = _forwarded(args, "a", ["run_of_a"])
    assert forwarded.count("--only") == 1 and "run_of_b" not in forwarded
    assert float(forwarded[forwarded.index("--budget") + 1]) == 1234567


def test_no_more_workers_start_than_runs_are_left_so_the_cores_go_to_those_that_train(tmp_path, monkeypatch):
    from seq2seq.cli import study as cli

    study = _study(tmp_path, task="translation", budget={"max_steps": 10}, seeds=[1], runs={"a": [], "b": []})
    started = []
    monkeypatch.setattr(cli, "run_workers", lambda argv, workers, log, threads: started.append(workers) or 0)
    monkeypatch.setattr(cli, "_summarise", lambda study, root: None)
    cli.main([str(study.path), "--root", str(tmp_path / "studies"), "--workers", "8"])
    cli.main([str(study.path), "--root", str(tmp_path / "studies"), "--workers", "8", "--only", "a"])
    assert started == [2, 1]


def test_under_torchrun_the_study_command_refuses_to_start_processes_of_its_own(monkeypatch):
    from seq2seq.cli.study import main
    from seq2seq.config import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    for extra in (["--workers", "2"], ["--slurm", "cluster=local"], ["--prune"]):
        with pytest.raises(ConfigError, match="torchrun"):
            main(["cells", *extra])


def test_on_a_cluster_a_named_run_built_from_another_waits_for_its_source_s_wave(tmp_path, monkeypatch):
    """--slurm --only a b, where b fine-tunes a: b is submitted once a has finished, not with it
    (its job would find a unfinished, do nothing and end as done)."""
    import argparse

    from seq2seq.cli import study as cli

    study = _study(tmp_path, task="translation", budget={"max_steps": 10},
                   runs={"a": [], "b": {"from": "a", "budget": {"max_steps": 5}}})
    states = {"a": "pending", "b": "waiting"}
    waves = []

    def submit(path, root, study_args, todo, options, folder, log):
        waves.append(list(todo))
        for run in todo:
            states[run] = "finished"
        if "a" in todo:
            states["b"] = "pending"
        return []

    monkeypatch.setattr(cli, "run_state", lambda study, spec, folder: states[spec.folder])
    monkeypatch.setattr(cli, "submit", submit)
    monkeypatch.setattr(cli, "_summarise", lambda study, root: None)
    args = argparse.Namespace(root=tmp_path / "studies", budget=None, seeds=None, slurm=["cluster=local"])
    assert cli._on_cluster(args, "tiny", study, ["a", "b"]) == 0
    assert waves == [["a"], ["b"]]


def test_an_exported_record_keeps_the_progress_its_run_saved_without_fields_added_since(tmp_path):
    import json

    from seq2seq.experiment import run_progress
    from seq2seq.study.records import _keep_progress

    run, out = tmp_path / "run", tmp_path / "record"
    run.mkdir()
    out.mkdir()
    saved = {"step": 1805, "best_score": 11.7, "bad_validations": 0}  # as a run saved before longest_bad_streak
    (run / "progress.json").write_text(json.dumps(saved))
    assert _keep_progress(run, out)
    assert json.loads((out / "progress.json").read_text()) == saved
    assert run_progress(out).longest_bad_streak == 0  # read: the default, as for any older run


def test_a_run_another_process_trains_is_left_to_it_in_a_line_that_names_the_holder(tmp_path):
    """A worker that finds a run locked says who holds it and goes on; the lock's advice for a
    single run (another --run-dir) would be wrong inside a study."""
    import os

    from seq2seq.train.faults import RunLock

    study = _study(tmp_path, task="translation", overrides=toy_overrides(tmp_path), budget={"max_steps": 4},
                   runs={"a": []})
    root = tmp_path / "studies"
    held = root / "tiny" / "a"
    lock = RunLock(held)  # another worker's lock (flock locks per open file, so it holds against this process too)
    lock.acquire()
    try:
        logs = []
        run_study(study, root, log=logs.append)
    finally:
        lock.release()
    assert logs == [f"[1/1] a: held by process {os.getpid()} on {os.uname().nodename} since "
                    f"{logs[0].split(' since ')[1].split(';')[0]}; left to it"], logs
    assert not (held / "results.json").exists()
