"""The model registry: `build(name, input_shape, num_classes)` returns an uncompiled Keras model;
`model_flops_per_sample` estimates what one training example costs (for the scaling report);
`check_model_file` tells, without TensorFlow, whether a file is a saved Keras model.

Models are built inside `strategy.scope()` by the caller so that their variables are mirrored.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import UserError

if TYPE_CHECKING:
    import keras

# Factories import Keras when called, so that listing and validating names costs no TensorFlow import.
ModelFactory = Callable[[tuple[int, ...], int], "keras.Model"]
_REGISTRY: dict[str, ModelFactory] = {}


class ModelError(UserError):
    """An unknown model name, or a model that cannot take this data (a user error: exit 2)."""


def register(name: str) -> Callable[[ModelFactory], ModelFactory]:
    def add(factory: ModelFactory) -> ModelFactory:
        _REGISTRY[name] = factory
        return factory

    return add


def names() -> list[str]:
    return sorted(_REGISTRY)


def check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise ModelError(f"unknown --model {name!r}: known models are {', '.join(names())}")


def build(name: str, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    check_name(name)
    return _REGISTRY[name](tuple(input_shape), num_classes)


def check_model_file(path: str) -> None:
    """A .keras file as `model.save()` writes it: a zip archive whose config.json describes a model.
    Anything else is bad input (ModelError), found before TensorFlow starts."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"evaluate {path}: {'is a folder' if p.is_dir() else 'no such file'}")
    not_a_model = (
        f"evaluate {path}: not a Keras model (a .keras file that model.save() or --save-model wrote)"
    )
    try:
        with zipfile.ZipFile(p) as archive:
            config = json.loads(archive.read("config.json"))
    except PermissionError:
        raise ModelError(f"evaluate {path}: permission denied") from None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        raise ModelError(not_a_model) from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise ModelError(not_a_model)


@register("cnn")
def small_cnn(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Two conv blocks and a dense head: fast enough to train on a CPU in seconds."""
    import keras

    layers: list[Any] = [keras.Input(shape=input_shape)]
    if len(input_shape) == 2:
        layers.append(keras.layers.Reshape((*input_shape, 1)))
    layers += [
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        # float32 logits even under mixed precision: softmax in float16 loses the small classes
        keras.layers.Dense(num_classes, dtype="float32"),
    ]
    return keras.Sequential(layers, name="cnn")


@register("mlp")
def mlp(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    import keras

    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(num_classes, dtype="float32"),
        ],
        name="mlp",
    )


@register("resnet50")
def resnet50(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """keras.applications.ResNet50 from scratch (weights=None: nothing is downloaded)."""
    if len(input_shape) != 3 or input_shape[0] < 32 or input_shape[1] < 32:
        raise ModelError(f"resnet50 needs images of at least 32x32xC, got input shape {input_shape}")
    import keras

    body = keras.applications.ResNet50(
        weights=None, include_top=False, input_shape=input_shape, pooling="avg"
    )
    outputs = keras.layers.Dense(num_classes, dtype="float32")(body.output)
    return keras.Model(body.input, outputs, name="resnet50")


def model_flops_per_sample(model: Any) -> float:
    """Training FLOPs per example: 6 x the multiply-accumulates of the Conv and Dense layers.

    A multiply-accumulate is 2 FLOPs and the backward pass costs about twice the forward one
    (gradients for the inputs and for the weights), hence 2 x 3. Pooling, normalisation,
    activations and the optimizer are left out: they are a few per cent for conv nets, which is
    why this is the usual estimate (e.g. Kaplan et al. 2020, "6N per token").
    """
    import keras

    macs = 0.0
    for layer in _leaf_layers(model):
        try:
            in_shape = tuple(layer.input.shape)
            out_shape = tuple(layer.output.shape)
        except (AttributeError, ValueError):
            continue
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            macs += num_elements(out_shape[1:]) * kh * kw
        elif isinstance(layer, keras.layers.Conv2D | keras.layers.Conv1D | keras.layers.Conv3D):
            in_channels = in_shape[-1] // getattr(layer, "groups", 1)
            macs += num_elements(out_shape[1:]) * num_elements(layer.kernel_size) * in_channels
        elif isinstance(layer, keras.layers.Dense):
            macs += num_elements(out_shape[1:]) * in_shape[-1]
    return 6.0 * macs


def _leaf_layers(model: Any) -> list[Any]:
    found = []
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            found.extend(_leaf_layers(layer))
        else:
            found.append(layer)
    return found


def num_elements(shape: Sequence[Any]) -> float:
    """The product of a shape's dimensions (1 for a scalar's empty shape)."""
    out = 1.0
    for v in shape:
        out *= int(v)
    return out
