"""Benchmark a translation configuration: training tokens/s, decoding sentences/s, memory, utilisation.

    python tools/benchmark.py                                  # the default config, random weights
    python tools/benchmark.py --config experiments/configs/bahdanau2015.yaml
    python tools/benchmark.py --run-dir runs/translate-...     # a trained model (real output lengths)
    python tools/benchmark.py --profile 10 --trace step.json   # and where a training step's time goes

Runs unchanged on a GPU (train.device=auto picks it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from seq2seq.benchmark import benchmark_translation  # noqa: E402
from seq2seq.config import load_config  # noqa: E402
from seq2seq.data.batching import ParallelData  # noqa: E402
from seq2seq.experiment import log, run_cli, spread  # noqa: E402
from seq2seq.models.model import build_translation_model  # noqa: E402
from seq2seq.tasks.translation import build_tokenizers, encode_training, load_data  # noqa: E402
from seq2seq.tasks.translator import Translator  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path)
    parser.add_argument("--run-dir", type=Path, help="benchmark this trained run (its config, tokenizers, weights)")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps (after warm-up)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--test-sentences", type=int, default=500, help="test sentences decoded")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--decode-repeats", type=int, default=3,
                        help="alternating greedy/beam rounds over the test sentences; the best of each is kept")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="profile this many more training steps: time by part of the model")
    parser.add_argument("--trace", type=Path, help="with --profile: write a Chrome trace (chrome://tracing, Perfetto)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.run_dir and (args.config or args.overrides):
        parser.error("--run-dir benchmarks the run as it was trained: drop --config and KEY=VALUE overrides")
    for name in ("steps", "test_sentences", "decode_repeats", "beam"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.run_dir:
            translator = Translator.load(args.run_dir, precision="auto")
            cfg = translator.cfg
            src_tok, tgt_tok = translator.src_tok, translator.tgt_tok
        else:
            cfg = load_config(args.config, args.overrides)
        corpus = load_data(cfg)
        if not args.run_dir:
            src_tok, tgt_tok = build_tokenizers(cfg, corpus, Path(tmp))
            model = build_translation_model(cfg.model, len(src_tok), len(tgt_tok))
            translator = Translator(model, cfg, src_tok, tgt_tok, device=torch.device("cpu"))
        encoded = encode_training(cfg, corpus, src_tok, tgt_tok)
        data = ParallelData(encoded.src, encoded.tgt, cfg.data.batch_tokens, cfg.train.seed)
        tests = [ex.src for ex in spread(corpus.test, args.test_sentences)]
        log(f"benchmarking on {corpus.name}: {args.steps} training steps, {len(tests)} test sentences")
        result = benchmark_translation(cfg, translator, data, tests, args.steps, args.warmup, args.beam, args.profile,
                                       args.trace, args.decode_repeats)
    print(result.table())
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
