"""Run a study: several runs that differ by a few options (each once per seed), then one summary.

    python experiments/study.py attention                 # experiments/studies/attention.yaml
    python experiments/study.py attention --list          # the runs, their state, steps and minutes so far
    python experiments/study.py attention --seeds 1,2,3   # every run once per seed
    python experiments/study.py attention --only luong_dot --budget 500   # its own folder: attention-budget-500
    python experiments/study.py attention --workers 2     # two runs at once, one thread each
    python experiments/study.py attention --slurm slurm_partition=gpu gpus_per_node=1 timeout_min=120
    python experiments/study.py my_study.yaml --dry-run   # print every run's resolved config
    python experiments/study.py gradients exploding       # several studies, one after another
    python experiments/study.py gradients --prune         # delete finished runs' checkpoints, keep their record
    python experiments/study.py gradients --export records    # finished and failed runs' records, no weights, no corpus
    python experiments/study.py gradients --restore records   # ... back on another machine, finished (or failed)
    python experiments/study.py gradients --verify docs/results  # do the committed tables follow from the records?

Runs go to studies/<study>/<run>[/seed-<n>]/ (ordinary run folders); running the same command
again skips finished runs and resumes an interrupted one, and a second command on the same
study (another terminal, another machine sharing the folder) trains the runs the first does
not hold. The summary is studies/<study>/summary.md, summary.csv, summary_seeds.csv (and
summary_pairs.csv when the study file names further pairs) and PNG plots, and a W&B run in the
study's group.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from seq2seq.config import ConfigError
from seq2seq.experiment import log, run_cli
from seq2seq.study import Study, describe_runs, dry_run, load_study, run_study
from seq2seq.study.records import export_records, prune, restore_records, verify_records
from seq2seq.study.runner import run_state, select
from seq2seq.study.summary import write_summary
from seq2seq.study.workers import run_workers, set_threads, slurm_options, submit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", metavar="STUDY",
                        help="a study file, or the name of one in experiments/studies/ (several: run in turn)")
    parser.add_argument("--root", type=Path, default=Path("studies"), help="where study folders go")
    parser.add_argument("--list", action="store_true",
                        help="show the runs, their state and how far each has trained, run nothing")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config of every run")
    parser.add_argument("--prune", action="store_true",
                        help="delete the checkpoints of finished runs no other run reads, keeping what the summary "
                             "reads; they stay finished but cannot train further. Runs nothing")
    parser.add_argument("--export", type=Path, metavar="DIR",
                        help="copy every finished or failed run's record (config, results or error, metrics, test "
                             "outputs; no weights, no corpus text) to DIR/<study>/; a ladder (averaged, fine-tuned, "
                             "ensembled runs and their sources) goes whole once all of it has finished. Runs nothing")
    parser.add_argument("--restore", type=Path, metavar="DIR",
                        help="copy the records in DIR/<study>/ into the study's folder (never over a run there), "
                             "their test references written again from the data; then run the study as asked")
    parser.add_argument("--verify", type=Path, metavar="DIR",
                        help="rebuild the summary from the records in DIR/<study>/ in a scratch folder (it needs "
                             "the study's data, as --restore does) and compare it cell by cell with the tables in "
                             "DIR/<study>/ (summary.csv, summary_seeds.csv, summary_pairs.csv); exit status 1 if any "
                             "cell differs. Trains nothing")
    parser.add_argument("--only", action="append", metavar="RUN",
                        help="run only this run (all its seeds), or RUN/seed-N (repeatable)")
    parser.add_argument("--budget", type=float,
                        help="per-run budget, in the study's unit (steps, minutes, epochs): a study of its own")
    parser.add_argument("--seeds", type=_seed_list, metavar="N,N,...",
                        help="train every run once per seed (replaces the study file's seeds)")
    parser.add_argument("--workers", type=int, default=1, help="train this many runs at once, sharing the cores")
    parser.add_argument("--slurm", nargs="*", metavar="KEY=VALUE",
                        help="submit each unfinished run as a job through submitit (cluster=local: this machine)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a process of --workers
    parser.add_argument("--threads", type=int,
                        help="threads per run (default: the cores / --workers); several study commands on one "
                             "machine each need their share, or they run several times slower")
    args = parser.parse_args(argv)
    if args.budget is not None and args.budget <= 0:
        parser.error("--budget must be positive")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.verify and (args.restore or args.export or args.prune or args.only or args.list or args.dry_run
                        or args.workers > 1 or args.slurm is not None):
        parser.error("--verify checks the records alone: give it without other options")
    return args


def _seed_list(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes whole numbers separated by commas, got {text!r}") from None


def prepare(name: str, budget: float | None = None, seeds: list[int] | None = None,
            root: Path = Path("studies")) -> Study:
    """The study a command line describes: its file, then --budget, --seeds and --root."""
    study = dataclasses.replace(load_study(name), root=root)
    if budget is not None:
        study = study.with_budget(budget)
    if seeds is not None:
        study = study.with_seeds(seeds)
    return study


def _forwarded(args: argparse.Namespace, study: str, only: list[str]) -> list[str]:
    """The command line of one study for a worker process (``only``: the runs of it asked for)."""
    out = [study, "--root", str(args.root)]
    if args.budget is not None:
        out += ["--budget", repr(args.budget)]
    if args.seeds is not None:
        out += ["--seeds", ",".join(map(str, args.seeds))]
    for name in only:
        out += ["--only", name]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        set_threads(args.threads)
    studies = [prepare(name, args.budget, args.seeds, args.root) for name in args.studies]  # every file checked first
    names = {name for study in studies for spec in study.run_specs() for name in (spec.name, spec.folder)}
    unknown = [name for name in args.only or [] if name not in names]
    if unknown:  # before anything trains
        raise ConfigError(f"no study here has a run named {', '.join(unknown)}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if args.prune or args.export or args.restore or args.verify:
            raise ConfigError("--prune, --export, --restore and --verify work in one process: run them without "
                              "torchrun")
        if args.workers > 1 or args.slurm is not None:
            raise ConfigError("--workers and --slurm start processes of their own: under torchrun every run is "
                              "already data-parallel over its processes; use one or the other")
    status = 0
    for name, study in zip(args.studies, studies):
        if args.verify:
            differences, where = verify_records(study, args.verify), args.verify / study.folder
            *others, last = [t for t in ("summary.csv", "summary_seeds.csv", "summary_pairs.csv")
                             if (where / t).is_file()]  # verify_records has checked summary.csv is there
            tables = f"{', '.join(others)} and {last}" if others else last
            for line in differences:
                print(line)
            print(f"{study.name}: {len(differences)} difference(s) between {tables} in {where} and the tables its "
                  f"records give" if differences else f"{study.name}: {tables} in {where} follow from its records")
            status = max(status, 1 if differences else 0)
            continue
        if args.restore and not (args.worker or args.list or args.dry_run):
            restored = restore_records(study, args.restore, args.root, log)
            log(f"{study.name}: {len(restored)} runs restored from {args.restore}")
        if args.list:
            print("\n".join(describe_runs(study, args.root)))
            continue
        if args.dry_run:
            print(dry_run(study))
            continue
        if args.prune or args.export:
            if args.prune:
                pruned, freed = prune(study, args.root)
                print(f"{study.name}: pruned {len(pruned)} finished runs, {freed / 2**20:,.1f} MiB freed")
            if args.export:
                exported = export_records(study, args.root, args.export)
                print(f"{study.name}: {len(exported)} finished or failed runs' records in {args.export / study.folder}")
            continue
        only = [n for n in args.only or [] if n in {x for s in study.run_specs() for x in (s.name, s.folder)}]
        if args.only and not only:
            continue  # --only names runs of the other studies
        if not args.worker:
            log(f"study {study.name}: {len(study.runs)} runs" + (f" x {len(study.seeds)} seeds" if study.seeds else "")
                + f"; {study.budget_line()}")
        if args.slurm is not None:
            status = max(status, _on_cluster(args, name, study, only))
        elif args.workers > 1:
            workers = min(args.workers, max(1, _unfinished(study, args.root, only)))  # more would find nothing
            status = max(status, run_workers(_forwarded(args, name, only), workers, log, args.threads))
            _summarise(study, args.root)
        else:
            run_study(study, args.root, only or None, log, summary=not args.worker)
        if not args.worker:
            log(f"summary: {args.root / study.folder / 'summary.md'}")
        if status >= 128:  # interrupted, or a worker killed: no further study starts
            break
    return status


def _unfinished(study: Study, root: Path, only: list[str]) -> int:
    """How many of the chosen runs a worker could still train (named runs are retried even if failed)."""
    todo = ("pending", "partial", "waiting", "failed") if only else ("pending", "partial", "waiting")
    return sum(run_state(study, s, root / study.folder / s.folder) in todo for s in select(study, only or None))


def _summarise(study: Study, root: Path) -> None:
    specs = study.run_specs()
    folder = root / study.folder
    write_summary(study, folder, specs, [run_state(study, s, folder / s.folder) for s in specs])


def _on_cluster(args: argparse.Namespace, name: str, study: Study, only: list[str]) -> int:
    """One job per unfinished run, in waves (runs built from runs wait for their sources' wave),
    then the summary."""
    folder = args.root / study.folder
    study_args: dict[str, Any] = {"budget": args.budget, "seeds": args.seeds, "root": args.root}
    failed: list[str] = []
    submitted: set[str] = set()
    while True:  # a run built from another waits for a later wave: its job would find nothing to do yet
        states = {s.folder: run_state(study, s, folder / s.folder) for s in select(study, only or None)}
        todo = [f for f, state in states.items() if f not in submitted and (
            state in ("pending", "partial") or only and not submitted and state != "waiting")]
        if not todo:
            break
        submitted.update(todo)
        failed += submit(study.path, args.root, study_args, todo, slurm_options(args.slurm), folder / "slurm", log)
    _summarise(study, args.root)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
