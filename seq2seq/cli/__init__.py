"""Console entry points (installed as seq2seq-* commands; tools/ holds thin wrappers)."""

from __future__ import annotations

import argparse


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Where and at which precision a trained model runs: the same options for every tool."""
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=("model", "fp32", "bf16", "fp16"), default="model",
                        help="model (default): the precision it was trained and scored at (fp16 off a GPU: fp32)")
