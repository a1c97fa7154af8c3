"""A model learns: reversing random sequences, greedy exact match >= 95 % within 400 steps (a minute on CPU)."""

import random

import torch

from seq2seq.config import ModelConfig, TrainConfig
from seq2seq.data.batching import ParallelData, pad_ids
from seq2seq.models.model import build_translation_model
from seq2seq.search import greedy_search
from seq2seq.tracking import Tracker
from seq2seq.train.trainer import Trainer


def _reverse_task(n, seed):
    rng = random.Random(seed)
    src = [[rng.randint(4, 15) for _ in range(rng.randint(3, 8))] for _ in range(n)]
    return src, [list(reversed(s)) for s in src]


def _exact_match(model, src, tgt):
    ids, lens = pad_ids(src)
    hyps = greedy_search(model.decoder, model.encode(ids, lens), lens + 2)
    return sum(h.tokens == t for h, t in zip(hyps, tgt)) / len(src)


def test_reverse_task_is_learned(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(emb_dim=32, enc_hidden=64, dec_hidden=128, attention="luong_general", dropout=0.0,
                      attention_dim=64)
    model = build_translation_model(cfg, 16, 16)
    train_src, train_tgt = _reverse_task(8000, seed=1)
    test_src, test_tgt = _reverse_task(300, seed=2)
    data = ParallelData(train_src, train_tgt, budget=2000, seed=1)
    train_cfg = TrainConfig(lr=3e-3, warmup_steps=20, max_steps=400, time_budget=None, valid_every=100, patience=100,
                            label_smoothing=0.0, log_every=100, device="cpu")

    def validate(trainer):
        return {"score": 100 * _exact_match(trainer.model, test_src, test_tgt)}

    Trainer(model, data, train_cfg, tmp_path, Tracker(), validate, {"task": "test"}).train()
    model.eval()
    assert _exact_match(model, test_src, test_tgt) >= 0.95
