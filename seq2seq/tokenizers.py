"""Tokenizers with fixed special ids shared by every model: sentencepiece subwords or words.

Ids 0-3 are always ``<pad>``, ``<unk>``, ``<s>``, ``</s>``, so the embedding's
``padding_idx`` and the search's start and end tokens never depend on the vocabulary.
Both kinds are saved to a file in the run folder and share one interface.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from seq2seq.files import atomic_write

PAD, UNK, BOS, EOS = 0, 1, 2, 3


class TokenizerError(ValueError):
    """A tokenizer model is missing, unreadable or does not use the fixed special ids."""


class SubwordTokenizer:
    """A sentencepiece model loaded from a file; encodes text to ids and back."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.threads: int | None = None  # sentencepiece's threads per encode call (None: all cores)
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.load(str(self.path))
        except (OSError, RuntimeError) as err:
            raise TokenizerError(f"cannot load sentencepiece model {self.path}: {err}") from None
        ids = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        if ids != (PAD, UNK, BOS, EOS):
            raise TokenizerError(f"{self.path}: special ids are {ids}, expected pad/unk/bos/eos = 0/1/2/3")

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text, without start or end token."""
        return self.sp.encode(texts, out_type=int, num_threads=self.threads)

    def decode(self, ids: list[list[int]]) -> list[str]:
        return [self.sp.decode([i for i in seq if i > EOS]) for seq in ids]

    def pieces(self, ids: list[int]) -> list[str]:
        """Subword strings of ``ids`` (for attention plots and alignments)."""
        return [self.sp.id_to_piece(i) for i in ids]

    def starts_word(self, i: int) -> bool:
        """Whether piece ``i`` begins a word (where a too-long input may be cut)."""
        return self.sp.id_to_piece(i).startswith("\u2581")

    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def train_sentencepiece(texts: Iterable[str], path: str | Path, vocab_size: int,
                        model_type: str = "unigram", max_sentences: int = 300_000) -> SubwordTokenizer:
    """Train a sentencepiece model on ``texts`` and write it to ``path`` (``*.model``). It keeps
    sentencepiece's default normalisation, ``nmt_nfkc``: see the guide's *Normalisation*."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        hard_vocab_limit=False,  # small corpora get a smaller vocabulary instead of an error
        pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
        input_sentence_size=max_sentences,
        shuffle_input_sentence=True,
        num_threads=2,
        minloglevel=2,
    )
    atomic_write(path, model.getvalue())
    return SubwordTokenizer(path)


class WordTokenizer:
    """Lower-cased words and punctuation; words seen fewer than ``min_freq`` times map to ``<unk>``."""

    SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")
    PATTERN = re.compile(r"\w+(?:[-'\u2019]\w+)*|[^\w\s]", re.UNICODE)

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            words = json.loads(self.path.read_text(encoding="utf-8"))["words"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise TokenizerError(f"cannot load word vocabulary {self.path}: {err}") from None
        if tuple(words[:4]) != self.SPECIALS:
            raise TokenizerError(f"{self.path}: the first four words must be {self.SPECIALS}")
        self.words = words
        self.ids = {w: i for i, w in enumerate(words)}

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def split(cls, text: str) -> list[str]:
        return cls.PATTERN.findall(text.lower())

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [[self.ids.get(w, UNK) for w in self.split(t)] for t in texts]

    def decode(self, ids: list[list[int]]) -> list[str]:
        out = []
        for seq in ids:
            text = " ".join(self.words[i] for i in seq if i > EOS)
            out.append(re.sub(r" ([^\w\s(])", r"\1", text))  # no space before punctuation
        return out

    def pieces(self, ids: list[int]) -> list[str]:
        return [self.words[i] for i in ids]

    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def train_word_vocab(texts: Iterable[str], path: str | Path, min_freq: int = 1) -> WordTokenizer:
    """Count words in ``texts`` and write the vocabulary (most frequent first) to ``path``."""
    counts = Counter(w for t in texts for w in WordTokenizer.split(t))
    words = [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_freq]
    path = Path(path)
    atomic_write(path, json.dumps({"words": list(WordTokenizer.SPECIALS) + words}, ensure_ascii=False))
    return WordTokenizer(path)


def load_tokenizer_file(path: str | Path) -> SubwordTokenizer | WordTokenizer:
    """A sentencepiece ``*.model`` or a word vocabulary ``*.json``, by its suffix."""
    return WordTokenizer(path) if Path(path).suffix == ".json" else SubwordTokenizer(path)


Tokenizer = SubwordTokenizer | WordTokenizer
