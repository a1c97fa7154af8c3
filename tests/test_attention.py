import pytest
import torch

from seq2seq.models.attention import BahdanauAttention, LuongAttention, make_attention


@pytest.mark.parametrize("kind", ["bahdanau", "luong_dot", "luong_general"])
def test_padding_never_receives_weight(kind):
    torch.manual_seed(0)
    att = make_attention(kind, query_dim=8, memory_dim=8, attention_dim=5)
    states = torch.randn(3, 6, 8) * 10  # large values: padding would win without the mask
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    query = torch.randn(3, 4, 8)
    ctx, weights = att(query, att.keys(states), states, mask)
    assert ctx.shape == (3, 4, 8) and weights.shape == (3, 4, 6)
    assert torch.all(weights.masked_select(~mask.unsqueeze(1).expand_as(weights)) == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4))
    torch.testing.assert_close(weights[2, :, 0], torch.ones(4))  # one real position takes it all


def test_bahdanau_score_is_additive():
    torch.manual_seed(0)
    att = BahdanauAttention(query_dim=4, memory_dim=3, attention_dim=5)
    states, query = torch.randn(1, 2, 3), torch.randn(1, 1, 4)
    expected = att.v(torch.tanh(att.query_proj(query) + att.key_proj(states))).squeeze(-1).unsqueeze(1)
    torch.testing.assert_close(att.score(query, att.keys(states)), expected)


def test_luong_dot_needs_equal_sizes():
    with pytest.raises(ValueError, match="equal query and memory sizes"):
        LuongAttention(4, 6, "dot")
    assert make_attention("none", 4, 4, 4) is None
