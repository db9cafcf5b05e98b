"""The model registry: `build(name, input_shape, num_classes)` returns an uncompiled Keras model,
a built-in one by name or a user's own (training.inputs.user_model: `PATH.py:FUNCTION`,
`package.module:FUNCTION`, a saved `MODEL.keras`); `check_model` checks a --model before
TensorFlow; `model_flops_per_sample` estimates what one training example costs (for the scaling
report); `check_model_file` tells, without TensorFlow, whether a file is a saved Keras model.

Models are built inside `strategy.scope()` by the caller so that their variables are mirrored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from training.inputs import user_model

# re-exported: what callers of the registry catch and call
from training.inputs.user_model import ModelError as ModelError
from training.inputs.user_model import check_model_file as check_model_file

if TYPE_CHECKING:
    import keras

# Factories import Keras when called, so that listing and validating names costs no TensorFlow import.
ModelFactory = Callable[[tuple[int, ...], int], "keras.Model"]
_REGISTRY: dict[str, ModelFactory] = {}


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


def check_model(name: str) -> None:
    """A built-in name, or a user's model as far as it can be checked before TensorFlow."""
    if name in _REGISTRY:
        return
    if not (":" in name or name.endswith((".py", user_model.SAVED_SUFFIX))):
        raise ModelError(
            f"unknown --model {name!r}: known models are {', '.join(names())}, or {user_model.FORMS}"
        )
    user_model.check_spec(name)


def build(
    name: str, input_shape: tuple[int, ...], num_classes: int, custom_objects: str | None = None
) -> keras.Model:
    """The model `name` names, for this data; a user's is checked against it (ModelError).
    `custom_objects` (--custom-objects) is imported first: the code a user's model needs."""
    if name in _REGISTRY:
        return _REGISTRY[name](tuple(input_shape), num_classes)
    check_model(name)
    user_model.import_custom_objects(custom_objects)
    if not user_model.is_saved_model(name):
        return user_model.build_from_function(name, input_shape, num_classes)
    label = f"--model {name}"
    model = user_model.load_saved(name, label)
    user_model.check_fits_data(model, input_shape, num_classes, label, exact_classes=False)
    return model


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


# the help of --model and --custom-objects (declared in training.settings.config)
MODEL_HELP = (
    f"one of {', '.join(names())} (default cnn), or your own: PATH.py:FUNCTION or package.module:FUNCTION "
    "(FUNCTION(input_shape, num_classes) returns a keras.Model), or a saved MODEL.keras to train on"
)
CUSTOM_HELP = "the .py files or modules (comma-separated) that define a saved model's custom layers"


def model_flops_per_sample(model: Any) -> float:
    """Training FLOPs per example: 6 x the multiply-accumulates of the Conv and Dense layers.

    A multiply-accumulate is 2 FLOPs and the backward pass costs about twice the forward one
    (gradients for the inputs and for the weights), hence 2 x 3. Pooling, normalisation,
    activations and the optimizer are left out: they are a few per cent for conv nets, which is
    why this is the usual estimate (e.g. Kaplan et al. 2020, "6N per token").
    """
    return 6.0 * _multiply_accumulates(model)[0]


def estimate_flops_per_sample(model: Any) -> float | None:
    """`model_flops_per_sample` where every layer's cost is known (a user's model too), else None:
    a layer this estimate cannot cost (a custom layer, attention, a recurrent layer, a Lambda)
    would make the figure, and a fraction of peak from it, made up."""
    macs, complete = _multiply_accumulates(model)
    return 6.0 * macs if complete else None


# Built-in layers whose cost the estimate leaves out on purpose (see model_flops_per_sample)
_NEGLIGIBLE = (  # noqa: SIM905 (a list of names reads better as words)
    "InputLayer Flatten Reshape Permute RepeatVector Dropout SpatialDropout1D "
    "SpatialDropout2D SpatialDropout3D GaussianNoise GaussianDropout AlphaDropout Activation "
    "ReLU LeakyReLU PReLU ELU Softmax BatchNormalization LayerNormalization "
    "GroupNormalization UnitNormalization Rescaling Normalization Resizing CenterCrop "
    "RandomFlip RandomRotation RandomZoom RandomTranslation RandomCrop RandomContrast "
    "ZeroPadding1D ZeroPadding2D ZeroPadding3D Cropping1D Cropping2D Cropping3D MaxPooling1D "
    "MaxPooling2D MaxPooling3D AveragePooling1D AveragePooling2D AveragePooling3D "
    "GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D GlobalAveragePooling1D "
    "GlobalAveragePooling2D GlobalAveragePooling3D Add Subtract Multiply Average Maximum "
    "Minimum Concatenate Embedding Identity"
).split()


def _multiply_accumulates(model: Any) -> tuple[float, bool]:
    """The Conv and Dense layers' multiply-accumulates per example, and whether every other layer
    is one the estimate may leave out."""
    import keras

    negligible = tuple(getattr(keras.layers, n) for n in _NEGLIGIBLE if hasattr(keras.layers, n))
    macs, complete = 0.0, True
    for layer in _leaf_layers(model):
        costed = isinstance(layer, keras.layers.Conv1D | keras.layers.Conv2D | keras.layers.Conv3D)
        costed |= isinstance(layer, keras.layers.Dense | keras.layers.DepthwiseConv2D)
        if not costed:
            complete &= type(layer) in negligible  # a subclass may compute more than its base
            continue
        try:
            in_shape = tuple(layer.input.shape)
            out_shape = tuple(layer.output.shape)
        except (AttributeError, ValueError):
            complete = False  # a layer of a subclassed model: shapes unknown
            continue
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            macs += num_elements(out_shape[1:]) * kh * kw
        elif isinstance(layer, keras.layers.Dense):
            macs += num_elements(out_shape[1:]) * in_shape[-1]
        else:
            in_channels = in_shape[-1] // getattr(layer, "groups", 1)
            macs += num_elements(out_shape[1:]) * num_elements(layer.kernel_size) * in_channels
        complete &= type(layer).__module__.startswith("keras.")
    return macs, complete


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
