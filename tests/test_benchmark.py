import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from seq2seq.benchmark import forward_flops, matmul_rate


def test_matmul_rate_is_measured():
    assert matmul_rate(torch.device("cpu"), n=128, seconds=0.05) > 1e6
    assert matmul_rate(torch.device("cpu"), shape=(16, 32, 96), seconds=0.05) > 1e5  # a recurrent step's product


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
    bahdanau = forward_flops(tiny_model("gru", "bahdanau"), src_len=5.0, tgt_len=4.0)  # attention 7, readout 5
    keys, query = 2 * 12 * 7, 2 * 12 * 7  # U h once per memory vector; W q once per step
    decoder = 2 * 3 * 12 * (10 + 12 + 12)  # the context enters the GRU
    scores_context = 2 * 5 * (7 + 12)  # v . tanh(...) and the weighted sum: no product for the add and tanh
    readout, out = 2 * (12 + 10 + 12) * 10, 2 * 5 * 24
    assert bahdanau["per_source_token"] == encoder + keys
    assert bahdanau["per_target_token"] == decoder + query + scores_context + readout + out + bridge


def _caption_benchmark():
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "tools" / "caption_benchmark.py"
    spec = importlib.util.spec_from_file_location("caption_benchmark", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_caption_benchmark_folder_holds_photos_and_icons(tmp_path, monkeypatch):
    from PIL import Image

    from seq2seq.data.images import load_image

    monkeypatch.setenv("SEQ2SEQ_CACHE", str(tmp_path))
    tool = _caption_benchmark()
    folder = tool.image_folder(10)
    files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    assert len(files) == 10 and tool.image_folder(10) == folder  # made once
    icons = [p for p in files if p.suffix == ".png"]
    assert len(icons) == 2 and all(Image.open(p).mode == "RGBA" for p in icons)
    sizes = {Image.open(p).size for p in files if p.suffix == ".jpg"}
    assert sizes <= set(tool.SIZES) | {(h, w) for w, h in tool.SIZES}
    assert all(load_image(p).mode == "RGB" for p in files)


def test_caption_benchmark_trains_its_short_model_again_when_the_defaults_change(tmp_path, monkeypatch):
    """The cached model is keyed by its resolved config: one trained under older defaults is not reused."""
    import torch

    monkeypatch.setenv("SEQ2SEQ_CACHE", str(tmp_path))
    tool = _caption_benchmark()
    trained = []

    def train(cmd, **kwargs):
        run_dir = Path(cmd[cmd.index("--run-dir") + 1])
        trained.append(run_dir)
        run_dir.mkdir(parents=True)
        (run_dir / "results.json").write_text("{}")

    monkeypatch.setattr(tool.subprocess, "run", train)
    cpu = torch.device("cpu")
    first = tool.short_model(200, cpu)
    assert tool.short_model(200, cpu) == first and trained == [first]  # once
    assert tool.short_model(100, cpu) != first and len(trained) == 2
    defaults = tool.load_config
    monkeypatch.setattr(tool, "load_config", lambda path, extra: defaults(path, [*extra, "model.dec_hidden=256"]))
    changed = tool.short_model(200, cpu)
    assert changed != first and trained[-1] == changed and len(trained) == 3


def test_translation_benchmark_runs_on_a_trained_run(toy_run):
    """tools/benchmark.py end to end on a tiny run: every figure printed, the beam's cost a ratio."""
    tool = Path(__file__).resolve().parent.parent / "tools" / "benchmark.py"
    proc = subprocess.run([sys.executable, str(tool), "--run-dir", str(toy_run), "--steps", "2", "--warmup", "1",
                           "--test-sentences", "10", "--beam", "3", "--decode-repeats", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = dict(line.rsplit(None, 1) for line in proc.stdout.splitlines() if line.strip())
    greedy, beam = (float(figures[k].replace(",", "")) for k in ("greedy_sentences_per_second",
                                                                  "beam3_sentences_per_second"))
    assert greedy > 0 and beam > 0
    assert float(figures["beam3_cost_over_greedy"]) == pytest.approx(greedy / beam, rel=1e-3)
    assert 0 < float(figures["train_utilisation_of_matmul_rate"]) < 1
    rows, hidden, gates = map(int, figures["matmul_step_shape"].split("x"))
    assert hidden == 64 and gates == 3 * 64 and rows > 0  # the toy decoder's GRU step
    assert float(figures["train_utilisation_of_step_shape_rate"]) > 0
    for bad, message in ((["--steps", "0"], "--steps must be at least 1"),
                         (["model.attention=none"], "drop --config and KEY=VALUE overrides")):
        refused = subprocess.run([sys.executable, str(tool), "--run-dir", str(toy_run), *bad],
                                 capture_output=True, text=True, timeout=300)
        assert refused.returncode == 2 and message in refused.stderr  # not ignored, not a ZeroDivisionError
