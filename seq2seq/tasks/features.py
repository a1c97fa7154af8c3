"""CNN feature grids extracted once and cached on disk, so the frozen blocks of a CNN run once
per image (all of it when it is frozen; the blocks before the fine-tuned ones otherwise).

The cache key covers everything the features depend on: the frozen blocks' weights (hashed),
their number, the transform, the precision it runs at, how pixels are decoded and laid out,
and each image file's path, size and modification time. Grids are stored in the dtype the CNN
produced them in (bf16 under bf16 autocast, else fp32), so training on cached grids sees the
numbers the caption tool computes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from seq2seq.data.fetch import cache_dir, cache_lock
from seq2seq.data.images import ImageError, ImageTransform
from seq2seq.experiment import log
from seq2seq.models.encoders import ImageEncoder
from seq2seq.runtime import autocast, precision_name
from seq2seq.train.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from seq2seq.train.distributed import current


class ImageFiles(Dataset):
    """Transformed images; an unreadable file gives ``(None, reason)`` instead of raising."""

    def __init__(self, paths: list[Path], transform: ImageTransform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor | None, str]:
        try:
            return self.transform.read(self.paths[i]), ""
        except ImageError as err:
            return None, str(err)


def collate_images(items: list[tuple[Tensor | None, str]]) -> tuple[list[Tensor | None], list[str]]:
    return [t for t, _ in items], [r for _, r in items]


def image_loader(paths: list[Path], transform: ImageTransform, batch_size: int, workers: int = 0) -> DataLoader:
    """Batches of (tensors or None, reasons) in the order of ``paths``."""
    return DataLoader(ImageFiles(paths, transform), batch_size=batch_size, num_workers=workers,
                      collate_fn=collate_images, shuffle=False)


def weights_digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def extract_grids(encoder: ImageEncoder, paths: list[Path], transform: ImageTransform, device: torch.device,
                  amp_dtype: torch.dtype | None, batch_size: int = 32, workers: int = 0,
                  progress: Callable[[int, int], None] | None = None) -> Tensor:
    """Feature grids (images, cells, channels) as the frozen blocks output them; an unreadable image is an
    error. In a data-parallel run each rank extracts its share of the batches and all get every grid."""
    encoder.eval()
    d = current()
    spans = d.shard([range(i, min(i + batch_size, len(paths))) for i in range(0, len(paths), batch_size)])
    mine = [paths[i] for span in spans for i in span]  # one loader: its batches are this rank's spans
    grids, done = [], 0
    for tensors, reasons in image_loader(mine, transform, batch_size, workers):
        for path, tensor, reason in zip(mine[done:], tensors, reasons):
            if tensor is None:
                raise ImageError(f"{path}: {reason}")
        with autocast(device, amp_dtype):
            grids.append(encoder.frozen_grid(torch.stack(tensors).to(device)).cpu())  # (batch, cells, channels)
        done += len(tensors)
        if progress:
            progress(done, len(mine))
    return torch.cat(d.collect(grids, -(-len(paths) // batch_size)))


# how files become pixels and pixels features; a change here (images.py's decoding, the CNN's
# layout) must change this line, or old features would be read as new ones
PIXELS = ("v3: JPEG drafts at the resize size; transparency (alpha, palette, colour key) on white; 16-bit grey / 257; "
          "channels-last CNN, batch norms folded")


def cached_grids(encoder: ImageEncoder, paths: list[Path], transform: ImageTransform, device: torch.device,
                 amp_dtype: torch.dtype | None, workers: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> Tensor:
    """:func:`extract_grids`, read from the cache when the same CNN has seen the same files."""
    stats = [(str(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths]
    frozen = encoder.cnn[: encoder.frozen_blocks]
    key = hashlib.sha256(json.dumps({"cnn": weights_digest(frozen), "blocks": len(frozen),
                                     "transform": repr(transform), "precision": precision_name(amp_dtype),
                                     "pixels": PIXELS, "device": device.type,
                                     "torch": [torch.__version__, torchvision.__version__],
                                     "files": stats}).encode()).hexdigest()[:24]
    path = cache_dir() / "features" / f"{key}.pt"
    # one process extracts, another waits and reads (not across the ranks of one run: they extract together)
    with contextlib.nullcontext() if current().active else cache_lock(str(path)):
        return _cached(path, encoder, paths, transform, device, amp_dtype, workers, progress)


def _cached(path: Path, encoder: ImageEncoder, paths: list[Path], transform: ImageTransform, device: torch.device,
            amp_dtype: torch.dtype | None, workers: int, progress: Callable[[int, int], None] | None) -> Tensor:
    grids, problem = _read_cache(path, len(paths)) if path.exists() else (None, "")
    if all(ok for [ok] in current().gather([grids is not None])):  # ranks extract together, so all read or none
        return grids
    if problem:
        log(f"feature cache {path} is damaged ({problem}); extracting the features again")
        path.unlink(missing_ok=True)
    grids = extract_grids(encoder, paths, transform, device, amp_dtype, workers=workers, progress=progress)
    if current().main:
        save_checkpoint(path, {"grids": grids, "files": len(paths)})
    return grids


def _read_cache(path: Path, n: int) -> tuple[Tensor | None, str]:
    """The cached grids of ``n`` images, or None and what is wrong with the file."""
    try:
        entry = load_checkpoint(path)
    except CheckpointError as err:
        return None, str(err)
    grids = entry.get("grids")
    if not isinstance(grids, Tensor) or entry.get("files") != n or len(grids) != n:
        return None, f"it holds {len(grids) if isinstance(grids, Tensor) else 'no'} grids for {n} images"
    return grids, ""
