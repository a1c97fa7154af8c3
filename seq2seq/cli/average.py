"""seq2seq-average: average a run's last step checkpoints into one model.

    seq2seq-average runs/translate-20261204-101500 --last 5   # writes checkpoints/averaged.pt

The run must keep them (``train.keep_checkpoints=N``). The mean of the weights of the last few
checkpoints of one run is usually a little better than any of them (OpenNMT-py's and fairseq's
averaging scripts); the result loads like any checkpoint:
``seq2seq-translate runs/.../checkpoints/averaged.pt``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from seq2seq.experiment import log, run_cli
from seq2seq.train.checkpoints import CheckpointError, average_checkpoints, save_checkpoint, step_checkpoints


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="seq2seq-average", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, metavar="RUN_DIR")
    parser.add_argument("--last", type=int, default=None, help="how many of the newest step checkpoints (default: all)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="where to write (default: RUN_DIR/checkpoints/averaged.pt)")
    args = parser.parse_args(argv)
    if args.last is not None and args.last < 1:
        parser.error("--last must be at least 1")

    def run() -> int:
        kept = step_checkpoints(args.run / "checkpoints")
        if not kept:
            raise CheckpointError(f"{args.run}: no checkpoints/step-<n>.pt; train with train.keep_checkpoints=N")
        chosen = kept[-args.last:] if args.last else kept
        if args.last and len(chosen) < args.last:
            log(f"only {len(chosen)} step checkpoints kept; averaging those")
        out = args.output or args.run / "checkpoints" / "averaged.pt"
        save_checkpoint(out, average_checkpoints(chosen))
        print(f"averaged {', '.join(p.name for p in chosen)} -> {out}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    raise SystemExit(main())
