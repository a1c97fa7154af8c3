"""Encoders turn an input (a sentence, an image) into a :class:`~seq2seq.models.memory.Memory`
for the shared decoder."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq.models.backbones import BackboneError, blocks, build_backbone, fold_batch_norms, load_weights
from seq2seq.models.memory import Memory
from seq2seq.models.recurrence import ExplicitRNN
from seq2seq.models.rnn import Dropout, make_rnn
from seq2seq.tokenizers import PAD


class TextEncoder(nn.Module):
    """Embeddings and a (bi)directional multi-layer RNN over packed sequences (Cho et al., 2014).

    With ``input_dim`` the inputs are vectors (batch, src_len, input_dim), projected linearly
    instead of embedded (the adding problem's (value, marker) pairs); padding is then known
    from the lengths alone.
    """

    def __init__(self, vocab_size: int, emb_dim: int, hidden: int, cell: str = "gru", layers: int = 1,
                 bidirectional: bool = True, dropout: float = 0.0, input_dim: int | None = None,
                 recurrent_gain: float | None = None, forget_bias: float | None = None, rnn_impl: str = "torch",
                 chrono_tmax: int | None = None):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD) if input_dim is None \
            else nn.Linear(input_dim, emb_dim)
        self.dropout = Dropout(dropout)
        self.rnn = make_rnn(cell, emb_dim, hidden, layers, dropout, bidirectional, recurrent_gain, forget_bias,
                            rnn_impl, chrono_tmax)
        self.directions = 2 if bidirectional else 1
        self.layers = layers  # final states handed to the decoder (Memory.layers)
        self.output_dim = hidden * self.directions  # size of each memory vector and of the summary
        self.summary_dim = self.output_dim

    @staticmethod
    def mask(src: Tensor, src_lens: Tensor) -> Tensor:
        """(batch, src_len) bool, True at real positions."""
        positions = torch.arange(src.size(1), device=src.device)
        return positions < src_lens.to(src.device).unsqueeze(1)

    def forward(self, src: Tensor, src_lens: Tensor) -> Memory:
        """src (batch, src_len) ids or (batch, src_len, input_dim) vectors, src_lens (batch,)
        -> Memory of (batch, src_len, output_dim)."""
        if int(src_lens.min()) < 1:
            raise ValueError("every source sentence needs at least one token (an empty line was batched)")
        emb = self.dropout(self.embed(src))  # (batch, src_len, emb_dim)
        if isinstance(self.rnn, ExplicitRNN):  # padding is masked, not packed
            states, final = self.rnn(emb, None, self.mask(src, src_lens))
        elif bool((src_lens == src.size(1)).all()):
            # no padding (length-bucketed batches mostly have none): skip packing, whose backward
            # on the CPU grows with the square of the length for GRU and tanh RNN layers
            states, final = self.rnn(emb)
        else:
            packed = pack_padded_sequence(emb, src_lens.cpu(), batch_first=True, enforce_sorted=False)
            out, final = self.rnn(packed)
            states, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))
        h, c = final if isinstance(final, tuple) else (final, None)  # (layers*dirs, batch, hidden)
        layers = self._by_layer(h)  # (layers, batch, output_dim)
        return Memory(self.dropout(states), self.mask(src, src_lens), layers[-1], layers,
                      None if c is None else self._by_layer(c))

    def _by_layer(self, state: Tensor) -> Tensor:
        """(layers*dirs, batch, hidden) -> (layers, batch, dirs*hidden): each layer's directions joined."""
        n, batch, hidden = state.shape
        return state.view(n // self.directions, self.directions, batch, hidden).permute(0, 2, 1, 3).reshape(
            n // self.directions, batch, self.directions * hidden)


class ImageEncoder(nn.Module):
    """A torchvision CNN cut at ``grid_block``: its feature map becomes a grid of memory vectors
    (Show, Attend and Tell) and their mean the summary (Show and Tell's image vector).

    The blocks before ``finetune_from`` are frozen (all of them when it is None); frozen
    batch-norm layers stay in evaluation mode. The frozen blocks' output does not change during
    training, so it can be cached: ``forward`` takes images (batch, 3, H, W) or that cached
    output as a grid (batch, cells, channels), and runs the trainable blocks on the latter.
    """

    def __init__(self, backbone: str = "mobilenet_v2", grid_block: int = -1, weights: str | None = None,
                 finetune_from: int | None = None, dropout: float = 0.0):
        super().__init__()
        full = build_backbone(backbone)
        if weights not in (None, "none"):
            load_weights(full, backbone, weights)
        all_blocks = blocks(full, backbone)
        last = grid_block % len(all_blocks) if -len(all_blocks) <= grid_block < len(all_blocks) else None
        if last is None:
            raise BackboneError(f"image.grid_block={grid_block} is out of range: {backbone} has "
                                f"{len(all_blocks)} blocks (0..{len(all_blocks) - 1}, or -1 for the last)")
        # channels-last: on the CPU, oneDNN's convolutions run about twice as fast in this layout
        self.cnn = nn.Sequential(*all_blocks[: last + 1]).to(memory_format=torch.channels_last)
        self.frozen_blocks = len(self.cnn) if finetune_from is None else max(0, min(finetune_from, len(self.cnn)))
        for block in self.cnn[: self.frozen_blocks]:
            block.requires_grad_(False)
        self._folded: tuple[tuple, nn.Module] | None = None  # the frozen blocks, batch norms folded; see frozen_map
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_folded", None))
        self.output_dim = _channels(self.cnn)
        self.summary_dim = self.output_dim
        self.dropout = Dropout(dropout)

    @property
    def frozen(self) -> bool:
        return self.frozen_blocks == len(self.cnn)

    def train(self, mode: bool = True) -> "ImageEncoder":
        super().train(mode)
        for block in self.cnn[: self.frozen_blocks]:
            block.eval()  # frozen batch-norm statistics must not drift
        return self

    def frozen_map(self, images: Tensor) -> Tensor:
        """images (batch, 3, H, W) -> the frozen blocks' feature map (batch, channels, H', W').

        Frozen blocks always run in evaluation mode, so they run with their batch norms folded
        into the convolutions (1.6x faster on the CPU): a copy made on first use and again
        whenever their weights change (a state dict loaded, a move to another device, an
        in-place change of a parameter). Buffers count by place only: a data-parallel run
        copies rank 0's (equal) statistics into them before every step."""
        if not self.frozen_blocks:
            return _channels_last(images)
        frozen = self.cnn[: self.frozen_blocks]
        stamp = (tuple((p.data_ptr(), p._version) for p in frozen.parameters()),
                 tuple(b.data_ptr() for b in frozen.buffers()))
        if self._folded is None or self._folded[0] != stamp:
            self._folded = (stamp, fold_batch_norms(frozen))  # a tuple: not registered as a submodule
        return self._folded[1](_channels_last(images))

    def frozen_grid(self, images: Tensor) -> Tensor:
        """images (batch, 3, H, W) -> the frozen blocks' feature grid (batch, H'*W', channels), in
        the CNN's output dtype (bf16 under bf16 autocast): what the feature cache stores."""
        return self.frozen_map(images).flatten(2).transpose(1, 2)

    def forward(self, images: Tensor) -> Memory:
        # live CNN or cached frozen grid: the decoder gets the same fp32 numbers either way
        if images.dim() == 4:
            features = self.cnn[self.frozen_blocks:](self.frozen_map(images))  # (batch, channels, H', W')
            grid = features.flatten(2).transpose(1, 2)  # (batch, cells, channels)
        elif self.frozen:
            grid = images
        else:
            grid = self.cnn[self.frozen_blocks:](_grid_to_map(images)).flatten(2).transpose(1, 2)
        grid = grid.float()
        mask = torch.ones(grid.shape[:2], dtype=torch.bool, device=grid.device)
        return Memory(self.dropout(grid), mask, grid.mean(dim=1))


def _channels_last(images: Tensor) -> Tensor:
    return images.contiguous(memory_format=torch.channels_last)  # (batch, 3, H, W), stored as (batch, H, W, 3)


def _grid_to_map(grid: Tensor) -> Tensor:
    """(batch, cells, channels) of a square feature map -> (batch, channels, side, side), a
    channels-last view."""
    side = math.isqrt(grid.size(1))
    if side * side != grid.size(1):
        raise ValueError(f"cached features of {grid.size(1)} cells are not a square grid")
    return grid.transpose(1, 2).reshape(grid.size(0), grid.size(2), side, side)


def _channels(cnn: nn.Sequential) -> int:
    """Output channels of a CNN, from a probe in evaluation mode: a probe in training mode
    would move every batch-norm layer's running statistics toward those of a blank image."""
    was_training = cnn.training
    cnn.eval()
    try:
        with torch.no_grad():
            return cnn(torch.zeros(1, 3, 64, 64)).size(1)
    finally:
        cnn.train(was_training)
