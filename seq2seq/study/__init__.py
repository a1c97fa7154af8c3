"""Studies: runs that differ by a few options, trained one after another under one budget and
compared in one table and a few plots (see :mod:`seq2seq.study.spec` for the file format)."""

from seq2seq.study.runner import describe_runs, dry_run, run_state, run_study
from seq2seq.study.spec import RunSpec, Study, load_study

__all__ = ["RunSpec", "Study", "describe_runs", "dry_run", "load_study", "run_state", "run_study"]
