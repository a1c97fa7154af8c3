import functools
import json
import math
import time
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_model

from seq2seq.config import TrainConfig
from seq2seq.data.batching import ParallelData
from seq2seq.models.model import LossSum
from seq2seq.tracking import Tracker
from seq2seq.train.schedules import LRSchedule, teacher_forcing_ratio
from seq2seq.train.trainer import Trainer


def _data(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = [torch.randint(4, 20, (int(torch.randint(1, 8, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
    return ParallelData(src, [list(reversed(s)) for s in src], budget=120, seed=seed)


class CrashAt(Tracker):
    def __init__(self, step):
        self.step = step

    def log(self, metrics, step):
        if step == self.step and "train/loss" in metrics:
            raise RuntimeError("simulated crash")


def _trainer(tmp_path, tracker=None, **cfg):
    model = tiny_model("gru", "bahdanau", src_vocab=20, tgt_vocab=20, dropout=0.3).train()
    cfg = {"time_budget": None, "max_steps": 30, "valid_every": 10, "log_every": 1, "warmup_steps": 5,
           "precision": "fp32", "device": "cpu", **cfg}
    config = TrainConfig(**cfg)
    return Trainer(model, _data(), config, tmp_path, tracker or Tracker(), lambda t: {"score": -t.progress.step % 7},
                   {"task": "test"})


def test_resume_equals_an_uninterrupted_run(tmp_path):
    torch.manual_seed(0)
    straight = _trainer(tmp_path / "a")
    straight.train()

    torch.manual_seed(0)
    crashed = _trainer(tmp_path / "b", CrashAt(14))  # dies after step 14; last.pt is from step 10
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.train()
    torch.manual_seed(123)  # a new process has another RNG state: the checkpoint must restore it
    resumed = _trainer(tmp_path / "b")
    resumed.resume(tmp_path / "b" / "checkpoints" / "last.pt")
    assert resumed.progress.step == 10
    resumed.train()
    assert resumed.progress.step == straight.progress.step == 30
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_time_budget_stops_and_still_validates(tmp_path):
    trainer = _trainer(tmp_path, max_steps=None)
    trainer.cfg.time_budget = 0.02  # 1.2 seconds
    trainer.cfg.valid_every = 10_000
    progress = trainer.train()
    assert "time budget" in progress.stop_reason
    assert progress.last_validation == progress.step > 0
    assert (tmp_path / "checkpoints" / "best.pt").exists() and (tmp_path / "checkpoints" / "last.pt").exists()


def test_early_stopping(tmp_path):
    trainer = _trainer(tmp_path, max_steps=100, patience=2)
    trainer.validate_fn = lambda t: {"score": 1.0}
    progress = trainer.train()
    assert progress.step == 30 and "no better validation score" in progress.stop_reason


def test_progress_keeps_the_longest_stall_an_improvement_ended(tmp_path):
    from seq2seq.train.progress import outran_patience

    scores = iter([1.0, 0.5, 0.5, 2.0, 1.0])  # validations at steps 10..50: a stall of 2, then one of 1
    trainer = _trainer(tmp_path, max_steps=50, patience=100)
    trainer.validate_fn = lambda t: {"score": next(scores)}
    p = trainer.train()
    assert (p.longest_bad_streak, p.bad_validations) == (2, 1)
    assert [outran_patience(TrainConfig(patience=n), p) for n in (1, 2, 3)] == [True, True, False]


def test_a_run_saved_after_the_validation_its_patience_would_have_stopped_at_outran_it():
    from seq2seq.train.progress import Progress, longest_stall, outran_patience

    def outran(bad, step, last_validation, patience=2):
        p = Progress(step=step, last_validation=last_validation, bad_validations=bad)
        return outran_patience(TrainConfig(patience=patience), p)

    assert outran(3, 300, 300)  # one validation past it
    assert outran(2, 250, 200)  # stopped there by patience 2, it would not have trained on to step 250
    assert not outran(2, 200, 200) and not outran(1, 250, 200)  # stopped by it, or not yet at it
    assert longest_stall([1.0, 0.5, 0.5, 2.0, 1.0]) == 2 and longest_stall([1.0, 1.0, 1.0]) == 0


def test_interrupt_saves_a_resumable_checkpoint(tmp_path):
    class Interrupt(Tracker):
        def log(self, metrics, step):
            if step == 5:
                raise KeyboardInterrupt

    progress = _trainer(tmp_path, Interrupt()).train()
    assert progress.stop_reason == "interrupted"
    resumed = _trainer(tmp_path)
    resumed.resume(tmp_path / "checkpoints" / "last.pt")
    assert resumed.progress.step == 5


def test_learning_rate_schedules():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    cfg = TrainConfig(lr=1.0, warmup_steps=10, max_steps=100, time_budget=None, min_lr_ratio=0.0)
    sched = LRSchedule(opt, cfg)
    assert sched.lr(0, 100) == pytest.approx(0.1) and 0.95 < sched.lr(9, 100) < 1.0  # warm-up, then decay
    assert sched.lr(50, 100) == pytest.approx(0.5, abs=0.01) and sched.lr(100, 100) == pytest.approx(0.0)
    assert sched.lr(150, 100) == pytest.approx(0.0)  # past the horizon (trained further): the floor
    assert sched.lr(9, 0) == pytest.approx(1.0)  # no horizon yet (a time budget before its estimate): no decay
    cfg.decay = "inverse_sqrt"
    assert sched.lr(39, 100) == pytest.approx(math.sqrt(10 / 40))
    cfg.schedule, cfg.plateau_patience, cfg.plateau_factor = "plateau", 2, 0.5
    for score in (1.0, 2.0, 2.0, 1.0):
        sched.on_validation(score)
    assert sched.lr(0, 100) == pytest.approx(0.05) and sched.lr(50, 100) == pytest.approx(0.5)  # warm-up, halved


def test_scheduled_sampling_ratios():
    cfg = TrainConfig(teacher_forcing=0.25, sampling_schedule="linear", sampling_k=100)
    assert teacher_forcing_ratio(cfg, 0) == 1.0 and teacher_forcing_ratio(cfg, 50) == pytest.approx(0.625)
    assert teacher_forcing_ratio(cfg, 1000) == 0.25
    cfg.sampling_schedule = "inverse_sigmoid"
    assert teacher_forcing_ratio(cfg, 0) == pytest.approx(100 / 101)
    assert teacher_forcing_ratio(cfg, 10_000) == 0.25
    assert teacher_forcing_ratio(TrainConfig(), 10) == 1.0


def _last_progress(run_dir):
    from seq2seq.train.checkpoints import load_checkpoint

    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["progress"]


def test_checkpoints_count_the_time_of_their_validation(tmp_path):
    import time

    def slow(trainer):
        time.sleep(0.3)
        return {"score": 1.0}

    crashed = _trainer(tmp_path, CrashAt(14))
    crashed.validate_fn = slow
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.train()
    # last.pt was written at the validation of step 10: it must already include that validation's 0.3 s
    progress = _last_progress(tmp_path)
    assert progress["elapsed"] - progress["train_time"] >= 0.3


def test_a_finished_run_is_left_untouched(tmp_path):
    calls = []
    done = _trainer(tmp_path, max_steps=100, patience=2)
    done.validate_fn = lambda t: calls.append(t.progress.step) or {"score": 1.0}
    assert "no better validation score" in done.train().stop_reason and done.progress.step == 30
    last = tmp_path / "checkpoints" / "last.pt"
    stamp, validations = last.stat().st_mtime_ns, len(calls)

    again = _trainer(tmp_path, max_steps=100, patience=2)
    again.validate_fn = done.validate_fn
    again.resume(last)
    progress = again.train()
    assert progress.step == 30 and "no better validation score" in progress.stop_reason
    assert len(calls) == validations and last.stat().st_mtime_ns == stamp  # no training, validation or save

    more = _trainer(tmp_path, max_steps=100, patience=3)  # asking for more continues the run
    more.validate_fn = done.validate_fn
    more.resume(last)
    assert more.train().step == 40


def test_resume_reads_the_checkpoint_on_the_cpu(tmp_path, monkeypatch):
    import seq2seq.train.trainer as training

    _trainer(tmp_path).train()
    seen = []
    real = training.load_checkpoint
    monkeypatch.setattr(training, "load_checkpoint", lambda path, map_location: seen.append(map_location) or
                        real(path, map_location=map_location))
    resumed = _trainer(tmp_path)
    resumed.resume(tmp_path / "checkpoints" / "last.pt")
    assert seen == ["cpu"]  # on CUDA, Adam's step counters then stay on the CPU (no sync per parameter)
    steps = [s["step"] for s in resumed.optimizer.state.values()]
    assert steps and all(s.device.type == "cpu" for s in steps)


def _signal_after_update(trainer, at_step, signals):
    """Send SIGINT ``signals`` times right after the optimiser update of step ``at_step``, before
    the trainer counts the step: the worst moment for a checkpoint."""
    import os
    import signal

    real = trainer.optimizer.step

    def step(*args, **kwargs):
        out = real(*args, **kwargs)
        if trainer.progress.step + 1 == at_step:
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGINT)
        return out

    trainer.optimizer.step = step


def test_ctrl_c_stops_at_the_next_step_boundary(tmp_path):
    trainer = _trainer(tmp_path)
    _signal_after_update(trainer, 13, 1)
    assert trainer.train().stop_reason == "interrupted"
    resumed = _trainer(tmp_path)
    resumed.resume(tmp_path / "checkpoints" / "last.pt")
    assert resumed.progress.step == 13
    for (name, a), (_, b) in zip(trainer.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_second_ctrl_c_stops_at_once_without_saving_a_half_step(tmp_path):
    trainer = _trainer(tmp_path)
    _signal_after_update(trainer, 13, 2)  # weights of step 13 updated, counters not yet
    assert trainer.train().stop_reason == "interrupted"
    resumed = _trainer(tmp_path)
    resumed.resume(tmp_path / "checkpoints" / "last.pt")
    assert resumed.progress.step == 10  # the checkpoint of the last validation, consistent with its weights


def test_a_diverging_run_logs_its_last_steps_before_it_stops(tmp_path):
    import json

    from seq2seq.tracking import JsonlTracker

    trainer = _trainer(tmp_path, JsonlTracker(tmp_path / "m.jsonl"), log_every=10)
    sequence_loss = trainer.loss
    trainer.loss = lambda out, batch: [LossSum(t.total * (math.inf if trainer.progress.step == 2 else 1.0), t.count)
                                       for t in sequence_loss(out, batch)]
    with pytest.raises(FloatingPointError, match="at step 3"):
        trainer.train()
    last = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 3 and math.isinf(last["train/loss"])  # visible in W&B, though step 10 never came


def test_a_time_budgeted_run_freezes_its_horizon_and_resumes_bit_identically(tmp_path, monkeypatch):
    """The learning rate follows the step, not the clock: once the horizon is estimated it is
    frozen in the checkpoint, and a resumed run (whose own estimate would differ) repeats the
    uninterrupted run's updates exactly, and ends at the same step."""
    import seq2seq.train.schedules as schedules
    import seq2seq.train.trainer as training

    monkeypatch.setattr(training, "warm", lambda cfg, step, elapsed: step >= 8)  # warm at step 8, whatever the clock
    monkeypatch.setattr(schedules, "time_horizon", lambda *args: 25)
    torch.manual_seed(0)
    straight = _trainer(tmp_path / "a", max_steps=None, time_budget=10.0)
    straight.train()
    assert straight.progress.horizon == straight.progress.step == 25
    assert "time budget of 10 min" in straight.progress.horizon_basis and "25 steps" in straight.progress.stop_reason

    torch.manual_seed(0)
    crashed = _trainer(tmp_path / "b", CrashAt(14), max_steps=None, time_budget=10.0)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.train()
    monkeypatch.setattr(schedules, "time_horizon", lambda *args: 99)  # a slower machine would estimate otherwise
    resumed = _trainer(tmp_path / "b", max_steps=None, time_budget=10.0)
    resumed.resume(tmp_path / "b" / "checkpoints" / "last.pt")
    assert resumed.progress.step == 10 and resumed.progress.horizon == 25  # frozen at step 8
    resumed.train()
    assert resumed.progress.step == 25
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_the_horizon_estimate_and_a_scheduled_validation_score_a_step_once(tmp_path, monkeypatch):
    """Scored twice, the same weights would count once as a validation without improvement:
    early stopping and the plateau schedule would come one validation early."""
    import seq2seq.train.schedules as schedules
    import seq2seq.train.trainer as training

    monkeypatch.setattr(training, "warm", lambda cfg, step, elapsed: step >= 10)  # estimated at step 10
    monkeypatch.setattr(schedules, "time_horizon", lambda *args: 25)
    trainer = _trainer(tmp_path, max_steps=None, time_budget=10.0, keep_checkpoints=3)
    scored = []
    trainer.validate_fn = lambda t: scored.append(t.progress.step) or {"score": float(t.progress.step)}
    trainer.train()
    assert scored == [10, 20, 25] and trainer.progress.bad_validations == 0
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*.pt")) == \
        ["step-10.pt", "step-20.pt", "step-25.pt"]  # the step the estimate scored is kept for averaging too


def test_the_horizon_estimate_leaves_validation_time_out_of_the_speed(tmp_path, monkeypatch):
    import seq2seq.train.schedules as schedules
    import seq2seq.train.trainer as training

    monkeypatch.setattr(training, "warm", lambda cfg, step, elapsed: step >= 12)  # mark at step 6
    seen = {}
    monkeypatch.setattr(schedules, "time_horizon",
                        lambda cfg, step, elapsed, per_step, per_validation: seen.setdefault("speed", per_step) and 20)
    skipped = [0.0]  # the trainer's clock runs this far ahead of the real one
    monkeypatch.setattr(training, "time", SimpleNamespace(monotonic=lambda: time.monotonic() + skipped[0]))
    trainer = _trainer(tmp_path, max_steps=None, time_budget=10.0, valid_every=8)
    slow = trainer.validate_fn
    # the step-8 validation (between mark and estimate) takes a minute by the trainer's clock:
    # more than the 6 steps could take on any machine, however loaded
    trainer.validate_fn = lambda t: (t.progress.step == 8 and skipped.__setitem__(0, 60.0)) or slow(t)
    trainer.train()
    assert 0 < seen["speed"] < 60 / 6  # the validation's minute is not the steps' time
    assert skipped[0] == 60.0  # (it did take place)


def test_training_data_without_a_batch_is_one_line(tmp_path):
    from seq2seq.config import ConfigError

    trainer = _trainer(tmp_path)
    trainer.data.epoch = lambda epoch: []  # e.g. every pair filtered out by max_len
    with pytest.raises(ConfigError, match="0 batch\\(es\\) an epoch, fewer than the 1 process"):
        trainer.train()


@pytest.mark.parametrize("per", ["token", "caption"])
def test_the_attention_penalty_is_weighed_per_token_as_xu_et_al_or_per_caption(tmp_path, per):
    from seq2seq.models.model import mean_loss

    trainer = _trainer(tmp_path, attention_reg=2.0, attention_reg_per=per)
    batch = trainer.data.batch(trainer.data.epoch(0)[0])
    out = trainer.model(batch.inputs, batch.tgt_in)
    nll, penalty = trainer.sequence_loss(out, batch)
    tokens, captions = int((batch.tgt_out != 0).sum()), batch.tgt_out.size(0)
    assert nll.count == tokens and penalty.count == (tokens if per == "token" else captions)
    if per == "token":  # Xu et al.: mean over captions of (summed NLL + lambda * penalty), per token here
        assert mean_loss([nll, penalty]).item() == pytest.approx(((nll.total + penalty.total) / tokens).item())


def test_runs_made_before_the_option_keep_the_penalty_per_caption():
    from seq2seq.config import config_from_dict, load_config

    penalised = ["model.attention=bahdanau", "train.attention_reg=1.0"]
    saved = load_config(overrides=penalised).to_dict()
    del saved["train"]["attention_reg_per"]  # a config.yaml written before the option existed
    assert config_from_dict(saved).train.attention_reg_per == "caption"
    assert load_config(overrides=penalised).train.attention_reg_per == "token"
    unpenalised = load_config().to_dict()  # no penalty: the option means nothing and compares equal
    del unpenalised["train"]["attention_reg_per"]
    assert config_from_dict(unpenalised) == load_config()


def test_the_horizon_estimate_counts_validations():
    from seq2seq.train.schedules import time_horizon

    cfg = TrainConfig(time_budget=10.0, valid_every=100)
    assert time_horizon(cfg, 50, 0.0, 1.0, 0.0) == 650  # 600 s at 1 s per step
    assert time_horizon(cfg, 50, 0.0, 1.0, 10.0) == 590  # 6 validations of 10 s: 60 steps fewer


def test_an_epoch_budget_decays_to_the_floor(tmp_path):
    class Rates(Tracker):
        def __init__(self):
            self.lr = {}

        def log(self, metrics, step):
            if "train/lr" in metrics:
                self.lr[step] = metrics["train/lr"]

    rates = Rates()
    trainer = _trainer(tmp_path, rates, max_steps=None, max_epochs=2, lr=1e-2, min_lr_ratio=0.05)
    steps = sum(len(trainer.data.epoch(e)) for e in range(2))
    progress = trainer.train()
    assert progress.horizon == progress.step == steps and "max_epochs=2" in progress.horizon_basis
    assert rates.lr[steps] == pytest.approx(1e-2 * 0.05, abs=1e-2 * 0.01)  # cosine over the epochs' steps


def test_a_schedule_without_a_horizon_is_refused():
    from seq2seq.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="has none"):
        load_config(overrides=["train.time_budget=null"])
    assert load_config(overrides=["train.time_budget=null", "train.decay=inverse_sqrt"])


def test_resuming_at_another_precision_or_number_of_processes_is_refused(tmp_path):
    from seq2seq.train.checkpoints import load_checkpoint
    from seq2seq.train.faults import ResumeRefused, check_resumable

    crashed = _trainer(tmp_path, CrashAt(14))
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.train()
    last = tmp_path / "checkpoints" / "last.pt"
    with pytest.raises(ResumeRefused, match="precision fp32 -> bf16"):
        _trainer(tmp_path, precision="bf16").resume(last)
    _trainer(tmp_path, precision="bf16", allow_mismatched_resume=True).resume(last)  # asked for explicitly
    with pytest.raises(ResumeRefused, match="processes 1 -> 2"):
        check_resumable(last, load_checkpoint(last), "fp32", 2)  # torchrun with 2 ranks: twice the batch per step
    session = load_checkpoint(last)["sessions"][0]
    assert session["precision"] == "fp32" and session["processes"] == 1 and session["torch_version"]


def test_auto_precision_resumes_a_run_at_the_precision_it_trained_at(tmp_path, monkeypatch):
    from seq2seq import runtime

    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8192")  # what a bf16 pick sets: undone after
    crashed = _trainer(tmp_path, CrashAt(14))  # trained at fp32
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.train()
    monkeypatch.setattr(runtime, "cpu_bf16_speedup", lambda: 2.0)  # a machine where auto takes bf16
    assert _trainer(tmp_path / "new", precision="auto").amp_dtype == torch.bfloat16
    resumed = _trainer(tmp_path, precision="auto")
    assert resumed.amp_dtype is None  # not refused as a change of precision: there is none
    assert resumed.fit().step == 30
    assert "trained at" in runtime.describe_precision("auto", None, torch.device("cpu"), "fp32")
    # asked to accept a change, auto chooses again
    assert _trainer(tmp_path, precision="auto", allow_mismatched_resume=True).amp_dtype == torch.bfloat16
    cpu = torch.device("cpu")  # a precision this device only emulates is not kept: fp16 off the GPU
    assert runtime.pick_precision("auto", cpu, "fp16") == torch.bfloat16
    monkeypatch.setattr(runtime, "_cpu_has_bf16_instructions", lambda: False)
    monkeypatch.setattr(runtime, "cpu_bf16_speedup", lambda: 0.0)
    assert runtime.pick_precision("auto", cpu, "bf16") is None  # nor bf16 on a CPU without its instructions


def test_fp16_scales_the_loss_skips_overflowing_steps_and_resumes_with_its_scale(tmp_path, monkeypatch):
    from seq2seq.runtime import pick_precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # a GPU without bf16
    assert pick_precision("auto", torch.device("cuda")) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert pick_precision("auto", torch.device("cuda")) == torch.bfloat16

    trainer = _trainer(tmp_path, precision="fp16", max_steps=20)  # fp16 autocast runs on the CPU too
    assert trainer.scaler.is_enabled()
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # far too large: the first steps overflow
    progress = trainer.train()
    assert progress.step == 20 and math.isfinite(trainer.progress.best_score)
    scale = trainer.scaler.get_scale()
    assert scale < 2.0**40  # halved on every overflow, the skipped steps not applied
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["precision"] == "fp16" and ckpt["scaler"]["scale"] == scale
    resumed = _trainer(tmp_path, precision="fp16", max_steps=20)
    resumed.resume(tmp_path / "checkpoints" / "last.pt")
    assert resumed.scaler.get_scale() == scale


def test_an_fp16_trained_model_is_served_at_fp32_off_the_gpu_unless_asked():
    from seq2seq.runtime import serving_precision

    cpu = torch.device("cpu")
    assert serving_precision("model", "fp16", cpu) is None  # fp32: fp16 is emulated slowly on a CPU
    assert serving_precision("fp16", "fp16", cpu) == torch.float16  # asked for by name: kept
    assert serving_precision("model", "bf16", cpu) == torch.bfloat16
    assert serving_precision("model", None, cpu) is None


def test_a_gpu_index_past_the_machine_s_gpus_is_one_line(monkeypatch):
    from seq2seq.runtime import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pick_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match="has 1 GPU"):
        pick_device("cuda:1")


def test_auto_precision_on_a_cpu_takes_bf16_only_where_it_measured_faster(tmp_path, monkeypatch):
    from seq2seq import runtime

    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8192")  # what a bf16 pick sets: undone after
    monkeypatch.setenv("SEQ2SEQ_CACHE", str(tmp_path))
    monkeypatch.setattr(runtime, "_speedup", functools.cache(runtime._speedup.__wrapped__))  # this test's own
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "_cpu_has_bf16_instructions", lambda: False)
    monkeypatch.setattr(runtime, "_probe_bf16_speedup", lambda: pytest.fail("probed without bf16 instructions"))
    assert runtime.pick_precision("auto", cpu) is None and runtime.cpu_bf16_speedup() == 0.0
    assert runtime.pick_precision("bf16", cpu) == torch.bfloat16  # asked for by name: taken anyway

    monkeypatch.setattr(runtime, "_cpu_has_bf16_instructions", lambda: True)
    probes = []
    monkeypatch.setattr(runtime, "_probe_bf16_speedup", lambda: probes.append(1) or 0.6)  # avx512_bf16 without AMX
    assert runtime.pick_precision("auto", cpu) is None
    assert "0.60x as fast as fp32" in runtime.describe_precision("auto", None, cpu)
    runtime._speedup.cache_clear()  # another process on this machine reads the measurement
    assert runtime.pick_precision("auto", cpu) is None and len(probes) == 1

    (tmp_path / "bf16_speedup.json").write_text("[]")  # damaged: measured again
    runtime._speedup.cache_clear()
    assert runtime.pick_precision("auto", cpu) is None and len(probes) == 2
    assert json.loads((tmp_path / "bf16_speedup.json").read_text())  # and kept again
    monkeypatch.setattr(runtime, "cache_lock", lambda key: (_ for _ in ()).throw(PermissionError(13, "read-only")))
    runtime._speedup.cache_clear()  # a cache folder that cannot be written: measured, not kept
    assert runtime.pick_precision("auto", cpu) is None and len(probes) == 3

    threads = torch.get_num_threads()
    monkeypatch.setattr(runtime, "_probe_bf16_speedup", lambda: probes.append(1) or 2.5)  # AMX
    try:
        torch.set_num_threads(threads + 1)  # a study worker's share of the cores is measured apart
        assert runtime.pick_precision("auto", cpu) == torch.bfloat16 and len(probes) == 4
    finally:
        torch.set_num_threads(threads)


def test_the_bf16_probe_leaves_the_random_stream_as_it_was(monkeypatch):
    from seq2seq.runtime import _probe_bf16_speedup

    before = torch.random.get_rng_state()
    monkeypatch.setattr(torch, "manual_seed", lambda *a: pytest.fail("the probe seeded torch (every CUDA device too)"))
    assert 0 < _probe_bf16_speedup() < 100
    assert torch.equal(torch.random.get_rng_state(), before)
