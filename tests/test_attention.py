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


@pytest.mark.parametrize("kind", ["dot", "general"])
def test_scaled_fp32_scores_equal_a_float64_reference(kind):
    torch.manual_seed(0)
    att = LuongAttention(16, 16, kind, scale=True, fp32=True)
    query, states = torch.randn(2, 3, 16) * 4, torch.randn(2, 5, 16) * 4
    mask = torch.ones(2, 5, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        keys = att.keys(states)
        _, weights = att(query, keys, states, mask)
    w = att.key_proj.weight.double() if att.key_proj is not None else torch.eye(16, dtype=torch.float64)
    reference = torch.softmax(query.double() @ (states.double() @ w.T).transpose(1, 2) / 4.0, dim=-1)
    torch.testing.assert_close(weights.double(), reference, rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # without fp32 the bf16 scores are visibly off
        att.fp32 = False
        _, rounded = att(query, att.keys(states), states, mask)
    assert (rounded.double() - reference).abs().max() > 1e-4


def test_the_largest_score_is_recorded_only_while_asked():
    att = make_attention("luong_dot", 4, 4, 0)
    query, states = torch.randn(1, 2, 4), torch.randn(1, 3, 4)
    mask = torch.tensor([[True, True, False]])
    att(query, att.keys(states), states, mask)
    assert att.largest_score is None
    att.largest_score = torch.zeros(())
    att(query, att.keys(states), states, mask)
    expected = (query @ states.transpose(1, 2))[..., :2].abs().max()
    torch.testing.assert_close(att.largest_score, expected)
