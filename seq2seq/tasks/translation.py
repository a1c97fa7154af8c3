"""The translation task: corpus and tokenizers, validation, test evaluation, and the full run."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seq2seq.config import Config, ConfigError
from seq2seq.data.batching import ParallelData, TextBatch, collate, token_batches
from seq2seq.data.corpora import Example, ParallelCorpus, load_corpus
from seq2seq.data.encoded import EncodedPairs, encode_corpus
from seq2seq.experiment import log, spread
from seq2seq.files import atomic_write, write_lines, write_references
from seq2seq.metrics import attention_entropy, bleu, bleu_by_length, bleu_interval, chrf
from seq2seq.models.model import build_translation_model, check_attention_sizes, teacher_forced_nll
from seq2seq.runtime import (
    describe_precision,
    pick_device,
    precision_name,
    seed_everything,
    serving_precision,
)
from seq2seq.tasks.translator import Translation, Translator
from seq2seq.tokenizers import SubwordTokenizer, TokenizerError, train_sentencepiece
from seq2seq.tracking import Tracker, make_tracker
from seq2seq.train.checkpoints import load_checkpoint, take_init_tokenizers, tokenizer_refs, training_precision
from seq2seq.train.distributed import current, main_first
from seq2seq.train.sequence_level import make_objective
from seq2seq.train.trainer import Trainer


def load_data(cfg: Config) -> ParallelCorpus:
    d = cfg.data
    corpus = load_corpus(d.corpus, d.src_lang, d.tgt_lang, d.train, d.valid, d.test, d.skip_bad_lines)
    if d.max_train_pairs is not None:
        corpus.train = spread(corpus.train, d.max_train_pairs)
    if d.max_eval_sentences is not None:
        corpus.valid = spread(corpus.valid, d.max_eval_sentences)
        corpus.test = spread(corpus.test, d.max_eval_sentences)
    if not corpus.train or not corpus.valid:
        raise ValueError(f"{corpus.name}: needs training pairs and validation sentences; {corpus.describe()}")
    return corpus


def encode_training(cfg: Config, corpus: ParallelCorpus, src_tok: SubwordTokenizer,
                    tgt_tok: SubwordTokenizer) -> EncodedPairs:
    """The training pairs as the model trains on them: within ``data.max_train_words`` words a
    side and ``data.max_len`` pieces, encoded (or read from the cache)."""
    return encode_corpus(short_pairs(corpus.train, cfg.data.max_train_words), src_tok, tgt_tok, cfg.data.max_len)


def short_pairs(pairs: Sequence[tuple[str, str]], words: int | None) -> Sequence[tuple[str, str]]:
    """The pairs of at most ``words`` whitespace-separated words a side (all for None; punctuation
    stays attached, so a little looser than Bahdanau et al.'s tokenised counts for their "-30" and
    "-50" models). Applied after the tokenizers, which still learn from every pair: a run with and
    without the limit differ only in what the model trains on. Pairs read on demand from files
    stay on demand (one pass to choose them)."""
    if words is None:
        return pairs
    kept = [i for i, (s, t) in enumerate(pairs) if len(s.split()) <= words and len(t.split()) <= words]
    if not kept:
        raise ConfigError(f"data.max_train_words={words} leaves none of the {len(pairs):,} training pairs")
    log(f"{len(kept):,} of {len(pairs):,} training pairs have at most {words} words a side (data.max_train_words)")
    return pairs.take(kept) if hasattr(pairs, "take") else [pairs[i] for i in kept]


def build_tokenizers(cfg: Config, corpus: ParallelCorpus, run_dir: Path) -> tuple[SubwordTokenizer, SubwordTokenizer]:
    """Train sentencepiece on the training split (or reuse the run folder's, when resuming), or
    copy another run's (``data.tokenizers_from``: runs that share them can be ensembled)."""
    d, folder = cfg.data, run_dir / "tokenizers"
    if d.tokenizers_from:
        names = ["joint.model"] if d.joint_vocab else ["src.model", "tgt.model"]
        take_tokenizers(Path(d.tokenizers_from), folder, names)
    if d.joint_vocab:
        path = folder / "joint.model"
        if not path.exists():
            texts = itertools.chain((s for s, _ in corpus.train), (t for _, t in corpus.train))
            train_sentencepiece(texts, path, d.vocab_size, d.spm_model_type, max_sentences=600_000)
        tok = SubwordTokenizer(path)
        return tok, tok
    toks = []
    for side, name in ((0, "src"), (1, "tgt")):
        path = folder / f"{name}.model"
        if not path.exists():
            train_sentencepiece((pair[side] for pair in corpus.train), path, d.vocab_size, d.spm_model_type)
        toks.append(SubwordTokenizer(path))
    return toks[0], toks[1]


def take_tokenizers(run: Path, folder: Path, names: list[str]) -> None:
    """Copy ``names`` from ``run``'s tokenizers folder into ``folder`` (once; atomically)."""
    for name in names:
        source, target = run / "tokenizers" / name, folder / name
        if not source.is_file():
            raise TokenizerError(f"data.tokenizers_from={run}: it has no tokenizers/{name}")
        if not target.exists():
            atomic_write(target, source.read_bytes())


def evaluate(translator: Translator, examples: list[Example], beam: int) -> dict[str, Any]:
    """Translate the sources and score them against all references."""
    start = time.monotonic()
    out = translator.translate([ex.src for ex in examples], beam=beam)
    seconds = time.monotonic() - start
    hyps, refs = [t.text for t in out], [ex.refs for ex in examples]
    b, c = bleu(hyps, refs), chrf(hyps, refs)
    return {"bleu": b.score, "bleu_detail": b.detail, "brevity_penalty": b.brevity_penalty, "chrf": c.score,
            "bleu_signature": b.signature, "chrf_signature": c.signature, "hypotheses": hyps, "translations": out,
            "sentences_per_second": len(examples) / max(seconds, 1e-9),
            "by_length": bleu_by_length(hyps, refs, [len(ex.src.split()) for ex in examples]),
            "attention_entropy": attention_entropy([t.attention for t in out])}


def reference_batches(translator: Translator, examples: list[Example], batch_tokens: int) -> list[TextBatch]:
    """Teacher-forcing batches of the examples against their first reference (for perplexity)."""
    src = translator.src_tok.encode([ex.src for ex in examples])
    tgt = translator.tgt_tok.encode([ex.refs[0] for ex in examples])
    keep = [i for i in range(len(src)) if src[i]]
    lens_s, lens_t = [len(src[i]) for i in keep], [len(tgt[i]) for i in keep]
    return [collate([src[keep[j]] for j in b], [tgt[keep[j]] for j in b])
            for b in token_batches(lens_s, lens_t, batch_tokens, seed=0, epoch=0)]


def perplexity(trainer: Trainer, batches: list[TextBatch]) -> float:
    """Teacher-forced perplexity of the trainer's model on ``batches``."""
    nll, n = teacher_forced_nll(trainer.model, batches, trainer.device, trainer.autocast)
    return math.exp(min(nll / max(n, 1), 50.0))


class Validator:
    """Validation for the trainer: teacher-forced perplexity, greedy BLEU, samples and attention plots."""

    def __init__(self, cfg: Config, translator: Translator, valid: list[Example], tracker: Tracker):
        self.translator, self.tracker = translator, tracker
        self.examples = spread(valid, cfg.train.valid_sentences)
        self.batches = reference_batches(translator, self.examples, cfg.data.batch_tokens)
        self.samples = spread(self.examples, cfg.tracking.samples)
        plotted = [i for i, ex in enumerate(self.examples) if 4 <= len(ex.src.split()) <= 12]
        self.plotted = spread(plotted, cfg.tracking.attention_plots)  # indices into self.examples

    def __call__(self, trainer: Trainer) -> dict[str, float]:
        ppl = perplexity(trainer, self.batches)
        result = evaluate(self.translator, self.examples, beam=1)
        step = trainer.progress.step
        by_src = {ex.src: hyp for ex, hyp in zip(self.examples, result["hypotheses"])}
        self.tracker.table("valid/samples", ["source", "references", "hypothesis"],
                           [[ex.src, " | ".join(ex.refs), by_src[ex.src]] for ex in self.samples], step)
        if self.tracker.keeps_images:
            self.plot_attention([result["translations"][i] for i in self.plotted], step)  # the greedy ones
        return {"bleu": result["bleu"], "ppl": ppl, "score": result["bleu"]}

    def plot_attention(self, translations: list[Translation], step: int) -> None:
        """Log the attention heatmaps of ``translations`` (those with attention)."""
        from seq2seq.plotting import attention_heatmap  # here: matplotlib costs every run half a second to import

        plots = []
        for tr in translations:
            if tr.attention is not None and tr.candidates:
                tgt = self.translator.tgt_tok.pieces(tr.candidates[0].tokens) + ["</s>"]
                plots.append((attention_heatmap(tr.attention, tr.src_pieces, tgt, tr.source), tr.text))
        if plots:
            self.tracker.images("valid/attention", plots, step)


def run(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Fetch data, train tokenizers and the model within the budget, evaluate on test."""
    t0 = time.monotonic()
    seed_everything(cfg.train.seed)
    check_attention_sizes(cfg.model, cfg.model.enc_hidden * (2 if cfg.model.bidirectional else 1))  # before fetching
    with main_first():  # rank 0 fetches and encodes the corpus and trains the tokenizers; the others read them
        corpus = load_data(cfg)
        log(f"{corpus.describe()} ({time.monotonic() - t0:.0f} s)")
        if cfg.train.init_from:  # a fine-tuned model reads text as the model it starts from did
            take_init_tokenizers(cfg.train.init_from, run_dir)
        src_tok, tgt_tok = build_tokenizers(cfg, corpus, run_dir)
        log(f"tokenizers: {len(src_tok)} source and {len(tgt_tok)} target pieces ({time.monotonic() - t0:.0f} s)")
        encoded = encode_training(cfg, corpus, src_tok, tgt_tok)
    log(encoded.describe())
    data = ParallelData(encoded.src, encoded.tgt, cfg.data.batch_tokens, cfg.train.seed)

    model = build_translation_model(cfg.model, len(src_tok), len(tgt_tok))
    tracker = make_tracker(cfg.tracking, run_dir, cfg.to_dict(), job_type="translation")
    extra = {"task": "translation", "config": cfg.to_dict(),
             "tokenizers": tokenizer_refs(run_dir, src=src_tok, tgt=tgt_tok)}
    device = pick_device(cfg.train.device)
    # validation and test run at the training precision, which the checkpoint records for the tools
    amp, trained = training_precision(cfg.train, device, run_dir)
    translator = Translator(model, cfg, src_tok, tgt_tok, device, amp)
    validator = Validator(cfg, translator, corpus.valid, tracker)
    objective = make_objective(cfg.train, model, tgt_tok, cfg.data.max_len + 1, "bleu")
    trainer = Trainer(model, data, cfg.train, run_dir, tracker, validator, extra, objective=objective)
    log(f"model: {model.num_parameters():,} parameters on {trainer.device}, "
        f"{describe_precision(cfg.train.precision, trainer.amp_dtype, trainer.device, trained)}")
    progress = trainer.fit()
    if progress.stop_reason == "interrupted":
        tracker.finish()
        return {"interrupted": True, "train_steps": progress.step}

    best = trainer.checkpoint_path("best")
    ckpt = load_checkpoint(best, map_location=trainer.device)
    model.load_state_dict(ckpt["model"])
    translator.amp_dtype = serving_precision("model", ckpt.get("precision"), trainer.device)  # as the tools will
    results: dict[str, Any] = {"corpus": corpus.name, "test_sentences": len(corpus.test)}
    if corpus.test:
        greedy = evaluate(translator, corpus.test, beam=1)
        beam = evaluate(translator, corpus.test, beam=cfg.search.beam)
        if current().main:
            write_lines(run_dir / "test.greedy.txt", greedy["hypotheses"])
            write_lines(run_dir / f"test.beam{cfg.search.beam}.txt", beam["hypotheses"])
            write_lines(run_dir / "test.src.txt", [ex.src for ex in corpus.test])
            write_references(run_dir, [ex.refs for ex in corpus.test])
        results.update({
            "test_bleu_greedy": greedy["bleu"], "test_bleu_beam": beam["bleu"], "test_chrf_beam": beam["chrf"],
            "test_bleu_beam_ci95": bleu_interval(beam["hypotheses"], [ex.refs for ex in corpus.test]),
            "test_bleu_beam_detail": beam["bleu_detail"], "test_brevity_penalty_beam": beam["brevity_penalty"],
            "test_attention_entropy_beam": beam["attention_entropy"],
            "test_perplexity": perplexity(trainer, reference_batches(translator, corpus.test, cfg.data.batch_tokens)),
            "sacrebleu_signature": beam["bleu_signature"],
            "chrf_signature": beam["chrf_signature"], "beam": cfg.search.beam,
            "test_bleu_by_source_length": {k: {"bleu": v[0], "sentences": v[1]} for k, v in beam["by_length"].items()},
            "greedy_sentences_per_second": greedy["sentences_per_second"],
            "beam_sentences_per_second": beam["sentences_per_second"],
        })
    results.update({
        "valid_bleu_best": progress.best_score, "best_step": progress.best_step,
        "train_tokens_per_second": progress.tokens / max(progress.train_time, 1e-9),
        "train_steps_per_second": progress.step / max(progress.train_time, 1e-9),
        "train_steps": progress.step, "train_epochs": progress.tokens / data.tokens_per_epoch(),
        "clipped_fraction": progress.clipped_steps / max(progress.step, 1),
        "parameters": model.num_parameters(), "device": str(trainer.device), **trainer.record(t0),
        "eval_precision": precision_name(translator.amp_dtype),
        "seed": cfg.train.seed,
    })
    tracker.summary({k: v for k, v in results.items() if not isinstance(v, dict)})
    tracker.finish()
    return results





def score(models: list[Path], out: Path) -> dict[str, Any]:
    """Test scores of one trained model, an averaged checkpoint or an ensemble of several
    (``experiments/evaluate.py``), its outputs written to ``out`` as a run folder's are."""
    translator = Translator.load(models)
    cfg, corpus = translator.cfg, load_data(translator.cfg)
    greedy = evaluate(translator, corpus.test, beam=1)
    beam = evaluate(translator, corpus.test, beam=cfg.search.beam)
    refs = [ex.refs for ex in corpus.test]
    write_lines(out / "test.greedy.txt", greedy["hypotheses"])
    write_lines(out / f"test.beam{cfg.search.beam}.txt", beam["hypotheses"])
    write_lines(out / "test.src.txt", [ex.src for ex in corpus.test])
    write_references(out, refs)
    return {"task": "translation", "models": [str(m) for m in models], "corpus": corpus.name,
            "test_sentences": len(corpus.test), "beam": cfg.search.beam, "test_bleu_beam": beam["bleu"],
            "test_bleu_greedy": greedy["bleu"], "test_chrf_beam": beam["chrf"],
            "test_bleu_beam_ci95": bleu_interval(beam["hypotheses"], refs),
            "test_attention_entropy_beam": beam["attention_entropy"],
            "test_bleu_by_source_length": {k: {"bleu": v[0], "sentences": v[1]} for k, v in beam["by_length"].items()},
            "sacrebleu_signature": beam["bleu_signature"], "eval_precision": precision_name(translator.amp_dtype),
            "greedy_sentences_per_second": greedy["sentences_per_second"],
            "beam_sentences_per_second": beam["sentences_per_second"]}
