import contextlib
import json

import pytest
from PIL import Image

from seq2seq.config import TrackingConfig
from seq2seq.tracking import JsonlTracker, Tracker, make_tracker


def test_disabled_tracking_writes_only_the_local_log(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    tracker = make_tracker(TrackingConfig(), tmp_path, {"a": 1})
    assert isinstance(tracker, JsonlTracker)
    tracker.log({"loss": 1.5}, step=3)
    tracker.summary({"bleu": 30.0})
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["loss"] == 1.5 and lines[0]["step"] == 3 and lines[1] == {"summary": {"bleu": 30.0}}
    assert not (tmp_path / "wandb").exists()


def test_wandb_offline_run_writes_table_and_images(tmp_path, monkeypatch):
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.delenv("WANDB_MODE")  # the default is offline: no account, no network
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tracker = make_tracker(TrackingConfig(project="test"), run_dir, {"model": {"attention": "bahdanau"}})
    assert not isinstance(tracker, JsonlTracker) and isinstance(tracker, Tracker)
    tracker.log({"train/loss": 2.0}, step=1)
    tracker.table("valid/samples", ["source", "references", "hypothesis"], [["hi", "salut", "salut"]], step=1)
    tracker.images("valid/attention", [(Image.new("RGB", (20, 10), "white"), "salut")], step=1)
    tracker.lines("gradient_flow/by_distance", {"len_1-9": [1.0, 0.5], "len_10-19": [2.0, 1.0, 0.1]},
                  "distance", step=1)
    tracker.summary({"test_bleu_beam": 31.5})
    tracker.finish()
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    media = runs[0] / "files" / "media"
    assert list(media.glob("table/valid/samples_*.table.json"))
    assert list(media.glob("images/valid/attention_*.png"))
    assert list(media.glob("table/gradient_flow/by_distance_table_*.table.json"))
    records = b"".join(p.read_bytes() for p in runs[0].glob("run-*.wandb"))  # offline: the run's log
    assert b"test_bleu_beam" in records and b"train/loss" in records
    assert (run_dir / "wandb_id.txt").exists()
    local = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"step": 1, "gradient_flow/by_distance": {"len_1-9": [1.0, 0.5], "len_10-19": [2.0, 1.0, 0.1]}}.items() \
        <= next(r for r in local if "gradient_flow/by_distance" in r).items()


def test_a_metrics_log_cut_by_a_crash_reads_on_and_the_resumed_run_starts_a_new_line(tmp_path):
    from seq2seq.tracking import logged_rows

    log = tmp_path / "metrics.jsonl"
    JsonlTracker(log).log({"loss": 2.0}, step=1)
    with open(log, "a", encoding="utf-8") as f:
        f.write('{"step": 2, "lo')  # the process died mid-write
    resumed, beside = JsonlTracker(log), JsonlTracker(log)  # e.g. a probe's tracker opened on the same log
    resumed.log({"loss": 1.5}, step=2)
    beside.log({"loss": 1.0}, step=3)
    assert [(r["step"], r["loss"]) for r in logged_rows(log, "loss")] == [(1, 2.0), (2, 1.5), (3, 1.0)]
    assert "" not in log.read_text(encoding="utf-8").splitlines()  # one new line after the cut, not two
    assert log.read_text(encoding="utf-8").splitlines()[1] == '{"step": 2, "lo'  # kept, never rewritten


def test_gradient_flow_plots_read_a_log_cut_by_a_crash(tmp_path):
    from seq2seq.study.plots import _flow_records

    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 0, "gradient_flow/seconds": 0.5}\n{"step": 0, "gradient_flow/by_distance": {"x": [1.0]}}\n'
        '{"step": 5, "gradient_flow/by_distance": {"x": [1.', encoding="utf-8")
    flow = {"step": 0, "gradient_flow/seconds": 0.5, "gradient_flow/by_distance": {"x": [1.0]}}
    assert _flow_records(tmp_path) == [flow]


def test_a_session_that_logs_a_step_again_replaces_the_earlier_sessions_lines_from_it_on(tmp_path):
    """A run resumed from a checkpoint at step 4 after dying at step 6, then a failed run retried
    from scratch: readers see the timeline the weights come from, in step order."""
    from seq2seq.tracking import logged_rows

    log = tmp_path / "metrics.jsonl"
    first = JsonlTracker(log)
    for step in (2, 4, 6):
        first.log({"loss": 10.0 + step}, step=step)
    first.summary({"loss": "not a row: no step"})
    resumed = JsonlTracker(log)
    for step in (6, 8):
        resumed.log({"loss": float(step)}, step=step)
    assert [(r["step"], r["loss"]) for r in logged_rows(log, "loss")] == [(2, 12.0), (4, 14.0), (6, 6.0), (8, 8.0)]
    JsonlTracker(log).log({"loss": 0.5}, step=2)  # started anew
    assert [(r["step"], r["loss"]) for r in logged_rows(log, "loss")] == [(2, 0.5)]


def test_validation_draws_attention_only_for_a_tracker_that_keeps_images(toy_run, monkeypatch):
    """Heatmaps cost matplotlib and a figure each: drawn for W&B, not for the local log alone."""
    from seq2seq.data.corpora import Example
    from seq2seq.tasks import translation
    from seq2seq.tasks.translator import Translator

    translator = Translator.load(toy_run, device="cpu")
    valid = [Example("the cat eats the bread", ["le chat mange le pain"]),
             Example("a dog sees a bird", ["un chien voit un oiseau"])]

    class Keeping(Tracker):
        keeps_images = True

        def __init__(self):
            self.logged = []

        def images(self, name, images, step):
            self.logged.append((name, len(images), step))

    class Trainer:  # what the validator reads of the trainer
        model, device = translator.model, translator.device
        autocast = staticmethod(contextlib.nullcontext)  # fp32
        progress = type("P", (), {"step": 7})()

    keeping = Keeping()
    translation.Validator(translator.cfg, translator, valid, keeping)(Trainer())
    assert keeping.logged == [("valid/attention", 2, 7)]
    monkeypatch.setattr(translation.Validator, "plot_attention", lambda *a: pytest.fail("drew unkept images"))
    metrics = translation.Validator(translator.cfg, translator, valid, Tracker())(Trainer())
    assert 0 <= metrics["bleu"] <= 100
