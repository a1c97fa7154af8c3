import os
import random
import stat

import pytest
import torch

from seq2seq.files import atomic_write
from seq2seq.train.checkpoints import CheckpointError, load_checkpoint, resolve_checkpoint, save_checkpoint


def test_round_trip_and_atomic_write(tmp_path):
    path = save_checkpoint(tmp_path / "c" / "last.pt", {"model": {"w": torch.ones(2)}, "step": 3})
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 3 and torch.equal(ckpt["model"]["w"], torch.ones(2))


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path):
    """Not the owner-only mode of the temporary file: a study's summary others may read."""
    with open(tmp_path / "plain.txt", "w") as f:
        f.write("x")
    new = atomic_write(tmp_path / "new.txt", "x")
    assert stat.S_IMODE(new.stat().st_mode) == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    os.chmod(new, 0o640)
    atomic_write(new, "y")  # replaced: keeps what its owner set
    assert stat.S_IMODE(new.stat().st_mode) == 0o640


def test_failed_write_keeps_the_old_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", {"step": 1})

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint(path, {"step": 2, "bad": Unsaveable()})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pt: no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "corrupt.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="foreign.pt: not a seq2seq checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt"):
        load_checkpoint(tmp_path / "empty.pt")


def test_random_bytes_are_refused_with_a_checkpoint_error(tmp_path, recwarn):
    path = tmp_path / "noise.pt"
    for seed in range(400):  # random bytes make torch's unpickler fail as IndexError, KeyError, ...
        path.write_bytes(random.Random(seed).randbytes(1024))
        with pytest.raises(CheckpointError, match="noise.pt: not a readable checkpoint"):
            load_checkpoint(path)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": "seq2seq-checkpoint", "version": 1, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_run_folder_resolves_to_best(tmp_path):
    save_checkpoint(tmp_path / "checkpoints" / "last.pt", {})
    assert resolve_checkpoint(tmp_path).name == "last.pt"
    save_checkpoint(tmp_path / "checkpoints" / "best.pt", {})
    assert resolve_checkpoint(tmp_path).name == "best.pt"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty: no checkpoints/best.pt"):
        resolve_checkpoint(tmp_path / "empty")


def _weights(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g).to(torch.bfloat16)}


def test_averaging_copies_of_one_checkpoint_gives_it_back_and_a_mean_of_two(tmp_path):
    from seq2seq.train.checkpoints import average_checkpoints

    base = {"config": {"model": {"dec_cell": "gru"}}, "tokenizers": {}, "task": "translation", "optimizer": {}}
    paths = [save_checkpoint(tmp_path / f"step-{i}.pt", {**base, "model": _weights(0)}) for i in (1, 2, 3)]
    averaged = average_checkpoints(paths)
    assert all(torch.equal(averaged["model"][k], v) for k, v in _weights(0).items())
    assert averaged["model"]["b"].dtype == torch.bfloat16 and "optimizer" not in averaged
    other = save_checkpoint(tmp_path / "step-4.pt", {**base, "model": _weights(1)})
    mean = average_checkpoints([paths[0], other])["model"]["w"]
    torch.testing.assert_close(mean, (_weights(0)["w"] + _weights(1)["w"]) / 2)


def test_a_mismatched_set_is_one_line(tmp_path):
    from seq2seq.train.checkpoints import average_checkpoints

    base = {"config": {"model": {"dec_cell": "gru"}}, "tokenizers": {}, "task": "translation"}
    a = save_checkpoint(tmp_path / "a.pt", {**base, "model": _weights(0)})
    b = save_checkpoint(tmp_path / "b.pt", {**base, "model": {"w": torch.zeros(2, 2), "b": torch.zeros(4)}})
    c = save_checkpoint(tmp_path / "c.pt", {**base, "config": {"model": {"dec_cell": "lstm"}}, "model": _weights(0)})
    for bad, words in ((b, "names or shapes differ"), (c, "another model or tokenizers")):
        with pytest.raises(CheckpointError, match=words) as err:
            average_checkpoints([a, bad])
        assert "\n" not in str(err.value)


def test_keep_step_keeps_the_newest(tmp_path):
    from seq2seq.train.checkpoints import keep_step, step_checkpoints

    last = tmp_path / "last.pt"
    for step in (20, 40, 60, 80, 100):
        save_checkpoint(last, {"model": {"w": torch.full((2,), float(step))}})
        keep_step(last, step, 3)
    assert [p.name for p in step_checkpoints(tmp_path)] == ["step-60.pt", "step-80.pt", "step-100.pt"]
    assert float(load_checkpoint(tmp_path / "step-60.pt")["model"]["w"][0]) == 60  # not overwritten by later saves


def test_a_gpu_generator_is_saved_for_the_device_in_use_and_old_lists_still_load(monkeypatch):
    from seq2seq.train.checkpoints import rng_state, set_rng_state

    restored, read = [], []
    gpu = torch.device("cuda", 1)  # train.device=cuda:1 in one process: not torch's current device
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: read.append(device) or torch.tensor([7]))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((s.tolist(), device)))
    state = rng_state(gpu)
    assert state["cuda"].tolist() == [7] and read == [gpu]  # that GPU's alone: fewer GPUs can resume it
    assert "cuda" not in rng_state(torch.device("cpu"))
    set_rng_state(state, gpu)
    set_rng_state({**state, "cuda": [torch.tensor([1]), torch.tensor([2])]}, gpu)  # an older checkpoint's list
    set_rng_state({**state, "cuda": [torch.tensor([3])]}, gpu)  # saved with one GPU visible
    set_rng_state(state, torch.device("cpu"))  # a GPU run resumed on the CPU leaves CUDA alone
    assert restored == [([7], gpu), ([2], gpu), ([3], gpu)]
