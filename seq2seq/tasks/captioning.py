"""The captioning task: corpora and vocabulary, cached CNN features, validation, evaluation
(BLEU-1..4, CIDEr-D where available, a nearest-neighbour baseline) and the full run.

The model is the shared decoder over an :class:`~seq2seq.models.encoders.ImageEncoder`; training,
search, metrics and tracking are the translation task's, unchanged.
"""

from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from seq2seq.config import Config
from seq2seq.data.batching import pad_ids, token_batches
from seq2seq.data.captions import (
    CaptionCorpus,
    CaptionExample,
    captions_table,
    coco_json,
    karpathy_json,
    shapes_corpus,
    split_examples,
)
from seq2seq.data.corpora import CorpusError
from seq2seq.data.emoji import emoji_corpus, twemoji_examples
from seq2seq.data.fetch import cache_dir
from seq2seq.data.images import load_image
from seq2seq.experiment import log, spread
from seq2seq.files import write_lines, write_references
from seq2seq.metrics import CIDErD, bleu, bleu_interval, caption_words, check_references, ref_streams
from seq2seq.models.model import build_captioning_model, teacher_forced_nll
from seq2seq.runtime import (
    describe_precision,
    move,
    pick_device,
    precision_name,
    seed_everything,
    serving_precision,
)
from seq2seq.tasks.captioner import Captioner, image_transform
from seq2seq.tasks.features import cached_grids
from seq2seq.tokenizers import (
    BOS,
    EOS,
    Tokenizer,
    load_tokenizer_file,
    train_sentencepiece,
    train_word_vocab,
)
from seq2seq.tracking import Tracker, make_tracker
from seq2seq.train.checkpoints import (
    load_checkpoint,
    load_weights,
    take_init_tokenizers,
    tokenizer_refs,
    training_precision,
)
from seq2seq.train.distributed import current, main_first
from seq2seq.train.sequence_level import make_objective
from seq2seq.train.trainer import Trainer

SCORER = "sacreBLEU {version} corpus BLEU-n, tokenize=13a, lowercased, all references of each image"


def _check_images(corpus: CaptionCorpus, captions: Path, skip: bool) -> None:
    """Images a captions file names but that are not there: a one-line error, or (``skip``) left out."""
    splits = (corpus.train, corpus.valid, corpus.test)
    missing = [ex.image for split in splits for ex in split if not ex.image.is_file()]
    if not missing:
        return
    if not skip:
        raise CorpusError(f"{len(missing)} image(s) named in {captions} do not exist, e.g. {missing[0]}; check "
                          f"captions.images (the image folder), or set captions.skip_missing_images=true")
    for split in splits:
        split[:] = [ex for ex in split if ex.image.is_file()]
    log(f"{captions}: left out {len(missing)} image(s) that do not exist, e.g. {missing[0]}")


def load_captions(cfg: Config) -> CaptionCorpus:
    c = cfg.captions
    if c.corpus == "emoji":
        corpus = emoji_corpus(c.lang)
    elif c.corpus == "shapes":
        corpus = shapes_corpus(cache_dir() / "shapes" / f"{c.shapes}-{c.shapes_size}", c.shapes, 0, c.shapes_size)
    else:
        files = [Path(p.strip()) for p in c.captions.split(",")]
        root = Path(c.images) if c.images else files[0].parent
        if c.corpus == "karpathy":
            corpus = karpathy_json(files[0], root)
        elif c.corpus == "table":
            corpus = split_examples(files[0].stem, captions_table(files[0], root))
        elif len(files) == 1:
            corpus = split_examples(files[0].stem, coco_json(files[0], root))
        else:
            parts = [coco_json(f, root) for f in files]
            corpus = CaptionCorpus(files[0].stem, parts[0], parts[1], parts[2] if len(parts) > 2 else [])
        _check_images(corpus, files[0], c.skip_missing_images)
    if c.max_train_images is not None:
        corpus.train = spread(corpus.train, c.max_train_images)
    if not corpus.train or not corpus.valid:
        raise CorpusError(f"{corpus.name}: needs training and validation images; {corpus.describe()}")
    return corpus


def build_caption_tokenizer(cfg: Config, corpus: CaptionCorpus, run_dir: Path) -> Tokenizer:
    """A word vocabulary or a sentencepiece model trained on the training captions (target side only)."""
    word = cfg.captions.tokenizer == "word"
    path = run_dir / "tokenizers" / ("words.json" if word else "tgt.model")
    if path.exists():  # a resumed run keeps its vocabulary
        return load_tokenizer_file(path)
    texts = [cap for ex in corpus.train for cap in ex.captions]
    if word:
        return train_word_vocab(texts, path, cfg.captions.min_freq)
    return train_sentencepiece(texts, path, cfg.captions.vocab_size)


@dataclass
class CaptionBatch:
    images: Tensor  # (batch, cells, channels) cached grids, or (batch, 3, H, W) pixels
    tgt_in: Tensor  # (batch, tgt_len)
    tgt_out: Tensor  # (batch, tgt_len)

    @property
    def inputs(self) -> tuple[Tensor]:
        return (self.images,)

    @property
    def size(self) -> int:
        return self.images.size(0)

    def to(self, device: torch.device) -> "CaptionBatch":
        return CaptionBatch(move(self.images, device), move(self.tgt_in, device), move(self.tgt_out, device))

    def num_tokens(self) -> int:
        return int((self.tgt_out != 0).sum())


class CaptionData:
    """(image, caption) training pairs; images come from cached grids or are loaded and transformed."""

    def __init__(self, examples: list[CaptionExample], tokenizer: Tokenizer, grids: Tensor | None, transform,
                 budget: int, seed: int, max_len: int):
        self.examples, self.grids, self.transform, self.budget, self.seed = examples, grids, transform, budget, seed
        self.pairs: list[tuple[int, list[int]]] = []
        for i, ex in enumerate(examples):
            for ids in tokenizer.encode(ex.captions):
                if 0 < len(ids) <= max_len:
                    self.pairs.append((i, ids))
        if not self.pairs:
            raise CorpusError("no training captions left (check captions.max_len)")

    def __len__(self) -> int:
        return len(self.pairs)

    def tokens_per_epoch(self) -> int:
        return sum(len(ids) + 1 for _, ids in self.pairs)

    def epoch(self, epoch: int) -> list[list[int]]:
        return token_batches([0] * len(self.pairs), [len(ids) for _, ids in self.pairs], self.budget, self.seed, epoch)

    def batch(self, indices: list[int]) -> CaptionBatch:
        images = [self.pairs[i][0] for i in indices]
        if self.grids is not None:
            pixels = self.grids[images].float()  # (batch, cells, channels)
        else:
            pixels = torch.stack([self.transform.read(self.examples[i].image) for i in images])
        tgt_in, _ = pad_ids([[BOS] + self.pairs[i][1] for i in indices])
        tgt_out, _ = pad_ids([self.pairs[i][1] + [EOS] for i in indices])
        return CaptionBatch(pixels, tgt_in, tgt_out)


def bleu_scores(hyps: list[str], refs: list[list[str]]) -> dict[str, float]:
    return {f"bleu{n}": bleu(hyps, refs, max_ngram_order=n, lowercase=True).score for n in range(1, 5)}


def cider_d(hyps: list[str], refs: list[list[str]]) -> float:
    """Corpus CIDEr-D x 100, document frequencies from ``refs`` as coco-caption computes them:
    pycocoevalcap's when installed (the ``cider`` extra), else ours, which agrees with it."""
    check_references(hyps, refs)
    try:
        from pycocoevalcap.cider.cider import Cider
    except ImportError:
        return CIDErD().corpus_score(hyps, ref_streams(refs)).score

    score, _ = Cider().compute_score({i: [caption_words(r) for r in rs] for i, rs in enumerate(refs)},
                                     {i: [caption_words(h)] for i, h in enumerate(hyps)})
    return float(score) * 100


def nearest_neighbour(train_pooled: Tensor, train: list[CaptionExample], pooled: Tensor) -> list[str]:
    """Each image gets the first caption of the training image with the most similar pooled feature (cosine)."""
    a = torch.nn.functional.normalize(train_pooled.float(), dim=-1)
    b = torch.nn.functional.normalize(pooled.float(), dim=-1)
    best = (b @ a.T).argmax(dim=1).tolist()
    return [train[j].captions[0] for j in best]


class Validator:
    """Teacher-forced perplexity, greedy BLEU-4, sample captions and attention overlays on at most
    ``train.valid_sentences`` validation images; batches are built one at a time, never all at once."""

    def __init__(self, cfg: Config, captioner: Captioner, valid: list[CaptionExample], grids: Tensor | None,
                 tracker: Tracker):
        self.captioner, self.tracker = captioner, tracker
        chosen = spread(list(range(len(valid))), cfg.train.valid_sentences)
        self.examples = [valid[i] for i in chosen]
        self.grids = None if grids is None else grids[chosen]
        self.data = CaptionData(self.examples, captioner.tokenizer, self.grids, captioner.transform,
                                cfg.captions.batch_tokens, seed=0, max_len=10_000)
        self.samples = spread(list(range(len(self.examples))), cfg.tracking.samples)
        self.plotted = spread(list(range(len(self.examples))), cfg.tracking.attention_plots)

    def __call__(self, trainer: Trainer) -> dict[str, float]:
        batches = (self.data.batch(b) for b in self.data.epoch(0))
        nll, n = teacher_forced_nll(trainer.model, batches, trainer.device, trainer.autocast)
        caps = self.captioner.caption_inputs(_inputs(self.grids, self.examples), beam=1)
        scores = bleu_scores([c.text for c in caps], [ex.captions for ex in self.examples])
        step = trainer.progress.step
        if self.tracker.keeps_images:  # images nobody keeps are not drawn
            shown = []
            for i in self.samples:
                ex = self.examples[i]
                shown.append((load_image(ex.image), f"{caps[i].text}  (ref: {' | '.join(ex.captions)})"))
            self.tracker.images("valid/samples", shown, step)
            overlays = [self.captioner.overlay(self.examples[i].image, caps[i]) for i in self.plotted]
            self.tracker.images("valid/attention", [(o, caps[i].text) for o, i in zip(overlays, self.plotted) if o],
                                step)
        return {"bleu4": scores["bleu4"], "ppl": math.exp(min(nll / max(n, 1), 50.0)), "score": scores["bleu4"]}


def evaluate(captioner: Captioner, examples: list[CaptionExample], inputs: Tensor | list[Path],
             beam: int) -> dict[str, Any]:
    start = time.monotonic()
    caps = captioner.caption_inputs(inputs, beam=beam)
    hyps, refs = [c.text for c in caps], [ex.captions for ex in examples]
    return {**bleu_scores(hyps, refs), "hypotheses": hyps, "captions": caps,
            "images_per_second": len(examples) / max(time.monotonic() - start, 1e-9)}


def _load_start(model: torch.nn.Module, run_dir: Path, init_from: str | None) -> None:
    """Load the weights training starts from (the run's last checkpoint, else ``train.init_from``)
    before its features are cached: a model fine-tuned elsewhere has other frozen CNN weights than
    a fresh build, whose features would be stale. The trainer loads them again, with its checks."""
    last = run_dir / "checkpoints" / "last.pt"
    if current().from_main(last.exists()):  # every rank as rank 0 (ranks then cache features together)
        model.load_state_dict(load_checkpoint(last)["model"])
    elif init_from:
        load_weights(model, init_from)


def run(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Fetch data and weights, cache features, train within the budget, evaluate on test."""
    t0 = time.monotonic()
    seed_everything(cfg.train.seed)
    with main_first():  # rank 0 fetches images and weights and builds the tokenizer; the others then read them
        corpus = load_captions(cfg)
        if cfg.train.init_from:  # a fine-tuned model reads captions as the model it starts from did
            take_init_tokenizers(cfg.train.init_from, run_dir)
        tokenizer = build_caption_tokenizer(cfg, corpus, run_dir)
        model = build_captioning_model(cfg.model, cfg.image, len(tokenizer))
    log(corpus.describe())
    device = pick_device(cfg.train.device)
    amp, trained = training_precision(cfg.train, device, run_dir)
    encoder = model.encoder.to(device)
    transform = image_transform(cfg)
    captioner = Captioner(model, cfg, tokenizer, device, amp)
    grids: dict[str, Tensor | None] = {"train": None, "valid": None, "test": None}
    if encoder.frozen_blocks and cfg.image.cache_features:  # the frozen blocks run once per image
        _load_start(model, run_dir, cfg.train.init_from)
        for split in grids:
            examples = getattr(corpus, split)
            if examples:
                started = time.monotonic()
                grids[split] = cached_grids(encoder, [ex.image for ex in examples], transform, device, amp)
                log(f"{split}: features of {len(examples):,} images ready ({time.monotonic() - started:.0f} s)")
    data = CaptionData(corpus.train, tokenizer, grids["train"], transform, cfg.captions.batch_tokens,
                       cfg.train.seed, cfg.captions.max_len)
    log(f"vocabulary: {len(tokenizer)} {cfg.captions.tokenizer}s; {len(data):,} training captions")

    tracker = make_tracker(cfg.tracking, run_dir, cfg.to_dict(), job_type="captioning")
    extra = {"task": "captioning", "config": cfg.to_dict(), "tokenizers": tokenizer_refs(run_dir, tgt=tokenizer)}
    validator = Validator(cfg, captioner, corpus.valid, grids["valid"], tracker)
    groups = None
    if not encoder.frozen:
        cnn = [p for p in encoder.cnn.parameters() if p.requires_grad]
        rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("encoder.cnn.")]
        groups = [{"params": rest}, {"params": cnn, "lr_scale": cfg.image.finetune_lr_scale}]
    objective = make_objective(cfg.train, model, tokenizer, cfg.captions.max_len + 1, "cider",  # df: as decoded
                               [tokenizer.decode(tokenizer.encode(ex.captions)) for ex in corpus.train])
    trainer = Trainer(model, data, cfg.train, run_dir, tracker, validator, extra, param_groups=groups,
                      objective=objective)
    log(f"model: {model.num_parameters():,} trainable parameters on {device}, "
        f"{describe_precision(cfg.train.precision, amp, device, trained)}")
    progress = trainer.fit()
    if progress.stop_reason == "interrupted":
        tracker.finish()
        return {"interrupted": True, "train_steps": progress.step}

    ckpt = load_checkpoint(trainer.checkpoint_path("best"), map_location=device)
    model.load_state_dict(ckpt["model"])
    captioner.amp_dtype = serving_precision("model", ckpt.get("precision"), device)  # as the caption tool will
    test = corpus.test
    test_inputs = _inputs(grids["test"], test)
    results: dict[str, Any] = {"corpus": corpus.name, "test_images": len(test)}
    if test:
        beam = evaluate(captioner, test, test_inputs, cfg.search.beam)
        greedy = evaluate(captioner, test, test_inputs, 1)
        refs = [ex.captions for ex in test]
        train_pooled = captioner.summaries(_inputs(grids["train"], corpus.train))
        nn_caps = nearest_neighbour(train_pooled, corpus.train, captioner.summaries(test_inputs))
        seen = {ex.key.split(":")[0] for ex in corpus.train}
        unseen = [i for i, ex in enumerate(test) if ex.key.split(":")[0] not in seen]
        results.update({f"test_{k}": v for k, v in beam.items() if k.startswith("bleu")})
        results.update({
            "test_bleu4_greedy": greedy["bleu4"],
            "test_bleu_beam_ci95": bleu_interval(beam["hypotheses"], refs, lowercase=True),  # of test_bleu4
            "test_bleu4_nearest_neighbour": bleu_scores(nn_caps, refs)["bleu4"],
            "test_bleu4_unseen_base": bleu_scores([beam["hypotheses"][i] for i in unseen],
                                                  [refs[i] for i in unseen])["bleu4"] if unseen else None,
            "test_unseen_base_images": len(unseen), "beam": cfg.search.beam,
            "test_cider_d": cider_d(beam["hypotheses"], refs),
            "scorer": SCORER.format(version=_sacrebleu_version()) + "; CIDEr-D: "
            + ("pycocoevalcap" if importlib.util.find_spec("pycocoevalcap") else "seq2seq.metrics.CIDErD") + " (x100)",
        })
        if current().main:
            _write_captions(run_dir / f"test.beam{cfg.search.beam}.tsv", test, beam["hypotheses"])
            write_lines(run_dir / f"test.beam{cfg.search.beam}.txt", beam["hypotheses"])  # for paired tests
            write_lines(run_dir / "test.greedy.txt", greedy["hypotheses"])
            write_references(run_dir, refs)
        if cfg.captions.corpus == "emoji" and cfg.captions.twemoji_test:
            results.update(_twemoji_scores(cfg, captioner, test, beam["hypotheses"], grids["test"] is not None))
    results.update({
        "valid_bleu4_best": progress.best_score, "best_step": progress.best_step,
        "images_per_second": progress.examples / max(progress.train_time, 1e-9),
        "train_steps": progress.step, "train_epochs": progress.tokens / data.tokens_per_epoch(),
        "clipped_fraction": progress.clipped_steps / max(progress.step, 1),
        "parameters": model.num_parameters(), "device": str(device), **trainer.record(t0),
        "eval_precision": precision_name(captioner.amp_dtype),
        "seed": cfg.train.seed,
    })
    tracker.summary({k: v for k, v in results.items() if not isinstance(v, dict)})
    tracker.finish()
    return results


def score(models: list[Path], out: Path) -> dict[str, Any]:
    """Test scores of one trained model, an averaged checkpoint or an ensemble of several
    (``experiments/evaluate.py``), read from the image files, written to ``out`` as a run's are."""
    captioner = Captioner.load(models)
    cfg, test = captioner.cfg, load_captions(captioner.cfg).test
    beam = evaluate(captioner, test, _inputs(None, test), cfg.search.beam)
    greedy = evaluate(captioner, test, _inputs(None, test), 1)
    refs = [ex.captions for ex in test]
    _write_captions(out / f"test.beam{cfg.search.beam}.tsv", test, beam["hypotheses"])
    write_lines(out / f"test.beam{cfg.search.beam}.txt", beam["hypotheses"])
    write_lines(out / "test.greedy.txt", greedy["hypotheses"])
    write_references(out, refs)
    return {"task": "captioning", "models": [str(m) for m in models], "test_images": len(test),
            "beam": cfg.search.beam, **{f"test_{k}": v for k, v in beam.items() if k.startswith("bleu")},
            "test_bleu4_greedy": greedy["bleu4"], "test_cider_d": cider_d(beam["hypotheses"], refs),
            "test_bleu_beam_ci95": bleu_interval(beam["hypotheses"], refs, lowercase=True),
            "eval_precision": precision_name(captioner.amp_dtype)}


def _twemoji_scores(cfg: Config, captioner: Captioner, test: list[CaptionExample], hyps: list[str],
                    cached: bool) -> dict[str, Any]:
    """BLEU-4 on the test emoji drawn by Twemoji's artists, beside the Noto score of the same emoji."""
    drawn = twemoji_examples(test)
    paths = [ex.image for ex in drawn]
    inputs = cached_grids(captioner.model.encoder, paths, captioner.transform, captioner.device,
                          captioner.amp_dtype) if cached else paths
    twemoji = evaluate(captioner, drawn, inputs, cfg.search.beam)
    keys = {ex.key for ex in drawn}
    noto = [(h, ex.captions) for h, ex in zip(hyps, test) if ex.key in keys]
    return {"test_twemoji_images": len(drawn), "test_bleu4_twemoji": twemoji["bleu4"],
            "test_bleu4_noto_same_images": bleu_scores([h for h, _ in noto], [r for _, r in noto])["bleu4"]}


def _inputs(grids: Tensor | None, examples: list[CaptionExample]) -> Tensor | list[Path]:
    """What the model reads of these images: their cached grids, or the files."""
    return grids if grids is not None else [ex.image for ex in examples]


def _sacrebleu_version() -> str:
    import sacrebleu

    return sacrebleu.__version__


def _write_captions(path: Path, examples: list[CaptionExample], hyps: list[str]) -> None:
    write_lines(path, [f"{ex.image.name}\t{h}\t{' | '.join(ex.captions)}" for ex, h in zip(examples, hyps)])
