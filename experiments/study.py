"""Run a study: several runs that differ by a few options (each once per seed), then one summary.

    python experiments/study.py attention                 # experiments/studies/attention.yaml
    python experiments/study.py attention --seeds 1,2,3 --workers 2
    python experiments/study.py attention --list          # the runs and their state

See seq2seq/cli/study.py (or --help) for every option.
"""

from __future__ import annotations

import sys

from seq2seq.cli.study import main
from seq2seq.experiment import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
