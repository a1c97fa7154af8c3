"""Train and evaluate a translation model (default: Tatoeba English->French, 15 minutes).

    python experiments/translate.py                                   # the default run
    python experiments/translate.py --config experiments/configs/bahdanau2015.yaml
    python experiments/translate.py --time-budget 5 model.attention=none train.lr=1e-3
"""

from __future__ import annotations

import json
import sys

from seq2seq.experiment import experiment_parser, log, prepare_run, run_cli, write_results
from seq2seq.translation import run


def main() -> int:
    args = experiment_parser(__doc__.splitlines()[0]).parse_args()
    cfg, run_dir = prepare_run(args, f"{cfg_name(args)}")
    log(f"run folder: {run_dir}")
    results = run(cfg, run_dir)
    if results.get("interrupted"):
        log(f"interrupted; run the same command with --run-dir {run_dir} to resume")
        return 130
    path = write_results(run_dir, results)
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, dict)}, indent=2))
    if "test_bleu_beam" in results:
        print(f"\ntest BLEU {results['test_bleu_beam']:.2f} (beam {results['beam']}), "
              f"{results['test_bleu_greedy']:.2f} (greedy)  {results['sacrebleu_signature']}")
    print(f"results: {path}\nmodel:   {run_dir}/checkpoints/best.pt\n"
          f"translate with: seq2seq-translate {run_dir}")
    return 0


def cfg_name(args) -> str:
    return args.config.stem if args.config else "translate"


if __name__ == "__main__":
    sys.exit(run_cli(main))
