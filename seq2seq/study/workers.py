"""Several processes on one study. The runs of a study are independent, so N worker processes
(``--workers N``), a second terminal, or jobs on a cluster (``--slurm``) can each claim the
next run nobody holds through its folder's lock (:mod:`seq2seq.study.runner`).

``--workers N`` starts N copies of the study command (fewer when fewer runs are left), each with
``cores / N`` threads; the first process waits for them and writes the summary. ``--slurm``
submits one job per unfinished run through submitit (the ``slurm`` extra), waits, and writes
the summary.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from seq2seq.config import ConfigError


def threads_per_worker(workers: int) -> int:
    """Each worker's share of this machine's cores (at least one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // workers)


def set_threads(threads: int) -> None:
    """Limit this process's intra-op threads (torch, OpenMP, MKL)."""
    import torch

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch.set_num_threads(threads)


def run_workers(argv: list[str], workers: int, log: Callable[[str], None], threads: int | None = None) -> int:
    """Run ``workers`` copies of the study command ``argv`` (its arguments, without --workers) as
    claimers of runs with ``threads`` each (default: their share of the cores); wait for all.
    Ctrl-C and SIGTERM reach every worker, which saves and stops. Returns the worst exit status,
    a worker killed by a signal counting as 128 + the signal, and at least 128 + the signal this
    process received (so the caller starts nothing more)."""
    threads = threads or threads_per_worker(workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "seq2seq.cli.study", *argv, "--worker", "--threads", str(threads)]
    log(f"starting {workers} workers with {threads} thread(s) each")
    procs = [subprocess.Popen(command, env=env) for _ in range(workers)]

    received = 0  # the signal that asked us to stop, if any

    def forward(signum: int, frame: Any) -> None:
        nonlocal received
        received = signum
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        codes = []
        for p in procs:
            while True:
                try:
                    codes.append(p.wait())
                    break
                except KeyboardInterrupt:  # the terminal sent SIGINT to the workers too: wait for their saves
                    received = signal.SIGINT
                    continue
    finally:
        signal.signal(signal.SIGTERM, previous)
    worst = max(code if code >= 0 else 128 - code for code in codes)  # Popen: -N for killed by signal N
    return max(worst, 128 + received) if received else worst


def slurm_options(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs for submitit's executor (e.g. ``slurm_partition=gpu timeout_min=120``;
    ``cluster=local`` runs the jobs on this machine)."""
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--slurm option {pair!r} is not of the form KEY=VALUE (e.g. timeout_min=120)")
        key, value = pair.split("=", 1)
        options[key] = yaml.safe_load(value)
    return options


def submit(study_file: Path, root: Path, study_args: dict[str, Any], folders: list[str], options: dict[str, Any],
           logs: Path, log: Callable[[str], None]) -> list[str]:
    """Submit one job per run folder (``<run>[/seed-<n>]``), with submitit's files in ``logs``,
    and wait for them; the folders whose job failed, with the failure logged."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("--slurm needs submitit: pip install 'seq2seq[slurm]'") from None
    options = dict(options)
    cluster = options.pop("cluster", None)
    executor = submitit.AutoExecutor(folder=logs / "%j", cluster=cluster)
    executor.update_parameters(**{"timeout_min": 24 * 60, "name": study_file.stem, **options})
    jobs = [executor.submit(train_one, str(study_file), str(root), study_args, folder) for folder in folders]
    log(f"submitted {len(jobs)} job(s) to {executor.cluster}: {', '.join(j.job_id for j in jobs)}")
    failed = []
    for folder, job in zip(folders, jobs):
        try:
            job.result()
            log(f"{folder}: job {job.job_id} done")
        except Exception as err:  # the job's own error, as submitit reports it
            failed.append(folder)
            log(f"{folder}: job {job.job_id} failed: {str(err).strip().splitlines()[-1] if str(err) else err}")
    return failed


def train_one(study_file: str, root: str, study_args: dict[str, Any], folder: str) -> None:
    """A cluster job: claim and train one run of the study (``folder``), without the summary."""
    from seq2seq.cli.study import prepare
    from seq2seq.study.runner import run_study

    if os.environ.get("SLURM_CPUS_PER_TASK"):
        set_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))
    study = prepare(study_file, **study_args)
    run_study(study, Path(root), only=[folder], summary=False)
