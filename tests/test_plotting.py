import torch

from seq2seq.plotting import attention_heatmap


def test_heatmap_is_an_image_sized_by_the_sentence():
    weights = torch.softmax(torch.randn(4, 6), dim=-1)
    small = attention_heatmap(weights, list("abcdef"), ["w", "x", "y", "</s>"], title="a title")
    large = attention_heatmap(torch.softmax(torch.randn(12, 15), -1), list("abcdefghijklmno"), list("abcdefghijkl"))
    assert small.mode == "RGB" and small.size[0] < large.size[0] and small.size[1] < large.size[1]
