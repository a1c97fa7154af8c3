"""Attention heatmaps rendered headless (Agg) to PIL images."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402
from torch import Tensor  # noqa: E402


def attention_heatmap(weights: Tensor, src_labels: list[str], tgt_labels: list[str], title: str = "") -> Image.Image:
    """A (tgt_len, src_len) weight matrix as a labelled heatmap image."""
    weights = weights[: len(tgt_labels), : len(src_labels)].float().numpy()
    fig, ax = plt.subplots(figsize=(1.0 + 0.35 * len(src_labels), 1.0 + 0.3 * len(tgt_labels)), dpi=100)
    ax.imshow(weights, cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(src_labels)), src_labels, rotation=90, fontsize=8)
    ax.set_yticks(range(len(tgt_labels)), tgt_labels, fontsize=8)
    if title:
        ax.set_title(title, fontsize=8)
    return figure_image(fig)


def attention_overlay(image: Image.Image, weights: Tensor, words: list[str], max_words: int = 12) -> Image.Image:
    """Show, Attend and Tell's figure: the image once per generated word, its attention laid over it.

    ``weights`` is (steps, cells) over a square feature grid; each map is upsampled to the image.
    """
    import numpy as np
    import torch.nn.functional as F

    steps = min(len(words), weights.size(0), max_words)
    side = int(round(weights.size(1) ** 0.5))
    maps = weights[:steps].float().view(steps, 1, side, side)
    maps = F.interpolate(maps, size=(image.height, image.width), mode="bilinear", align_corners=False)
    maps = maps.squeeze(1).numpy()
    cols = min(steps + 1, 5)
    rows = (steps + 1 + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.1 * rows), dpi=80, squeeze=False)
    pixels = np.asarray(image)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(pixels)
    axes.flat[0].set_title("image", fontsize=8)
    for i in range(steps):
        ax = axes.flat[i + 1]
        ax.imshow(pixels)
        ax.imshow(maps[i] / max(maps[i].max(), 1e-8), cmap="jet", alpha=0.45)
        ax.set_title(words[i], fontsize=8)
    return figure_image(fig)


def figure_image(fig: plt.Figure) -> Image.Image:
    """Render a matplotlib figure to an RGB image and close it."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def image_grid(rows: list[list[Image.Image]], pad: int = 8) -> Image.Image:
    """Images laid out in rows (cells as wide and tall as the largest), on white."""
    width = max(img.width for row in rows for img in row)
    height = max(img.height for row in rows for img in row)
    cols = max(len(row) for row in rows)
    grid = Image.new("RGB", (cols * (width + pad) + pad, len(rows) * (height + pad) + pad), "white")
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            grid.paste(img.convert("RGB"), (pad + c * (width + pad), pad + r * (height + pad)))
    return grid
