"""Shared fixtures: tiny seeded models and a tiny trained translation run."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from seq2seq.config import ModelConfig
from seq2seq.models.model import Seq2Seq, build_translation_model

CELLS = ["rnn", "gru", "lstm"]
ATTENTIONS = ["none", "bahdanau", "luong_dot", "luong_general"]


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same random state, whichever tests ran before it (or alone)."""
    torch.manual_seed(0)
    random.seed(0)


def tiny_model(cell: str = "gru", attention: str = "luong_general", input_feeding: bool = False,
               src_vocab: int = 20, tgt_vocab: int = 24, seed: int = 0, **kw) -> Seq2Seq:
    """Embedding 10, hidden 6 per direction (decoder 12), as JoeyNMT's tests do."""
    torch.manual_seed(seed)
    cfg = ModelConfig(**{"emb_dim": 10, "enc_hidden": 6, "dec_hidden": 12, "enc_cell": cell, "dec_cell": cell,
                         "attention": attention, "input_feeding": input_feeding, "attention_dim": 7,
                         "readout_dim": 5, "dropout": 0.0, **kw})
    return build_translation_model(cfg, src_vocab, tgt_vocab).eval()


def padded_batch(lens: list[int], vocab: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random source ids (>= 4, so no special tokens) padded with 0, and their lengths."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, vocab, (len(lens), max(lens)), generator=g)
    for i, n in enumerate(lens):
        src[i, n:] = 0
    return src, torch.tensor(lens)


LEXICON = {"the": "le", "cat": "chat", "dog": "chien", "eats": "mange", "sees": "voit", "big": "grand",
           "small": "petit", "fish": "poisson", "bird": "oiseau", "red": "rouge", "a": "un", "sleeps": "dort"}


def toy_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """Word-for-word toy 'translations' for end-to-end runs on user files."""
    rng = random.Random(seed)
    words = list(LEXICON)
    pairs = []
    for _ in range(n):
        src = [rng.choice(words) for _ in range(rng.randint(2, 7))]
        pairs.append((" ".join(src), " ".join(LEXICON[w] for w in src)))
    return pairs


def write_tsv(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    return path


def toy_overrides(root: Path, *extra: str) -> list[str]:
    """Overrides of a tiny translation run on toy files written under ``root`` (fp32, 300 steps)."""
    return [
        "data.corpus=files", f"data.train={write_tsv(root / 'train.tsv', toy_pairs(2000, 1))}",
        f"data.valid={write_tsv(root / 'valid.tsv', toy_pairs(20, 2))}",
        f"data.test={write_tsv(root / 'test.tsv', toy_pairs(20, 3))}",
        "data.vocab_size=40", "data.batch_tokens=600", "model.emb_dim=32", "model.enc_hidden=32",
        "model.dec_hidden=64", "model.attention_dim=32", "train.time_budget=null", "train.max_steps=300",
        "train.valid_every=100", "train.warmup_steps=20", "train.lr=0.005",
        "train.precision=fp32", "tracking.enabled=false",
        "search.beam=3", *extra,
    ]


def toy_translation(run_dir: Path, *extra: str) -> dict:
    """Train and test a tiny translation run in ``run_dir`` as the experiment script does; its results."""
    from seq2seq.experiment import experiment_parser, prepare_run, write_results
    from seq2seq.tasks.translation import run

    run_dir.parent.mkdir(parents=True, exist_ok=True)
    args = experiment_parser("toy").parse_args(["--run-dir", str(run_dir), *toy_overrides(run_dir.parent, *extra)])
    cfg, run_dir = prepare_run(args, "toy")
    results = run(cfg, run_dir)
    write_results(run_dir, results)
    return results


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny translation run trained on toy files: a run folder with tokenizers and checkpoints."""
    run_dir = tmp_path_factory.mktemp("toy") / "run"
    results = toy_translation(run_dir)
    assert results["train_steps"] == 300
    assert results["test_bleu_beam"] > 50, results  # word-for-word toy translation is learned
    return run_dir
