"""Load a trained captioning model and caption images: tensors, cached grids or files."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from seq2seq.config import Config
from seq2seq.data.images import ImageTransform
from seq2seq.ensemble import Ensemble, load_members
from seq2seq.models.model import Seq2Seq, build_captioning_model
from seq2seq.runtime import autocast, pick_device, serving_precision
from seq2seq.search import search
from seq2seq.tasks.features import image_loader
from seq2seq.tokenizers import Tokenizer
from seq2seq.train.distributed import current


def image_transform(cfg: Config) -> ImageTransform:
    """The one transform of a model: training, evaluation and the caption tool all use it."""
    return ImageTransform(cfg.image.resize, cfg.image.crop)


@dataclass
class Caption:
    text: str
    score: float  # length-normalised log-probability
    tokens: list[int]
    attention: Tensor | None  # (steps, cells) of this caption
    alternatives: list[tuple[str, float]]  # n-best (text, score), this caption first


class Captioner:
    def __init__(self, model: Seq2Seq | Ensemble, cfg: Config, tokenizer: Tokenizer, device: torch.device,
                 amp_dtype: torch.dtype | None = None):
        self.model, self.cfg, self.tokenizer = model.to(device).eval(), cfg, tokenizer
        self.device, self.amp_dtype = device, amp_dtype
        self.transform = image_transform(cfg)

    @classmethod
    def load(cls, path: str | Path | Sequence[str | Path], device: str = "auto",
             precision: str = "model") -> "Captioner":
        """From a run folder (its best checkpoint) or a checkpoint file, or several: an ensemble
        (:mod:`seq2seq.ensemble`; its members must see images alike); ``precision="model"``
        captions at the precision the model was trained and scored at (see
        :func:`~seq2seq.runtime.serving_precision`)."""
        paths = [path] if isinstance(path, (str, Path)) else list(path)
        model, first = load_members(paths, "captioning", lambda cfg, t: build_captioning_model(
            cfg.model, cfg.image, len(t["tgt"]), pretrained=False),  # the checkpoint holds the CNN weights
            same_input=lambda cfg: f"resize {cfg.image.resize}, crop {cfg.image.crop}")
        dev = pick_device(device)
        return cls(model, first.config, first.tokenizers["tgt"], dev,
                   serving_precision(precision, first.precision, dev))

    def autocast(self) -> torch.autocast:
        return autocast(self.device, self.amp_dtype)

    @torch.no_grad()
    def caption_tensors(self, images: Tensor, beam: int = 1, nbest: int = 1) -> list[Caption]:
        """images: pixels (batch, 3, H, W) or cached grids (batch, cells, channels)."""
        self.model.eval()  # the model may be shared with a trainer that left it in training mode
        with self.autocast():
            memory = self.model.encode(images.to(self.device))
            hyps = search(self.model.decoder, memory, beam, min(self.cfg.captions.max_len + 1, self.cfg.search.max_len),
                          self.cfg.search.length_penalty, nbest)
        out = []
        for nb in hyps:
            texts = self.tokenizer.decode([h.tokens for h in nb])
            out.append(Caption(texts[0], nb[0].score, nb[0].tokens, nb[0].attention,
                               [(t, h.score) for t, h in zip(texts, nb)]))
        return out

    def caption_inputs(self, inputs: Tensor | list[Path], beam: int = 1, nbest: int = 1,
                       batch_size: int = 64) -> list[Caption]:
        """Captions of cached grids or of readable image files, in order, searched in consecutive
        windows of ``batch_size`` (shared out over the ranks of a data-parallel run)."""

        def window(span: range) -> list[Caption]:
            if isinstance(inputs, Tensor):
                return self.caption_tensors(inputs[span.start:span.stop].float(), beam, nbest)
            out = []
            for path, caption, reason in self.caption_files(list(inputs[span.start:span.stop]), beam, batch_size,
                                                            nbest=nbest):
                if caption is None:
                    raise ValueError(f"{path}: {reason}")
                out.append(caption)
            return out

        spans = [range(i, min(i + batch_size, len(inputs))) for i in range(0, len(inputs), batch_size)]
        return current().shard_map(spans, window)

    @torch.no_grad()
    def summaries(self, inputs: Tensor | list[Path], batch_size: int = 64) -> Tensor:
        """The summary vector (the mean of the image's grid) of cached grids or image files:
        (images, summary_dim), shared out over the ranks of a data-parallel run."""
        self.model.eval()

        def window(span: range) -> list[Tensor]:
            if isinstance(inputs, Tensor):
                images = inputs[span.start:span.stop].float()  # (batch, cells, channels)
            else:
                images = torch.stack([self.transform.read(p) for p in inputs[span.start:span.stop]])
            with self.autocast():
                return list(self.model.encode(images.to(self.device)).summary.float().cpu())

        spans = [range(i, min(i + batch_size, len(inputs))) for i in range(0, len(inputs), batch_size)]
        return torch.stack(current().shard_map(spans, window))

    def caption_files(self, paths: list[Path], beam: int = 1, batch_size: int = 16, workers: int = 0,
                      nbest: int = 1) -> Iterator[tuple[Path, Caption | None, str]]:
        """(path, caption, "") per readable file and (path, None, reason) per unreadable one, in order."""
        done = 0
        for tensors, reasons in image_loader(paths, self.transform, batch_size, workers):
            good = [i for i, t in enumerate(tensors) if t is not None]
            caps = self.caption_tensors(torch.stack([tensors[i] for i in good]), beam, nbest) if good else []
            by_index = dict(zip(good, caps))
            for i, reason in enumerate(reasons):
                yield paths[done + i], by_index.get(i), reason
            done += len(tensors)

    def overlay(self, image: Path | Image.Image, caption: Caption) -> Image.Image | None:
        """The caption's attention over the model's view of the image (None without attention)."""
        if caption.attention is None:
            return None
        from seq2seq.plotting import attention_overlay  # here: matplotlib costs the tool half a second to import

        pixels = self.transform.read(image) if isinstance(image, Path) else self.transform(image)  # (3, crop, crop)
        pixels = self.transform.denormalise(pixels)
        view = Image.fromarray((pixels.permute(1, 2, 0).numpy() * 255).astype("uint8"))
        words = self.tokenizer.pieces(caption.tokens) + ["</s>"]
        return attention_overlay(view, caption.attention, words)
