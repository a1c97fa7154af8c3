"""Caption every image in a folder with a trained model (JSON lines: path, caption, score).

Same as the installed ``seq2seq-caption`` command; see ``--help``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seq2seq.cli.caption import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
