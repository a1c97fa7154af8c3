import pytest
import torch
from conftest import CELLS, padded_batch

from seq2seq.models.encoders import TextEncoder


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
def test_memory_shapes_and_padding_invariance(cell, bidirectional, layers):
    torch.manual_seed(0)
    enc = TextEncoder(20, 10, 6, cell, layers, bidirectional).eval()
    src, lens = padded_batch([5, 2, 4])
    mem = enc(src, lens)
    width = 12 if bidirectional else 6
    assert mem.states.shape == (3, 5, width) and mem.summary.shape == (3, width)
    assert mem.mask.tolist() == [[True] * 5, [True, True, False, False, False], [True] * 4 + [False]]
    # each sentence encodes the same alone as in a padded batch (packing ignores padding)
    for i, n in enumerate(lens.tolist()):
        alone = enc(src[i:i + 1, :n], lens[i:i + 1])
        torch.testing.assert_close(alone.states[0], mem.states[i, :n], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(alone.summary[0], mem.summary[i], atol=1e-6, rtol=1e-5)
    assert torch.all(mem.states[1, 2:] == 0)


def test_summary_is_final_forward_and_first_backward_state():
    torch.manual_seed(0)
    enc = TextEncoder(20, 10, 6, "gru", 1, True).eval()
    src, lens = padded_batch([4, 3])
    mem = enc(src, lens)
    torch.testing.assert_close(mem.summary[1, :6], mem.states[1, 2, :6])  # forward at the last real token
    torch.testing.assert_close(mem.summary[1, 6:], mem.states[1, 0, 6:])  # backward at the first


def test_empty_source_is_refused():
    enc = TextEncoder(20, 10, 6)
    with pytest.raises(ValueError, match="at least one token"):
        enc(torch.zeros(1, 3, dtype=torch.long), torch.tensor([0]))

