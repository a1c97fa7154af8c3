"""The fused loss equals log-softmax, gather and mean, in value and gradient."""

import pytest
import torch
import torch.nn.functional as F

from seq2seq.models import loss as fused
from seq2seq.models.model import summed_sequence_loss
from seq2seq.tokenizers import PAD


def reference(logits, tgt_out, smoothing):
    """The unfused loss this project used before (float32 log-probabilities of every token)."""
    logp = F.log_softmax(logits.reshape(-1, logits.size(-1)).float(), dim=-1)
    target = tgt_out.reshape(-1)
    real = target != PAD
    nll = -logp.gather(1, target.unsqueeze(1)).squeeze(1).masked_fill(~real, 0.0).sum()
    smooth = -logp.mean(dim=-1).masked_fill(~real, 0.0).sum()
    return (1 - smoothing) * nll + smoothing * smooth, nll.detach(), int(real.sum())


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_fused_loss_and_gradient_match_the_unfused_ones(dtype, tol, smoothing, monkeypatch):
    monkeypatch.setattr(fused, "ROWS", 7)  # several blocks of rows, the last one short
    torch.manual_seed(0)
    logits = (torch.randn(3, 11, 50) * 4).to(dtype)
    tgt_out = torch.randint(1, 50, (3, 11))
    tgt_out[0, 6:] = PAD
    tgt_out[2, 9:] = PAD
    grads, values = [], []
    for fn in (summed_sequence_loss, reference):
        x = logits.clone().requires_grad_()
        loss, nll, n = fn(x, tgt_out, smoothing)
        (loss * 1.7).backward()
        grads.append(x.grad)
        values.append((loss.detach(), nll, n))
        assert not nll.requires_grad and x.grad.dtype == dtype
    torch.testing.assert_close(values[0][0], values[1][0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(values[0][1], values[1][1], rtol=1e-5, atol=1e-4)
    assert values[0][2] == values[1][2] == 33 - 5 - 2
    torch.testing.assert_close(grads[0].float(), grads[1].float(), rtol=tol, atol=tol * 1e-2)
    assert grads[0][0, 6:].abs().sum() == 0  # padding gets no gradient
