"""Train and evaluate a captioning model (default: the emoji set, MobileNetV2, attention, 15 minutes).

    python experiments/caption.py                                   # the default run
    python experiments/caption.py --config experiments/configs/show_and_tell.yaml
    python experiments/caption.py captions.corpus=shapes --time-budget 2
"""

from __future__ import annotations

import sys
from pathlib import Path

from seq2seq.experiment import experiment_parser, log, prepare_run, report, run_cli
from seq2seq.tasks.captioning import run

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "caption_emoji.yaml"


def main() -> int:
    args = experiment_parser(__doc__.splitlines()[0]).parse_args()
    cfg, run_dir = prepare_run(args, args.config.stem if args.config else "caption", DEFAULT_CONFIG)
    log(f"run folder: {run_dir}")
    results = run(cfg, run_dir)
    headline = None
    if "test_bleu4" in results:
        headline = (f"test BLEU-4 {results['test_bleu4']:.2f} (beam {results['beam']}), "
                    f"{results['test_bleu4_greedy']:.2f} (greedy), nearest neighbour "
                    f"{results['test_bleu4_nearest_neighbour']:.2f}  [{results['scorer']}]")
    return report(run_dir, results, headline, f"caption a folder with: seq2seq-caption {run_dir} FOLDER")


if __name__ == "__main__":
    sys.exit(run_cli(main))
