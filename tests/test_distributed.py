"""Data-parallel training with real processes on gloo: two ranks make the update one process
makes on the union of their batches."""

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from conftest import padded_batch, tiny_model, toy_overrides
from PIL import Image

from seq2seq.config import ImageConfig, ModelConfig, TrainConfig
from seq2seq.data.batching import collate
from seq2seq.data.images import ImageTransform
from seq2seq.models.encoders import ImageEncoder
from seq2seq.models.model import build_captioning_model
from seq2seq.tasks.captioning import CaptionBatch
from seq2seq.tasks.features import extract_grids
from seq2seq.tracking import Tracker
from seq2seq.train.checkpoints import load_checkpoint
from seq2seq.train.distributed import SINGLE, Dist, end_rank, join, leave
from seq2seq.train.trainer import Trainer

# SGD: its update is the gradient itself. Adam's first update is about lr * sign(gradient), which
# turns rounding noise in a near-zero gradient into a difference of up to lr.
ROOT = Path(__file__).resolve().parents[1]
CFG = TrainConfig(time_budget=None, max_steps=1, precision="fp32", device="cpu", optimizer="sgd", lr=0.5,
                  clip_norm=0.5, label_smoothing=0.1, attention_reg=1.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _text_batches() -> list:
    """Two batches of different sizes and lengths, and their union."""
    g = torch.Generator().manual_seed(1)
    src, lens = padded_batch([5, 3, 7, 2, 6], vocab=20, seed=2)
    pairs = [(src[i, :n].tolist(), torch.randint(4, 24, (int(n) % 4 + 2,), generator=g).tolist())
             for i, n in enumerate(lens.tolist())]
    a, b = pairs[:2], pairs[2:]
    return [collate(*map(list, zip(*part))) for part in (a, b, a + b)]


def _image_batches() -> list:
    g = torch.Generator().manual_seed(3)
    grids = torch.randn(5, 4, 1280, generator=g)  # cached mobilenet_v2 grids: 4 cells of 1280 channels
    caption = collate([[4]] * 5, [torch.randint(4, 15, (n,), generator=g).tolist() for n in (3, 5, 2, 4, 6)])
    parts = [slice(0, 3), slice(3, 5), slice(0, 5)]
    return [CaptionBatch(grids[s], *(_unpad(t[s]) for t in (caption.tgt_in, caption.tgt_out))) for s in parts]


def _unpad(t: torch.Tensor) -> torch.Tensor:
    """Drop all-padding columns (each batch is as long as its longest caption)."""
    return t[:, : int((t != 0).sum(dim=1).max())]


def _model(kind: str):
    if kind == "text":
        return tiny_model("gru", "bahdanau", src_vocab=20, tgt_vocab=24, seed=0)
    torch.manual_seed(0)
    cfg = ModelConfig(emb_dim=8, enc_hidden=6, dec_hidden=10, attention="bahdanau", attention_dim=7, readout_dim=5,
                      dropout=0.0)
    return build_captioning_model(cfg, ImageConfig(weights="none"), 15)


def _step(kind: str, dist: Dist, out: Path) -> None:
    model = _model(kind)
    batches = _text_batches() if kind == "text" else _image_batches()
    trainer = Trainer(model, None, CFG, out, Tracker(), lambda t: {"score": 0.0}, {}, dist=dist)
    stats = trainer.train_step(batches[2] if dist is SINGLE else batches[dist.rank])
    torch.save({"state": model.state_dict(), "loss": stats.loss, "tokens": stats.tokens, "examples": stats.examples},
               out / f"{kind}_{'single' if dist is SINGLE else dist.rank}.pt")


def _worker(rank: int, world: int, port: int, kind: str, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    _as_a_rank(lambda: _step(kind, join("cpu"), out))


def _as_a_rank(work: Callable[[], None]) -> None:
    """Do ``work`` in a spawned rank, then end the process as a real rank ends (``end_rank``:
    no interpreter teardown, which can abort in gloo's worker threads); an error is raised."""
    try:
        work()
    except BaseException:
        leave()
        raise
    end_rank(0)


@pytest.mark.parametrize("kind", ["text", "image"])
def test_two_ranks_make_the_update_of_one_process_on_both_batches(tmp_path, kind):
    mp.spawn(_worker, args=(2, free_port(), kind, tmp_path), nprocs=2)
    _step(kind, SINGLE, tmp_path)
    single = torch.load(tmp_path / f"{kind}_single.pt", weights_only=True)
    ranks = [torch.load(tmp_path / f"{kind}_{r}.pt", weights_only=True) for r in (0, 1)]
    for name, want in single["state"].items():
        for r in ranks:
            torch.testing.assert_close(r["state"][name], want, atol=1e-5, rtol=1e-5, msg=name)
    assert all(r["loss"] == pytest.approx(single["loss"], rel=1e-5) for r in ranks)
    assert all(r["tokens"] == single["tokens"] and r["examples"] == single["examples"] == 5 for r in ranks)
    changed = _model(kind).state_dict()
    assert any(not torch.equal(changed[k], v) for k, v in single["state"].items())  # the step did something


def _env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _translate_command(run_dir: Path, *extra: str) -> list[str]:
    return [str(ROOT / "experiments" / "translate.py"), "--run-dir", str(run_dir),
            *toy_overrides(run_dir.parent, *extra)]


def test_a_two_process_run_is_interrupted_resumed_alone_and_translates(tmp_path):
    run_dir, extra = tmp_path / "run", ["train.max_steps=80", "train.valid_every=20", "train.log_every=10"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}"]
    proc = subprocess.Popen([*torchrun, *_translate_command(run_dir, *extra)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env())
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("validation at step 20"):
            proc.send_signal(signal.SIGINT)  # as Ctrl-C in a terminal: torchrun passes it to both ranks
            break
    seen += proc.stdout.readlines()
    proc.wait(timeout=120)
    output = "".join(seen)
    assert sum(line.startswith("validation at step 20") for line in seen) == 1, output  # rank 0 alone logs
    stopped = load_checkpoint(run_dir / "checkpoints" / "last.pt")["progress"]
    assert 20 <= stopped["step"] < 80 and f"stopping at step {stopped['step']}" in output, output
    assert not (run_dir / "results.json").exists()

    refused = subprocess.run([sys.executable, *_translate_command(run_dir, *extra)], capture_output=True, text=True,
                             env=_env(), timeout=300)  # one process would take half the batch per step
    assert refused.returncode == 2 and "processes 2 -> 1 mid-run" in refused.stderr, refused.stderr[-2000:]
    extra.append("train.allow_mismatched_resume=true")  # asked for explicitly
    resumed = subprocess.run([sys.executable, *_translate_command(run_dir, *extra)], capture_output=True, text=True,
                             env=_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"at step {stopped['step']}" in resumed.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["train_steps"] == 80 and "test_bleu_beam" in results
    assert results["processes"] == "2 + 1" and results["training_sessions"] == 2  # the summary flags it
    tool = subprocess.run([sys.executable, str(ROOT / "tools" / "translate.py"), str(run_dir)], input="the cat\n",
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert tool.returncode == 0 and tool.stdout.strip(), tool.stderr


def test_two_nodes_meet_at_a_rendezvous_on_loopback(tmp_path):
    run_dir, port = tmp_path / "run", free_port()
    extra = ["train.max_steps=20", "train.valid_every=10"]
    logs = [tmp_path / f"node{i}.log" for i in range(2)]  # files, not pipes: a node never blocks on its output
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=loopback",
                               *_translate_command(run_dir, *extra)],
                              stdout=log.open("w"), stderr=subprocess.STDOUT, text=True, env=_env())
             for log in logs]
    try:
        for node in nodes:
            node.wait(timeout=240)
    finally:
        for node in nodes:
            node.kill()
    outputs = [log.read_text() for log in logs]
    assert all(node.returncode == 0 for node in nodes), [out[-3000:] for out in outputs]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["processes"] == 2 and results["train_steps"] == 20
    assert sum("test BLEU" in out for out in outputs) == 1  # one node holds rank 0


def _extract(d: Dist, folder: Path) -> None:
    torch.manual_seed(0)
    encoder = ImageEncoder("mobilenet_v2", grid_block=6, weights=None)
    paths = sorted(folder.glob("*.png"))
    grids = extract_grids(encoder, paths, ImageTransform(resize=64, crop=64), torch.device("cpu"), None,
                          batch_size=3)
    torch.save(grids, folder / f"grids_{'single' if d is SINGLE else d.rank}.pt")


def _extract_worker(rank: int, world: int, port: int, folder: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    _as_a_rank(lambda: _extract(join("cpu"), folder))


def test_feature_extraction_shared_by_two_ranks_equals_one_process(tmp_path):
    for i in range(8):  # 8 images in batches of 3: rank 0 takes batches 0 and 2, rank 1 batch 1
        Image.new("RGB", (40 + 5 * i, 48), (30 * i, 255 - 30 * i, 100)).save(tmp_path / f"img{i}.png")
    mp.spawn(_extract_worker, args=(2, free_port(), tmp_path), nprocs=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks: a convolution's rounding may depend on the thread count
    try:
        _extract(SINGLE, tmp_path)
    finally:
        torch.set_num_threads(threads)
    single = torch.load(tmp_path / "grids_single.pt", weights_only=True)
    assert single.shape[0] == 8
    for r in (0, 1):
        assert torch.equal(torch.load(tmp_path / f"grids_{r}.pt", weights_only=True), single)


def test_a_study_runs_data_parallel_under_torchrun(tmp_path):
    study = tmp_path / "pair.yaml"
    study.write_text(yaml.safe_dump({
        "task": "translation", "overrides": toy_overrides(tmp_path, "train.valid_every=5"),
        "budget": {"max_steps": 10}, "runs": {"gru": [], "rnn": ["model.enc_cell=rnn", "model.dec_cell=rnn"]}}))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={free_port()}", str(ROOT / "experiments" / "study.py"), str(study),
                           "--root", str(tmp_path / "studies")], capture_output=True, text=True, env=_env(),
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    folder = tmp_path / "studies" / "pair"
    for name in ("gru", "rnn"):
        results = json.loads((folder / name / "results.json").read_text())
        assert results["processes"] == 2 and results["train_steps"] == 10
    assert "| `gru` | finished | 1 |" in (folder / "summary.md").read_text()
    assert proc.stdout.count("summary: ") == 1  # rank 0 alone reports


def _stalling_worker(rank: int, world: int, port: int, out: Path) -> None:
    """Rank 1 stops taking part after two steps (as a rank stuck in I/O would); rank 0 must fail
    within train.collective_timeout with a line naming itself and the step, not hang."""
    import dataclasses
    import time

    from test_training import _data

    from seq2seq.train.faults import CollectiveTimeout

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = dataclasses.replace(CFG, max_steps=10, valid_every=100, collective_timeout=0.05)  # 3 seconds
    dist = join("cpu", cfg.collective_timeout)
    try:
        trainer = Trainer(tiny_model("gru", "bahdanau"), _data(), cfg, out / f"rank{rank}", Tracker(),
                          lambda t: {"score": 0.0}, {}, dist=dist)
        if rank == 1:
            real = trainer.train_step
            trainer.train_step = lambda batch: time.sleep(30) if trainer.progress.step == 2 else real(batch)
        started = time.monotonic()
        try:
            trainer.train()
        except CollectiveTimeout as err:
            (out / f"error{rank}.txt").write_text(f"{time.monotonic() - started:.1f}\n{err}\n")
    finally:
        if rank == 0:
            os._exit(0)  # the peer is still asleep: do not wait for it at the group's teardown
        leave()


def test_a_stalled_collective_is_an_error_naming_the_rank_and_step(tmp_path):
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_stalling_worker, args=(r, 2, port, tmp_path), daemon=True) for r in (0, 1)]
    for p in procs:
        p.start()
    procs[0].join(timeout=120)
    for p in procs:
        p.kill()
    seconds, message = (tmp_path / "error0.txt").read_text().split("\n", 1)
    assert float(seconds) < 60, seconds
    assert "rank 0 of 2 stopped after step 2" in message and "train.collective_timeout=0.05 min" in message
    assert "\n" not in message.strip()


def test_on_gpus_the_group_serves_cpu_tensors_too(monkeypatch):
    """Without a GPU: what join() would set up on one. The trainer's collectives share CPU
    tensors (loss and token counts, stop decisions), which NCCL alone cannot carry."""
    import torch.distributed as tdist

    from seq2seq.config import ConfigError
    from seq2seq.train import distributed

    calls = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.setdefault("device", i))
    monkeypatch.setattr(tdist, "init_process_group", lambda backend, timeout: calls.setdefault("backend", backend))
    monkeypatch.setattr(tdist, "new_group", lambda backend, timeout: calls.setdefault("setup group", backend))
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(distributed, "current", lambda: SINGLE)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    join("auto")
    assert calls == {"device": 1, "backend": "cpu:gloo,cuda:nccl", "setup group": "gloo"}
    assert distributed.backend("cpu") == "gloo"
    with pytest.raises(ConfigError, match="each process takes cuda:LOCAL_RANK"):
        join("cuda:0")
    monkeypatch.setenv("LOCAL_RANK", "2")  # three processes on a node with two GPUs
    with pytest.raises(ConfigError, match="process 2 on this node has no GPU of its own: 2 GPUs"):
        join("auto")


def _slow_setup_worker(rank: int, world: int, port: int, folder: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    import time

    from seq2seq.train.distributed import main_first

    def work() -> None:
        join("cpu", timeout_minutes=0.02)  # collectives of training give up after 1.2 s
        with main_first():
            if rank == 0:
                time.sleep(4)  # fetching and encoding a corpus takes as long as it takes
        (folder / f"ready{rank}").write_text("ok")

    _as_a_rank(work)


def test_the_other_ranks_wait_for_rank_0_to_prepare_the_data_beyond_the_collective_timeout(tmp_path):
    mp.spawn(_slow_setup_worker, args=(2, free_port(), tmp_path), nprocs=2)
    assert (tmp_path / "ready0").is_file() and (tmp_path / "ready1").is_file()


def _cached_worker(rank: int, world: int, port: int, folder: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), SEQ2SEQ_CACHE=str(folder / f"cache{rank}"))  # node-local caches
    torch.set_num_threads(1)
    from seq2seq.tasks.features import cached_grids

    def work() -> None:
        join("cpu", timeout_minutes=0.2)
        torch.manual_seed(0)
        encoder = ImageEncoder("mobilenet_v2", grid_block=6, weights=None)
        grids = cached_grids(encoder, sorted(folder.glob("*.png")), ImageTransform(resize=64, crop=64),
                             torch.device("cpu"), None)
        torch.save(grids, folder / f"grids_{rank}.pt")

    _as_a_rank(work)


def test_ranks_whose_feature_caches_differ_extract_together(tmp_path):
    """Rank 0's node has the features cached, rank 1's does not: both extract (together), rather
    than rank 0 reading its cache while rank 1 waits for it in a collective."""
    for i in range(4):
        Image.new("RGB", (48, 48), (60 * i, 100, 200 - 40 * i)).save(tmp_path / f"img{i}.png")
    mp.spawn(_cached_worker, args=(2, free_port(), tmp_path), nprocs=2)  # rank 0 saves the cache, on its node
    assert list((tmp_path / "cache0" / "features").glob("*.pt")) and not list((tmp_path / "cache1").rglob("*.pt"))
    (tmp_path / "grids_1.pt").unlink()
    mp.spawn(_cached_worker, args=(2, free_port(), tmp_path), nprocs=2)
    assert torch.equal(torch.load(tmp_path / "grids_0.pt", weights_only=True),
                       torch.load(tmp_path / "grids_1.pt", weights_only=True))


def test_a_two_process_run_interrupted_and_resumed_with_two_ends_as_the_uninterrupted_run(tmp_path):
    """Dropout masks drawn on each rank are a function of the seed, the rank and the step, so a
    data-parallel resume is bit-identical, like a single-process one."""
    extra = ["train.max_steps=16", "train.valid_every=4", "train.log_every=4", "model.dropout=0.3"]

    def torchrun(run_dir: Path) -> subprocess.Popen:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
                   *_translate_command(run_dir, *extra)]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())

    whole, cut = tmp_path / "a" / "run", tmp_path / "b" / "run"
    for run_dir in (whole, cut):
        run_dir.parent.mkdir()
    assert torchrun(whole).wait(timeout=300) == 0
    proc = torchrun(cut)
    for line in proc.stdout:
        if line.startswith("validation at step 4"):
            proc.send_signal(signal.SIGINT)
            break
    proc.communicate(timeout=120)
    stopped = load_checkpoint(cut / "checkpoints" / "last.pt")["progress"]["step"]
    assert 4 <= stopped < 16
    resumed = torchrun(cut)
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0 and f"at step {stopped}" in output, output[-2000:]
    want, got = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (whole, cut))
    assert want["progress"]["step"] == got["progress"]["step"] == 16
    for name, tensor in want["model"].items():
        assert torch.equal(got["model"][name], tensor), name
