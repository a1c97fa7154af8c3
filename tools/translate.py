"""Translate with a trained model: a REPL on a terminal, line-by-line batch mode on a pipe.

Same as the installed ``seq2seq-translate`` command; see ``--help``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seq2seq.cli.translate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
