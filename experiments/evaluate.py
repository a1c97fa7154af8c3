"""Score trained models on their task's test split: one run, an averaged checkpoint, or an ensemble.

    python experiments/evaluate.py runs/a                              # the run's best checkpoint again
    python experiments/evaluate.py runs/a/checkpoints/averaged.pt      # after seq2seq-average
    python experiments/evaluate.py runs/a runs/b runs/c --out runs/ensemble-abc   # an ensemble of three

Writes results.json and the test outputs (hypotheses, references) to --out, as a training run
does, so the study summaries and paired tests can read them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from seq2seq.experiment import log, run_cli, write_results
from seq2seq.tasks import captioning, translation
from seq2seq.train.checkpoints import load_checkpoint, resolve_checkpoint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+", metavar="RUN_DIR_OR_CHECKPOINT")
    parser.add_argument("--out", type=Path, default=None, help="where results go (default: runs/evaluate-<time>)")
    args = parser.parse_args()
    out = args.out or Path("runs") / f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}"
    if (out / "results.json").exists():  # a trained run's, or an earlier scoring's: never replaced
        parser.error(f"--out {out} already holds results.json; choose another folder")
    paths = [resolve_checkpoint(m) for m in args.models]
    checkpoints = [load_checkpoint(path, mmap=True) for path in paths]
    task = checkpoints[0].get("task")
    scorers = {"translation": translation.score, "captioning": captioning.score}
    if task not in scorers:
        parser.error(f"{args.models[0]}: a {task} model; evaluate.py scores translation and captioning models")
    scored = []  # which checkpoint of each model, at which step: a run folder may hold an unfinished run's best
    for model, path, ckpt in zip(args.models, paths, checkpoints):
        step = (ckpt.get("progress") or {}).get("step")
        scored.append({"path": str(path), "step": step})
        unfinished = model.is_dir() and not (model / "results.json").is_file()
        log(f"{model}: {path.name}" + (f" at step {step:,}" if step is not None else "")
            + (" (the run has not finished training)" if unfinished else ""))
    log(f"scoring {len(args.models)} model(s) on the {task} test split into {out}")
    results = {**scorers[task](args.models, out), "checkpoints": scored}
    path = write_results(out, results)
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, dict)}, indent=2))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
