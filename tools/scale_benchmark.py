"""Benchmark a big corpus: the same training command on Tatoeba and on N million pairs, peak memory of each.

    python tools/scale_benchmark.py                  # 10 million pairs, 100 training steps
    python tools/scale_benchmark.py --pairs 1000000

The big corpus is Tatoeba English-French repeated, each copy's sources marked with its number
(`... #17`) so that no copy repeats another; it is written once as a TSV into the cache
(`$SEQ2SEQ_CACHE/scale/`). Each run is `experiments/translate.py` in a fresh process and run
folder (tokenizers trained, the corpus split, encoded and batched, then trained for --steps
steps and scored on a few hundred test sentences); its peak resident memory comes from the
kernel (`wait4`). The big corpus's encoding is removed afterwards, so every benchmark encodes
afresh. Prints the stage times and rates from the runs' logs, and the memory beside Tatoeba's.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seq2seq.data.batching import ParallelData  # noqa: E402
from seq2seq.data.corpora import tatoeba_pairs  # noqa: E402
from seq2seq.data.encoded import open_encoded  # noqa: E402
from seq2seq.data.fetch import cache_dir  # noqa: E402


def big_corpus(pairs: int) -> Path:
    """Tatoeba repeated with a per-copy marker up to ``pairs`` lines, written once."""
    path = cache_dir() / "scale" / f"tatoeba-en-fr-{pairs}.tsv"
    if not path.exists():
        base = [(" ".join(s.split()), " ".join(t.split())) for s, t in tatoeba_pairs("fr")]
        tmp = path.with_suffix(".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            for copy in range(-(-pairs // len(base))):
                lines = [f"{s} #{copy}\t{t}\n" for s, t in base[: pairs - copy * len(base)]]
                f.write("".join(lines))
        os.replace(tmp, path)
    return path


def run(name: str, overrides: list[str], steps: int, folder: Path) -> dict:
    """One training command in its own process: wall time, peak RSS (GiB) and its log."""
    cmd = [sys.executable, str(ROOT / "experiments" / "translate.py"), "--run-dir", str(folder / name),
           f"train.max_steps={steps}", "train.time_budget=null", "data.max_eval_sentences=300",
           "tracking.enabled=false", *overrides]
    log_path = folder / f"{name}.log"
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    text = log_path.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{name} run failed:\n{text[-3000:]}")
    return {"wall": time.monotonic() - start, "rss": usage.ru_maxrss / 2**20, "log": text}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10_000_000)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    started = time.monotonic()
    corpus = big_corpus(args.pairs)
    print(f"corpus: {corpus} ({corpus.stat().st_size / 2**20:,.0f} MiB, written in "
          f"{time.monotonic() - started:.0f} s or earlier)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        small = run("tatoeba", [], args.steps, folder)
        big = run("big", ["data.corpus=files", f"data.train={corpus}"], args.steps, folder)
        encoded = re.search(r"training pairs encoded .*: (\S+)$", big["log"], re.M)
        if encoded:  # time one epoch's plan of the memory-mapped corpus, then remove it
            pairs = open_encoded(Path(encoded.group(1)))
            data = ParallelData(pairs.src, pairs.tgt, budget=6000, seed=1)
            start = time.monotonic()
            batches = data.epoch(0)
            print(f"one epoch's batch plan over {len(data):,} pairs: {len(batches):,} batches in "
                  f"{time.monotonic() - start:.1f} s", flush=True)
            del pairs, data, batches
            shutil.rmtree(encoded.group(1), ignore_errors=True)
        for name, r in (("tatoeba", small), ("big", big)):
            print(f"\n== {name}: {r['wall']:.0f} s wall, peak RSS {r['rss']:.2f} GiB")
            for line in r["log"].splitlines():
                if re.search(r"training pairs|tokenizers:|sources|training stopped|test BLEU|tok/s", line):
                    print("   ", line)
    print(f"\npeak RSS beyond Tatoeba's: {big['rss'] - small['rss']:.2f} GiB "
          f"({big['rss']:.2f} vs {small['rss']:.2f} GiB) for {args.pairs:,} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
