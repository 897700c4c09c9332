"""Models: architectures by name with normalisation inside, and safetensors checkpoints.

``create("cnn", dataset="mnist")`` returns a :class:`Normalize`-wrapped network mapping images in
[0, 1] (N, C, H, W) to logits (N, K); ``save`` / ``load`` keep the weights in safetensors and
everything else (architecture, dataset, normalisation, training, metrics) in JSON. Pickles are
never read.

Bring your own (:mod:`robustlab.models.external`): ``load_external("pkg.mod:build", weights=...,
mean=..., std=...)`` builds a network with your factory and loads a safetensors or weights-only
``torch.save`` state dict; TorchScript files too, and ONNX files through robustlab's own converter
(:mod:`robustlab.models.onnx`, :class:`OnnxGraph`; the optional ``onnx`` extra installs the reader).

Architectures (:func:`architectures`): ``mlp``, ``cnn`` (Madry et al.'s MNIST CNN), ``small-cnn``
(Wong & Kolter's small CPU network), ``resnet18`` (CIFAR-style) and ``resnet18-imagenet`` (the
ImageNet stem), ``preact-resnet18``, ``wrn-28-10`` and ``wrn-34-10`` (the adversarial-training
papers' CIFAR-10 networks), ``resnet2b`` / ``resnet4b`` (VNN-COMP 2021); any input size and
channel count.

Models trained elsewhere (:mod:`robustlab.models.catalog`): ``robustlab models list`` names
them, ``catalog:NAME`` loads one wherever a model path is taken (fetched and SHA-256 checked).
"""

from __future__ import annotations

from robustlab.models.checkpoint import (
    import_state_dict,
    load,
    load_metadata,
    load_state_dict_into,
    read_state,
    save,
)
from robustlab.models.external import from_factory, load_external, load_onnx, load_torchscript, read_weights
from robustlab.models.metrics import accuracy, predictions
from robustlab.models.normalize import Normalize
from robustlab.models.onnx import OnnxGraph
from robustlab.models.rbf import RBFHead, rbf_confidence, with_rbf_head
from robustlab.models.registry import architectures, create, register_architecture

__all__ = [
    "Normalize",
    "OnnxGraph",
    "RBFHead",
    "accuracy",
    "architectures",
    "create",
    "from_factory",
    "import_state_dict",
    "load",
    "load_external",
    "load_metadata",
    "load_onnx",
    "load_torchscript",
    "load_state_dict_into",
    "predictions",
    "rbf_confidence",
    "read_state",
    "read_weights",
    "register_architecture",
    "save",
    "with_rbf_head",
]
