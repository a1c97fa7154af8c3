"""Train and evaluate a translation model (default: Tatoeba English->French, 15 minutes).

    python experiments/translate.py                                   # the default run
    python experiments/translate.py --config experiments/configs/bahdanau2015.yaml
    python experiments/translate.py --time-budget 5 model.attention=none train.lr=1e-3
"""

from __future__ import annotations

import sys

from seq2seq.experiment import experiment_parser, log, prepare_run, report, run_cli
from seq2seq.tasks.translation import run


def main() -> int:
    args = experiment_parser(__doc__.splitlines()[0]).parse_args()
    cfg, run_dir = prepare_run(args, args.config.stem if args.config else "translate")
    log(f"run folder: {run_dir}")
    results = run(cfg, run_dir)
    headline = None
    if "test_bleu_beam" in results:
        low, high = results["test_bleu_beam_ci95"]
        headline = (f"test BLEU {results['test_bleu_beam']:.2f} (beam {results['beam']}; 95% bootstrap interval "
                    f"{low:.1f}-{high:.1f}), {results['test_bleu_greedy']:.2f} (greedy)  "
                    f"{results['sacrebleu_signature']}")
    return report(run_dir, results, headline, f"translate with: seq2seq-translate {run_dir}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
