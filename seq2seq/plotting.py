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
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")
