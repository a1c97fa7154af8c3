"""The output layer's loss, fused: cross-entropy with label smoothing straight from the logits.

``F.log_softmax(logits.float())`` then gather and mean stores a float32 copy of the whole
(tokens, vocabulary) tensor and its log-probabilities, and its backward pass walks that tensor
five times more (the cast, the mean, the gather, the log-softmax). :class:`TokenLoss` reads
the logits a block of rows at a time in float32 and keeps only each row's log-sum-exp; its
backward pass writes the gradient, softmax minus the target distribution, straight in the
logits' dtype. The numbers are those of the unfused loss up to float32 rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

ROWS = 512  # rows of the logits in float32 at a time: 512 x 32k vocabulary = 64 MiB


class TokenLoss(torch.autograd.Function):
    """Per-token ``(1 - e) * NLL + e * mean_v(-log p_v)`` and the NLL, from logits (tokens, vocab)."""

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, smoothing: float) -> tuple[Tensor, Tensor]:
        lse = torch.empty(logits.size(0), dtype=torch.float32, device=logits.device)  # (tokens,)
        nll, mean_logit = torch.empty_like(lse), torch.empty_like(lse)
        for a in range(0, logits.size(0), ROWS):
            x = logits[a:a + ROWS].float()  # (rows, vocab)
            lse[a:a + ROWS] = torch.logsumexp(x, dim=-1)
            nll[a:a + ROWS] = lse[a:a + ROWS] - x.gather(1, target[a:a + ROWS, None]).squeeze(1)
            mean_logit[a:a + ROWS] = x.mean(dim=-1)
        loss = (1 - smoothing) * nll + smoothing * (lse - mean_logit) if smoothing else nll.clone()
        ctx.save_for_backward(logits, target, lse)
        ctx.smoothing = smoothing
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_nll: Tensor) -> tuple[Tensor, None, None]:
        logits, target, lse = ctx.saved_tensors
        e, vocab = ctx.smoothing, logits.size(1)
        grad = torch.empty_like(logits)
        for a in range(0, logits.size(0), ROWS):
            p = (logits[a:a + ROWS].float() - lse[a:a + ROWS, None]).exp_()  # softmax (rows, vocab)
            if e:
                p.sub_(e / vocab)
            p.scatter_add_(1, target[a:a + ROWS, None], torch.full_like(p[:, :1], e - 1.0))
            grad[a:a + ROWS] = p.mul_(grad_loss[a:a + ROWS, None])
        return grad, None, None


def token_losses(logits: Tensor, target: Tensor, smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
    """logits (tokens, vocab), target (tokens,) -> the training loss and the NLL of each token (tokens,)."""
    return TokenLoss.apply(logits, target, float(smoothing))
