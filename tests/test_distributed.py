"""Data-parallel training with real processes on gloo: two ranks make the update one process
makes on the union of their batches."""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import padded_batch, tiny_model

from seq2seq.config import ImageConfig, ModelConfig, TrainConfig
from seq2seq.data.batching import collate
from seq2seq.models.model import build_captioning_model
from seq2seq.tasks.captioning import CaptionBatch
from seq2seq.tracking import Tracker
from seq2seq.train.distributed import SINGLE, Dist, from_environment, leave
from seq2seq.train.trainer import Trainer

# SGD: its update is the gradient itself. Adam's first update is about lr * sign(gradient), which
# turns rounding noise in a near-zero gradient into a difference of up to lr.
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
    dist = from_environment("cpu")
    try:
        _step(kind, dist, out)
    finally:
        leave()


@pytest.mark.parametrize("kind", ["text", "image"])
def test_two_ranks_make_the_update_of_one_process_on_both_batches(tmp_path, kind):
    mp.spawn(_worker, args=(2, free_port(), kind, tmp_path), nprocs=2)
    _step(kind, SINGLE, tmp_path)
    single = torch.load(tmp_path / f"{kind}_single.pt")
    ranks = [torch.load(tmp_path / f"{kind}_{r}.pt") for r in (0, 1)]
    for name, want in single["state"].items():
        for r in ranks:
            torch.testing.assert_close(r["state"][name], want, atol=1e-5, rtol=1e-5, msg=name)
    assert all(r["loss"] == pytest.approx(single["loss"], rel=1e-5) for r in ranks)
    assert all(r["tokens"] == single["tokens"] and r["examples"] == single["examples"] == 5 for r in ranks)
    changed = _model(kind).state_dict()
    assert any(not torch.equal(changed[k], v) for k, v in single["state"].items())  # the step did something
