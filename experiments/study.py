"""Run a study: several runs that differ by a few options, one after another, then one summary.

    python experiments/study.py attention                 # experiments/studies/attention.yaml
    python experiments/study.py attention --list          # the runs and their state
    python experiments/study.py attention --only luong_dot --budget 500
    python experiments/study.py my_study.yaml --dry-run   # print every run's resolved config
    python experiments/study.py gradients exploding       # several studies, one after another

Runs go to studies/<study>/<run>/ (ordinary run folders); running the same command again skips
finished runs and resumes an interrupted one. The summary is studies/<study>/summary.md,
summary.csv and PNG plots, and a W&B run in the study's group.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seq2seq.config import ConfigError
from seq2seq.experiment import log, run_cli
from seq2seq.study import describe_runs, dry_run, load_study, run_study


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", metavar="STUDY",
                        help="a study file, or the name of one in experiments/studies/ (several: run in turn)")
    parser.add_argument("--root", type=Path, default=Path("studies"), help="where study folders go")
    parser.add_argument("--list", action="store_true", help="show the runs and their state, run nothing")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config of every run")
    parser.add_argument("--only", action="append", metavar="RUN", help="run only this run (repeatable)")
    parser.add_argument("--budget", type=float, help="per-run budget, in the study's unit (steps, minutes, epochs)")
    args = parser.parse_args()
    if args.budget is not None and args.budget <= 0:
        parser.error("--budget must be positive")
    studies = [load_study(name) for name in args.studies]  # every file checked before anything runs
    if args.budget is not None:
        studies = [study.with_budget(args.budget) for study in studies]
    names = {name for study in studies for name in study.runs}
    unknown = [name for name in args.only or [] if name not in names]
    if unknown:  # before anything trains
        raise ConfigError(f"no study here has a run named {', '.join(unknown)}")
    for study in studies:
        if args.list:
            print("\n".join(describe_runs(study, args.root)))
        elif args.dry_run:
            print(dry_run(study))
        else:
            only = [name for name in args.only or [] if name in study.runs]
            if args.only and not only:
                continue  # --only names runs of the other studies
            log(f"study {study.name}: {len(study.runs)} runs; {study.budget_line()}")
            folder = run_study(study, args.root, only or None, log)
            log(f"summary: {folder / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
