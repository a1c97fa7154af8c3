"""Fault injection with real processes, signals and files: busy and stale run folders, a full
disk, kill -9 and resume, non-finite weights, malformed user files. Each failure must be one
line on stderr, without a traceback, and nothing that existed before may be lost."""

import contextlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_model, toy_overrides, toy_pairs, write_tsv

from seq2seq.config import TrainConfig, load_config
from seq2seq.data.corpora import CorpusError
from seq2seq.tasks.captioning import load_captions
from seq2seq.tracking import Tracker
from seq2seq.train.checkpoints import load_checkpoint
from seq2seq.train.faults import RunLock
from seq2seq.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["train.max_steps=20", "train.valid_every=10"]


def _env():
    return {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def _command(run_dir: Path, *extra: str) -> list[str]:
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    return [sys.executable, str(ROOT / "experiments" / "translate.py"), "--run-dir", str(run_dir),
            *toy_overrides(run_dir.parent, *extra)]


def _train(run_dir: Path, *extra: str, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run(_command(run_dir, *extra), capture_output=True, text=True, env=_env(), timeout=300,
                          preexec_fn=preexec)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("wandb")]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def _snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != "metrics.jsonl"}


def test_a_second_launch_on_a_busy_folder_stops_at_once(tmp_path):
    run_dir = tmp_path / "run"
    lock = RunLock(run_dir)
    lock.acquire()  # this test process is "the first launch"
    try:
        started = time.monotonic()
        error = _one_line_error(_train(run_dir))
        assert f"run folder {run_dir} is in use by process {os.getpid()}" in error
        assert time.monotonic() - started < 60 and sorted(p.name for p in run_dir.iterdir()) == ["run.lock"]
    finally:
        lock.release()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(_command(run_dir, "train.max_steps=100000"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env())
    for _ in range(600):
        if (run_dir / "checkpoints" / "last.pt").is_file() or proc.poll() is not None:
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("the run saved no checkpoint")
    holder = (run_dir / "run.lock").read_text().strip()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert holder.startswith(f"process {proc.pid} ")
    again = _train(run_dir, "train.max_steps=100000", "train.time_budget=0.05")  # three seconds more
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"taking over the lock of {run_dir} left by {holder}, which has ended" in again.stdout
    assert not (run_dir / "run.lock").exists()  # released at exit


KILL_RUN = ["train.max_steps=120", "train.valid_every=60", "train.log_every=60",
            "train.checkpoint_minutes=0.003"]  # saves every 0.2 s


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """An uninterrupted run whose validation takes long enough to be killed in."""
    root = tmp_path_factory.mktemp("straight")
    extra = [*KILL_RUN, f"data.valid={write_tsv(root / 'big_valid.tsv', toy_pairs(1500, 2))}",
             "train.valid_sentences=1500"]
    proc = _train(root / "run", *extra)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root / "run", extra


def _kill_when(proc: subprocess.Popen, run_dir: Path, moment: str) -> None:
    """SIGKILL ``proc`` at ``moment``: mid-training, mid-checkpoint-write or mid-validation."""
    last = run_dir / "checkpoints" / "last.pt"
    if moment == "validation":  # the step-60 log line comes right before the validation at step 60
        for line in proc.stdout:
            if line.startswith("step 60 "):
                time.sleep(0.2)
                break
    while proc.poll() is None and not (last.is_file() and load_checkpoint(last)["progress"]["step"] >= 20):
        time.sleep(0.01)
    if moment == "checkpoint":  # the temporary file of an atomic write exists only while it is written
        while proc.poll() is None and not list(last.parent.glob(".*.tmp")):
            time.sleep(0.0005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("moment", ["step", "checkpoint", "validation"])
def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path, straight_run, moment):
    straight, extra = straight_run
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(_command(run_dir, *extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=_env())
    _kill_when(proc, run_dir, moment)
    last = run_dir / "checkpoints" / "last.pt"
    killed_at = load_checkpoint(last)["progress"]["step"]
    assert 20 <= killed_at < 120
    if moment == "validation":
        assert killed_at < 60  # killed before the validation at step 60 could save
    if moment == "checkpoint":
        assert list(last.parent.glob(".*.tmp"))  # the write was cut short
    resumed = _train(run_dir, *extra)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not list(run_dir.rglob(".*.tmp"))  # a write the kill cut short is cleaned away, never read
    assert f"resuming from {last} at step {killed_at}" in resumed.stdout
    a = load_checkpoint(straight / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(last)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    results = json.loads((run_dir / "results.json").read_text())  # the cost counts both sessions
    assert results["total_minutes"] >= results["train_minutes"] > 0


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_is_one_line_and_the_last_checkpoint_survives(tmp_path):
    run_dir = tmp_path / "run"
    first = _train(run_dir, "train.max_steps=20", "train.valid_every=10")
    assert first.returncode == 0, first.stderr[-2000:]
    last = run_dir / "checkpoints" / "last.pt"
    before = _snapshot(run_dir)
    full = _train(run_dir, "train.max_steps=40", "train.valid_every=10",
                  preexec=_file_size_limit(last.stat().st_size // 2))
    error = _one_line_error(full)
    assert f"cannot write {run_dir}/checkpoints/" in error and "File too large" in error
    assert f"{last} still holds step 20 and the run resumes from it with the same command" in error
    after = _snapshot(run_dir)
    assert {p: after[p] for p in before if p.parent.name == "checkpoints"} == \
        {p: b for p, b in before.items() if p.parent.name == "checkpoints"}
    assert not list(last.parent.glob(".*.tmp"))
    resumed = _train(run_dir, "train.max_steps=40", "train.valid_every=10")
    assert resumed.returncode == 0 and load_checkpoint(last)["progress"]["step"] == 40


@contextlib.contextmanager
def _read_only(folder: Path):
    """``folder`` read-only: a read-only bind mount for root (who writes through permissions),
    else permission bits."""
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0
        if not mounted:
            pytest.skip("root without mount: cannot make a folder read-only")
        try:
            subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True, capture_output=True)
            yield "Read-only file system"
        finally:
            subprocess.run(["umount", str(folder)], check=True)
        return
    dirs = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
    for d in dirs:
        d.chmod(0o555)
    try:
        yield "Permission denied"
    finally:
        for d in dirs:
            d.chmod(0o755)


def test_a_read_only_run_folder_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    first = _train(run_dir, "train.max_steps=10", "train.valid_every=10")
    assert first.returncode == 0, first.stderr[-2000:]
    before = _snapshot(run_dir)
    with _read_only(run_dir) as cause:
        error = _one_line_error(_train(run_dir, "train.max_steps=20", "train.valid_every=10"))
        assert f"{run_dir}" in error and cause in error
    assert _snapshot(run_dir) == before


def test_non_finite_weights_are_never_saved(tmp_path):
    model = tiny_model("gru", "luong_general")
    trainer = Trainer(model, None, TrainConfig(device="cpu"), tmp_path, Tracker(), lambda t: {"score": 0.0}, {})
    trainer.save("last")
    good = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    with torch.no_grad():
        model.decoder.out.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="parameter decoder.out.weight is not finite"):
        trainer.save("last")
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == good


def test_a_tsv_that_is_not_utf8_names_the_file_and_line(tmp_path):
    corpus = write_tsv(tmp_path / "corpus.tsv", toy_pairs(400, 5))
    lines = corpus.read_bytes().split(b"\n")
    lines[2] = b"caf\xe9 au lait\tcaf\xe9 au lait"  # Latin-1
    lines[6] = b"no tab on this line"
    corpus.write_bytes(b"\n".join(lines))
    error = _one_line_error(_train(tmp_path / "run", f"data.train={corpus}", *QUICK))
    assert f"{corpus}:3: not UTF-8 (byte 0xe9 at column 4)" in error and "data.skip_bad_lines=true" in error
    assert not (tmp_path / "run" / "checkpoints").exists()
    skipped = _train(tmp_path / "run2", f"data.train={corpus}", "data.skip_bad_lines=true", *QUICK)
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert f"{corpus}: skipped 1 line(s) not UTF-8 (line 3)" in skipped.stderr
    assert f"{corpus}: skipped 1 line(s) without source<TAB>target (line 7)" in skipped.stderr


def test_aligned_files_that_differ_in_length_are_one_line(tmp_path):
    (tmp_path / "a.en").write_text("one\ntwo\nthree\n")
    (tmp_path / "a.fr").write_text("un\ndeux\n")
    error = _one_line_error(_train(tmp_path / "run", f"data.train={tmp_path / 'a.en'},{tmp_path / 'a.fr'}", *QUICK))
    assert f"{tmp_path / 'a.en'} has 3 lines but {tmp_path / 'a.fr'} has 2: not aligned" in error


def test_caption_files_naming_missing_images(tmp_path):
    (tmp_path / "cat.png").write_bytes(b"")
    rows = [f"img{i}.png\ta picture number {i}" for i in range(40)]
    (tmp_path / "captions.tsv").write_text("image\tcaption\ncat.png\ta cat\n" + "\n".join(rows) + "\n")
    for i in range(0, 40, 2):
        (tmp_path / f"img{i}.png").write_bytes(b"")
    cfg = load_config(None, ["captions.corpus=table", f"captions.captions={tmp_path / 'captions.tsv'}"])
    with pytest.raises(CorpusError, match=r"20 image\(s\) named in .*captions.tsv do not exist, e.g. .*img1.png"):
        load_captions(cfg)
    cfg.captions.skip_missing_images = True
    corpus = load_captions(cfg)
    assert len(corpus.train) + len(corpus.valid) + len(corpus.test) == 21
    (tmp_path / "latin1.tsv").write_bytes(b"image\tcaption\ncat.png\tun caf\xe9\n")
    cfg = load_config(None, ["captions.corpus=table", f"captions.captions={tmp_path / 'latin1.tsv'}"])
    with pytest.raises(CorpusError, match=r"latin1.tsv:2: not UTF-8 \(byte 0xe9"):
        load_captions(cfg)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "fewer rows"])
def test_a_damaged_feature_cache_is_rebuilt_with_a_message(tmp_path, monkeypatch, capsys, damage):
    from seq2seq.data.captions import shapes_corpus
    from seq2seq.data.images import ImageTransform
    from seq2seq.models.encoders import ImageEncoder
    from seq2seq.tasks.features import cached_grids
    from seq2seq.train.checkpoints import save_checkpoint

    monkeypatch.setenv("SEQ2SEQ_CACHE", str(tmp_path / "cache"))
    corpus = shapes_corpus(tmp_path / "shapes", n=6, size=32)
    paths = [ex.image for ex in corpus.train + corpus.valid + corpus.test]
    torch.manual_seed(0)
    encoder = ImageEncoder("resnet18", weights="none").eval()
    args = (encoder, paths, ImageTransform(32, 32), torch.device("cpu"), None)
    grids = cached_grids(*args)
    entry, = (tmp_path / "cache" / "features").glob("*.pt")
    if damage == "truncate":  # a write cut short (by a copy, a disk) that still sits under the entry's name
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 3])
    elif damage == "garbage":
        entry.write_bytes(random.Random(0).randbytes(4096))
    else:
        save_checkpoint(entry, {"grids": grids[:-1], "files": len(paths)})
    capsys.readouterr()
    again = cached_grids(*args)
    assert torch.equal(again, grids)
    assert f"feature cache {entry} is damaged" in capsys.readouterr().out
    assert torch.equal(cached_grids(*args), grids) and "damaged" not in capsys.readouterr().out


def test_a_damaged_index_of_a_rendered_set_is_rendered_again(tmp_path, capsys):
    from seq2seq.data.emoji import _cached_index

    def render(folder: Path) -> None:
        (folder / "index.json").write_text('["images/a.png"]')

    (tmp_path / "index.json").write_text('["images/a.png", "ima')  # cut short
    assert _cached_index(tmp_path, render) == ["images/a.png"]
    assert f"cached index {tmp_path / 'index.json'} is damaged" in capsys.readouterr().out
    assert _cached_index(tmp_path, lambda folder: pytest.fail("rendered twice")) == ["images/a.png"]


@pytest.mark.parametrize("corpus,content,message", [
    ("karpathy", '{"images": [{"filename": "a.png", "split": "train", "sentences": [{"raw": "a cat"}]},'
                 ' {"filename": "b.png", "split": "train"}]}',
     r"not a Karpathy split file: images\[1\] has no .*'sentences'"),
    ("karpathy", '{"images": [{"filename": "a.png", "split": "train", "sentences": [{"raw": "a', r"is not valid JSON"),
    ("coco", '{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1, "caption": "a cat"},'
             ' {"image_id": 7, "caption": "a dog"}]}', r"not a COCO captions file: annotations\[1\] has no .*7"),
    ("coco", '{"annotations": []}', r"not a COCO captions file: the top level has no .*'images'"),
])
def test_malformed_caption_json_names_the_file_and_entry(tmp_path, corpus, content, message):
    (tmp_path / "captions.json").write_text(content)
    cfg = load_config(None, [f"captions.corpus={corpus}", f"captions.captions={tmp_path / 'captions.json'}"])
    with pytest.raises(CorpusError, match=message) as err:
        load_captions(cfg)
    assert str(tmp_path / "captions.json") in str(err.value) and "\n" not in str(err.value)
