import pytest
import yaml

from seq2seq.config import ConfigError
from seq2seq.experiment import experiment_parser, prepare_run, run_cli, spread, write_results
from seq2seq.train.checkpoints import CheckpointError


def _args(*argv):
    return experiment_parser("test").parse_args(list(argv))


def test_prepare_run_writes_the_resolved_config(tmp_path):
    cfg, run_dir = prepare_run(_args("--run-dir", str(tmp_path / "r"), "--time-budget", "3", "model.attention=none"),
                               "test")
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["attention"] == "none" and saved["train"]["time_budget"] == 3.0
    assert cfg.train.time_budget == 3.0


def test_resuming_with_another_config_is_refused(tmp_path):
    prepare_run(_args("--run-dir", str(tmp_path), "model.attention=none"), "test")
    longer = _args("--run-dir", str(tmp_path), "--time-budget", "30", "model.attention=none")
    prepare_run(longer, "test")  # a longer budget resumes the same run
    with pytest.raises(ConfigError, match="holds a run with a different config"):
        prepare_run(_args("--run-dir", str(tmp_path), "model.attention=bahdanau"), "test")


def test_bad_time_budget(tmp_path):
    for bad in ("0", "nan", "inf"):
        with pytest.raises(ConfigError, match="--time-budget must be a positive"):
            prepare_run(_args("--run-dir", str(tmp_path), "--time-budget", bad), "test")


def test_spread_is_even_and_bounded():
    assert spread(list(range(10)), 5) == [0, 2, 4, 6, 8]
    assert spread([1, 2], 5) == [1, 2] and spread([1, 2], None) == [1, 2] and spread([1, 2], 0) == []


def test_user_errors_are_one_line(capsys):
    def failing():
        raise CheckpointError("model.pt: not a seq2seq checkpoint")

    assert run_cli(failing) == 2
    assert capsys.readouterr().err == "error: model.pt: not a seq2seq checkpoint\n"


def test_results_are_json(tmp_path):
    path = write_results(tmp_path, {"test_bleu_beam": 31.0, "note": "é"})
    assert '"test_bleu_beam": 31.0' in path.read_text(encoding="utf-8")


def test_bad_weights_file_is_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, str(root / "experiments" / "caption.py"), "--run-dir", str(tmp_path),
                           "captions.corpus=shapes", "captions.shapes=50", "image.backbone=resnet18",
                           f"image.weights={tmp_path / 'missing.pth'}", "tracking.enabled=false"],
                          capture_output=True, text=True, timeout=120, cwd=root)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: weights file {tmp_path / 'missing.pth'} does not exist"
