import torch
from conftest import tiny_model

from seq2seq.benchmark import forward_flops, matmul_rate


def test_matmul_rate_is_measured():
    assert matmul_rate(torch.device("cpu"), n=128, seconds=0.05) > 1e6


def test_forward_flops_counts_each_layer():
    model = tiny_model("gru", "luong_general")  # emb 10, bi-GRU 6 (memory 12), GRU 12, vocab 24
    flops = forward_flops(model, src_len=5.0, tgt_len=4.0)
    encoder = 2 * (2 * 3 * 6 * (10 + 6))  # two directions, three gates
    keys = 2 * 12 * 12  # general: W h once per memory vector
    assert flops["per_source_token"] == encoder + keys
    decoder = 2 * 3 * 12 * (10 + 12)
    attention = 2 * 5 * (12 + 12)  # scores and context over 5 source positions
    combine, out, bridge = 2 * 24 * 12, 2 * 12 * 24, 2 * 12 * 12 / 4
    assert flops["per_target_token"] == decoder + attention + combine + out + bridge
