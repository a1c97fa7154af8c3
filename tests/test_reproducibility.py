"""Runs worth comparing: seeded, scored at the precision the tools serve, finished runs left alone."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import toy_overrides, toy_translation

from seq2seq.experiment import RunFinished
from seq2seq.tasks.translator import Translator
from seq2seq.train.checkpoints import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SHORT = ("train.max_steps=20", "train.valid_every=10", "model.dropout=0.3", "train.teacher_forcing=0.8")


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def test_the_seed_decides_weights_dropout_and_sampling(tmp_path):
    first = toy_translation(tmp_path / "a" / "run", *SHORT)
    toy_translation(tmp_path / "b" / "run", *SHORT)
    toy_translation(tmp_path / "c" / "run", *SHORT, "train.seed=2")
    a, b, c = (_weights(tmp_path / name / "run") for name in "abc")
    assert first["seed"] == 1
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_each_rank_step_and_seed_draws_its_own_stream():
    """Data-parallel ranks are reseeded at every step: no two (seed, rank, step) share a stream, and
    the next seed is not the same stream shifted by a step."""
    from seq2seq.runtime import seed_rank

    def draw(seed, rank, step):
        seed_rank(seed, rank, step)
        return tuple(torch.rand(4).tolist())

    keys = [(seed, rank, step) for seed in (1, 2) for rank in (0, 1) for step in range(5)]
    assert len({draw(*k) for k in keys}) == len(keys)
    assert draw(1, 0, 3) == draw(1, 0, 3)


def test_the_translate_tool_prints_what_was_scored(tmp_path):
    run_dir = tmp_path / "run"
    results = toy_translation(run_dir, "train.precision=bf16", "train.max_steps=150", "search.batch_size=8")
    assert results["precision"] == results["eval_precision"] == "bf16"
    assert Translator.load(run_dir, device="cpu").amp_dtype == torch.bfloat16  # the precision it was scored at
    assert Translator.load(run_dir, device="cpu", precision="fp32").amp_dtype is None
    with open(run_dir / "test.src.txt", encoding="utf-8") as src:
        proc = subprocess.run([sys.executable, str(ROOT / "tools" / "translate.py"), str(run_dir)], stdin=src,
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (run_dir / "test.beam3.txt").read_text(encoding="utf-8")


def test_a_finished_run_folder_is_left_untouched(tmp_path):
    run_dir = tmp_path / "run"
    toy_translation(run_dir, "train.max_steps=20", "train.valid_every=10")
    stamps = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "translate.py"), "--run-dir", str(run_dir),
                           *toy_overrides(tmp_path, "train.max_steps=20", "train.valid_every=10")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "holds a finished run (max_steps=20 reached)" in proc.stdout
    assert stamps == {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}

    more = toy_translation(run_dir, "train.max_steps=30", "train.valid_every=10")  # asking for more continues
    assert more["train_steps"] == 30 and more["stop_reason"] == "max_steps=30 reached"


def test_a_finished_run_without_results_is_evaluated_not_trained(tmp_path):
    run_dir = tmp_path / "run"
    toy_translation(run_dir, "train.max_steps=20", "train.valid_every=10")
    (run_dir / "results.json").unlink()  # e.g. the machine stopped during the test evaluation
    last = run_dir / "checkpoints" / "last.pt"
    stamp = last.stat().st_mtime_ns
    results = toy_translation(run_dir, "train.max_steps=20", "train.valid_every=10")
    assert results["train_steps"] == 20 and last.stat().st_mtime_ns == stamp
    with pytest.raises(RunFinished, match="finished run"):
        toy_translation(run_dir, "train.max_steps=20", "train.valid_every=10")
