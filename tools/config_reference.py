"""Write docs/configuration.md: every option of seq2seq/config.py with its type, default and meaning.

    python tools/config_reference.py           # rewrite the page
    python tools/config_reference.py --check   # exit 1 if the page is out of date (the tests run this)

The meaning of an option is the comment on its line in config.py (and the comment lines that
continue it), so the page and the code cannot say different things.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import json
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seq2seq import config  # noqa: E402

SOURCE = ROOT / "seq2seq" / "config.py"
PAGE = ROOT / "docs" / "configuration.md"

HEADER = """# Configuration reference

Every option, by section, with its type, default and meaning. Set them in a YAML file with the
same nesting (`model: {attention: bahdanau}`, passed with `--config`) or on the command line as
`section.option=value` (`model.attention=bahdanau train.lr=1e-3`); a run folder's `config.yaml`
holds the resolved config. Unknown options and bad values are one-line errors naming the option.

This page is generated from `seq2seq/config.py` by `tools/config_reference.py`; the tests fail
when it is out of date.
"""


def comments(source: str) -> dict[int, str]:
    """Line number -> the comment on that line."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def meanings(source: str) -> dict[tuple[str, str], str]:
    """(class name, field) -> its comment, with the comment-only lines right after it joined on."""
    notes, lines = comments(source), source.splitlines()
    out = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                text, line = notes.get(item.lineno, ""), item.lineno + 1
                while line <= len(lines) and lines[line - 1].strip().startswith("#"):
                    text += " " + notes[line]
                    line += 1
                out[(node.name, item.target.id)] = text
    return out


def default_of(f: dataclasses.Field) -> str:
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return f"`{json.dumps(value)}`"  # as YAML writes it: null, true, [0.9, 0.999]


def render() -> str:
    notes = meanings(SOURCE.read_text(encoding="utf-8"))
    missing, parts = [], [HEADER]
    for section in dataclasses.fields(config.Config):
        cls = section.default_factory
        what = notes.get(("Config", section.name))
        if not what:
            missing.append(section.name)
        parts.append(f"\n## `{section.name}`\n\n{what[:1].upper() + what[1:]}.\n")
        parts.append("\n| option | type | default | meaning |\n|---|---|---|---|\n")
        for f in dataclasses.fields(cls):
            meaning = notes.get((cls.__name__, f.name), "")
            if not meaning:
                missing.append(f"{section.name}.{f.name}")
            kind = str(f.type).replace("|", "or")
            parts.append(f"| `{section.name}.{f.name}` | {kind} | {default_of(f)} | {meaning.replace('|', '/')} |\n")
    if missing:
        raise SystemExit(f"options without a comment in seq2seq/config.py: {', '.join(missing)}")
    return "".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if docs/configuration.md is out of date")
    args = parser.parse_args()
    page = render()
    if args.check:
        if not PAGE.is_file() or PAGE.read_text(encoding="utf-8") != page:
            print(f"{PAGE.relative_to(ROOT)} is out of date: run python tools/config_reference.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(page, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
