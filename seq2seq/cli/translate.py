"""seq2seq-translate: translate sentences typed at a prompt, or piped on stdin (one per line).

    seq2seq-translate runs/translate-20261122-101500            # a REPL on a terminal
    seq2seq-translate RUN_DIR < input.en > output.fr              # batch mode, line by line
    seq2seq-translate RUN_DIR --beam 5 --nbest 3 --format jsonl < input.en
    seq2seq-translate RUN_A RUN_B RUN_C < input.en                # an ensemble: the mean of their probabilities
    tail -f chat.log | seq2seq-translate RUN_DIR                  # each line answered as it comes

A line holding several sentences is translated sentence by sentence (``--no-split``: as one),
and a sentence longer than the model was trained on in parts (a line on stderr says so); one
output line per input line. Input from a pipe is translated in windows of ``--batch-size``
lines, or whatever has arrived when the pipe pauses for 0.1 s; a file always in full windows,
so ``seq2seq-translate RUN < test.src.txt`` prints the scored ``test.beam5.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import stat
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from seq2seq.cli import add_model_options
from seq2seq.experiment import run_cli
from seq2seq.search import beam_for_nbest
from seq2seq.tasks.translator import Translation, Translator

HELP = """commands:
  :beam N     beam size (1 = greedy)
  :nbest K    show the K best translations
  :align      toggle the word alignment (attention) of the best translation
  :split      toggle translating a line sentence by sentence
  :help       this text
  :quit       leave (so do an empty line, Ctrl-D and Ctrl-C)"""
COMMANDS = ("beam", "nbest", "align", "split", "help")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="seq2seq-translate", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, nargs="+", metavar="RUN_DIR_OR_CHECKPOINT",
                        help="a trained run or checkpoint; several: an ensemble (they must share tokenizers)")
    parser.add_argument("--beam", type=int, default=None, help="beam size (default: the model's, 1 = greedy)")
    parser.add_argument("--nbest", type=int, default=1,
                        help="translations per sentence (raises the beam to at least this)")
    parser.add_argument("--max-len-ratio", type=float, default=None, help="output length limit per source token")
    parser.add_argument("--format", choices=("text", "jsonl"), default="text", help="batch-mode output format")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="sentences searched together in batch mode (default: the model's search.batch_size)")
    parser.add_argument("--no-split", dest="split", action="store_false", default=None,
                        help="translate each line as one sentence, however many it holds "
                             "(default: the model's search.split_sentences)")
    add_model_options(parser)
    args = parser.parse_args(argv)
    for name in ("nbest", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.beam is not None and args.beam < 1:
        parser.error("--beam must be at least 1")
    if args.max_len_ratio is not None and args.max_len_ratio <= 0:
        parser.error("--max-len-ratio must be positive")
    return args


def alignment(tr: Translation, pieces: list[str]) -> str:
    """Each output piece with the source piece it attends to most."""
    if tr.parts > 1:
        return "(no alignment for a line translated in parts)"
    if tr.attention is None:
        return "(this model has no attention)"
    best = tr.attention[: len(pieces)].argmax(dim=-1).tolist()
    return "  ".join(f"{p}->{tr.src_pieces[j]}" for p, j in zip(pieces, best))


def as_json(tr: Translation) -> str:
    best = tr.candidates[0] if tr.candidates else None
    return json.dumps({"source": tr.source, "translation": tr.text, "score": best.score if best else None,
                       "nbest": [{"translation": c.text, "score": c.score} for c in tr.candidates]},
                      ensure_ascii=False)


PAUSE = 0.1  # seconds without a new line after which a pipe's lines so far are translated


def chunks(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    """Full windows of ``size`` lines (the last one shorter)."""
    chunk: list[str] = []
    for line in lines:
        chunk.append(line.rstrip("\r\n"))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def streamed_chunks(lines: Iterable[str], size: int, pause: float = PAUSE) -> Iterator[list[str]]:
    """Windows of ``size`` lines, or fewer when no line came for ``pause`` seconds: lines fed
    one at a time (a chat, a log, another program) are answered while the input stays open. A
    reader thread takes the lines in; a fast pipe fills whole windows as a file does."""
    arrived: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        try:
            for line in lines:
                arrived.put(line)
        finally:
            arrived.put(None)

    threading.Thread(target=read, daemon=True).start()
    chunk: list[str] = []
    while True:
        try:
            line = arrived.get(timeout=pause) if chunk else arrived.get()
        except queue.Empty:  # the input paused: answer what is here
            yield chunk
            chunk = []
            continue
        if line is None:
            break
        chunk.append(line.rstrip("\r\n"))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def is_file(stream: TextIO) -> bool:
    """Whether ``stream`` reads a regular file (never pauses: always full windows)."""
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):  # io.StringIO and friends: data already there
        return True


def split_note(tr: Translation, limit: int, where: str) -> str | None:
    """A line saying that a line was translated in parts because a sentence of it was too long."""
    if tr.longest_part <= limit:
        return None
    return (f"{where}: a sentence of {tr.longest_part:,} pieces is longer than the {limit} the model was "
            f"trained on; translated in {tr.parts} parts, joined")


def batch_mode(translator: Translator, args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    """One output line per input line, in order; empty lines stay empty."""
    beam, note = beam_for_nbest(args.beam or translator.cfg.search.beam, args.nbest)
    if note:
        print(note, file=sys.stderr)
    batch_size = args.batch_size or translator.cfg.search.batch_size
    windows = chunks(stdin, batch_size) if is_file(stdin) else streamed_chunks(stdin, batch_size)
    done = 0
    for chunk in windows:
        for tr in translator.translate(chunk, beam, args.nbest, args.max_len_ratio, batch_size, args.split):
            done += 1
            warning = split_note(tr, translator.cfg.data.max_len, f"line {done}")
            if warning:
                print(warning, file=sys.stderr, flush=True)
            stdout.write((as_json(tr) if args.format == "jsonl" else tr.text) + "\n")
        stdout.flush()
    return 0


def repl(translator: Translator, args: argparse.Namespace) -> int:
    import readline  # line editing and history at the prompt

    from seq2seq.data.fetch import cache_dir

    history = cache_dir() / "translate_history"
    try:
        readline.read_history_file(history)
    except OSError:
        pass
    beam, nbest, show_align = args.beam or translator.cfg.search.beam, args.nbest, False
    if args.split is None:  # :split toggles from the model's own setting
        args.split = translator.cfg.search.split_sentences
    lang = translator.cfg.data.src_lang
    note = beam_for_nbest(beam, nbest)[1]
    print(f"seq2seq translate ({lang}->{translator.cfg.data.tgt_lang}), beam {beam}{f' ({note})' if note else ''}. "
          f"Type a sentence; :help for commands; an empty line quits.")
    try:
        while True:
            try:
                line = input(f"{lang}> ").strip()
            except (EOFError, KeyboardInterrupt):
                print()
                break
            except UnicodeDecodeError as err:  # a strict terminal decoder: its bytes, escaped as below
                line = bytes(err.object).decode("utf-8", "surrogateescape").strip()
            escaped = next((ord(c) - 0xDC00 for c in line if 0xDC80 <= ord(c) <= 0xDCFF), None)
            if escaped is not None:  # a surrogate-escaping decoder passes the byte on
                print(f"that line is not UTF-8 text (byte 0x{escaped:02x}); type it again")
                continue
            if not line or line in (":quit", ":q", ":exit"):
                break
            cmd, _, value = line[1:].partition(" ")
            if line.startswith(":") and cmd in COMMANDS:  # anything else, ":)" included, is a sentence
                value = value.strip()
                if cmd in ("beam", "nbest") and not (value.isascii() and value.isdigit() and int(value) >= 1):
                    print(f":{cmd} takes a whole number of at least 1, not {value!r}")
                elif cmd in ("beam", "nbest"):
                    if cmd == "beam":
                        beam = int(value)
                    else:
                        nbest = int(value)
                    note = beam_for_nbest(beam, nbest)[1]
                    print(f"beam {beam}, nbest {nbest}" + (f" ({note}; :nbest 1 for greedy)" if note else ""))
                elif cmd == "align":
                    show_align = not show_align
                    print(f"alignment {'on' if show_align else 'off'}")
                elif cmd == "split":
                    args.split = not args.split
                    print(f"sentence splitting {'on' if args.split else 'off'}")
                else:
                    print(HELP)
                continue
            if line.startswith(":") and cmd.isascii() and cmd.isalpha():
                print(f"no command :{cmd}; :help lists them")
                continue
            tr = translator.translate([line], beam_for_nbest(beam, nbest)[0], nbest, args.max_len_ratio,
                                      split=args.split)[0]
            for i, cand in enumerate(tr.candidates):
                print(cand.text if nbest == 1 and len(tr.candidates) == 1 else
                      f"{i + 1}. {cand.text}  ({cand.score:.3f})")
            if tr.parts > 1:
                print(split_note(tr, translator.cfg.data.max_len, "note") or
                      f"(translated sentence by sentence: {tr.parts} sentences; :split to translate as one)")
                if nbest > 1:
                    print("(a line translated in parts has one translation: its parts' best, joined)")
            if show_align and tr.candidates:
                print(alignment(tr, translator.tgt_tok.pieces(tr.candidates[0].tokens) + ["</s>"]))
    finally:
        try:
            readline.write_history_file(history)
        except OSError:
            pass
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def run() -> int:
        translator = Translator.load(args.model, device=args.device, precision=args.precision)
        if sys.stdin.isatty():
            return repl(translator, args)
        stdin = open(sys.stdin.fileno(), encoding="utf-8", errors="replace", newline="\n", closefd=False)
        sys.stdout.reconfigure(encoding="utf-8")
        return batch_mode(translator, args, stdin, sys.stdout)

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
