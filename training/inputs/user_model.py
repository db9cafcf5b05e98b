"""A user's own model for --model: a function in a file or a module (`PATH.py:FUNCTION`,
`package.module:FUNCTION`) called as FUNCTION(input_shape, num_classes), or a saved `MODEL.keras`
to train on from its weights; and --custom-objects, the code that defines a saved model's custom
layers.

`check_spec` finds, before TensorFlow, what can be found without running the user's code: the
file or module, the function's name in its source. Importing that code may import TensorFlow, so
the rest (the function raises, returns no model, the model does not fit the data) is found when
the model is built, under the strategy's scope. Every refusal is a one-line ModelError (exit 2);
`check_model_file` tells, without TensorFlow, whether a file is a saved Keras model. Both are
re-exported by training.inputs.models, the registry that dispatches here.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from common.errors import UserError

if TYPE_CHECKING:
    import keras

SAVED_SUFFIX = ".keras"
FORMS = "PATH.py:FUNCTION, package.module:FUNCTION or a saved MODEL.keras"
# Keras' message for a class it cannot find, buried in a much longer TypeError
_MISSING_CLASS = re.compile(r"Could not locate (class|function) '([^']+)'")


class ModelError(UserError):
    """An unknown model name, or a model that cannot take this data (a user error: exit 2)."""


def check_model_file(path: str, label: str | None = None) -> None:
    """A .keras file as `model.save()` writes it: a zip archive whose config.json describes a model.
    Anything else is bad input (ModelError), found before TensorFlow starts. `label` begins the
    message (default `evaluate PATH`)."""
    label = label or f"evaluate {path}"
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{label}: {'is a folder' if p.is_dir() else 'no such file'}")
    not_a_model = f"{label}: not a Keras model (a .keras file that model.save() or --save-model wrote)"
    try:
        with zipfile.ZipFile(p) as archive:
            config = json.loads(archive.read("config.json"))
    except PermissionError:
        raise ModelError(f"{label}: permission denied") from None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        raise ModelError(not_a_model) from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise ModelError(not_a_model)


@dataclass(frozen=True)
class FunctionSpec:
    """`SOURCE:FUNCTION`, SOURCE a Python file or an importable module."""

    source: str
    function: str

    @property
    def is_file(self) -> bool:
        return _is_file_name(self.source)


def _is_file_name(source: str) -> bool:
    return source.endswith(".py") or "/" in source or "\\" in source


def is_saved_model(text: str) -> bool:
    return text.endswith(SAVED_SUFFIX)


def parse_function_spec(text: str) -> FunctionSpec | None:
    """`SOURCE:FUNCTION` split at its last colon, or None for a text without one."""
    if ":" not in text:
        return None
    source, function = text.rsplit(":", 1)
    return FunctionSpec(source, function)


# -- before TensorFlow ---------------------------------------------------------------------------


def check_spec(text: str) -> None:
    """A user's --model, as far as it can be checked without importing it (ModelError otherwise)."""
    label = f"--model {text}"
    if is_saved_model(text):
        check_model_file(text, label)
        return
    spec = parse_function_spec(text)
    if spec is None:
        if text.endswith(".py"):
            raise ModelError(f"{label}: name the function that builds the model: --model {text}:FUNCTION")
        raise ModelError(f"{label}: not a built-in model, nor {FORMS}")
    if not spec.function.isidentifier():
        raise ModelError(f"{label}: {spec.function!r} is not a function name ({FORMS})")
    source_file = _source_file(spec.source, label)
    if source_file is not None:
        _check_defines(source_file, spec.function, label)


def check_custom_objects(text: str, flag: str) -> None:
    """Each comma-separated file or module of --custom-objects exists (ModelError otherwise)."""
    for source in _sources(text):
        _source_file(source, f"{flag} {source}")


def _sources(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _source_file(source: str, label: str) -> Path | None:
    """The file a source names (None for a module that is not a .py file); ModelError if none."""
    if _is_file_name(source):
        path = Path(source)
        if path.is_dir():
            raise ModelError(f"{label}: {source} is a folder, not a Python file")
        if not path.is_file():
            raise ModelError(f"{label}: no such file {source}")
        return path
    if not all(part.isidentifier() for part in source.split(".")):
        raise ModelError(f"{label}: {source!r} is neither a .py file nor a module name")
    origin = _find_module(source)
    if origin is None:
        raise ModelError(f"{label}: no module named {source} (is its folder on PYTHONPATH?)")
    return Path(origin) if origin.endswith(".py") and Path(origin).is_file() else None


def _find_module(dotted: str) -> str | None:
    """Where a module's code is, found without running any of it (not even its packages'
    __init__.py, which may import TensorFlow): its file, "" for a namespace package, or None."""
    if dotted in sys.modules:
        return getattr(sys.modules[dotted], "__file__", None) or ""
    search: list[str] | None = None
    found = None
    for part in dotted.split("."):
        found = importlib.machinery.PathFinder.find_spec(part, search)
        if found is None:
            return None
        search = list(found.submodule_search_locations or [])
    assert found is not None
    return found.origin or ""


def _check_defines(path: Path, function: str, label: str) -> None:
    """The file parses and binds `function` at top level, where its source can tell."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as exc:
        raise ModelError(f"{label}: {path} line {exc.lineno}: {exc.msg}") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{label}: cannot read {path}: {exc}") from None
    names, undecidable = _top_level_names(tree.body)
    if function in names or undecidable:
        return
    defs = (ast.FunctionDef, ast.AsyncFunctionDef)
    defined = sorted(n.name for n in tree.body if isinstance(n, defs) and not n.name.startswith("_"))
    has = f"it defines {', '.join(defined)}" if defined else "it defines no functions"
    raise ModelError(f"{label}: {path} has no function {function} ({has})")


def _top_level_names(body: list[ast.stmt]) -> tuple[set[str], bool]:
    """The names a module's statements bind, and whether others may be bound in ways the source
    does not show (`from x import *`, `globals()`, a module `__getattr__`)."""
    names: set[str] = set()
    undecidable = False
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                undecidable |= alias.name == "*"
                names.add(alias.asname or alias.name.split(".")[0])
        else:
            for child in ast.walk(node):
                if isinstance(child, ast.Name):
                    names.add(child.id)  # over-counts reads too: a false refusal is worse
                    undecidable |= child.id == "globals"
                elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    names.add(child.name)
    return names, undecidable or "__getattr__" in names


def model_digest(text: str) -> str | None:
    """What a checkpoint of a user's model is tied to (sha256), None for a built-in model: the
    source file of a function (a changed model must not resume from an old checkpoint), or the
    architecture of a saved model (config.json: its weights are the checkpoint's business)."""
    try:
        if is_saved_model(text):
            with zipfile.ZipFile(text) as archive:
                return hashlib.sha256(archive.read("config.json")).hexdigest()
        spec = parse_function_spec(text)
        if spec is None:
            return None
        path = _source_file(spec.source, text)
        return hashlib.sha256(path.read_bytes()).hexdigest() if path is not None else None
    except (OSError, KeyError, zipfile.BadZipFile, ModelError):
        return None  # check_spec has refused it already, or will


# -- under the strategy's scope -----------------------------------------------------------------


def import_source(source: str, label: str) -> ModuleType:
    """Run a user's file or module (its errors are a ModelError in one line)."""
    try:
        if not _is_file_name(source):
            return importlib.import_module(source)
        path = Path(source).resolve()
        name = re.sub(r"\W", "_", path.stem)
        loaded = sys.modules.get(name)
        if loaded is not None and getattr(loaded, "__file__", None) == str(path):
            return loaded
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ModelError(f"{label}: cannot import {source}")
        module = importlib.util.module_from_spec(module_spec)
        # as `python FILE` does: the file's own folder first, so that it imports its neighbours
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{label}: importing {source} failed: {_one_line(exc)}") from None


def import_custom_objects(text: str | None) -> None:
    """Import --custom-objects, so that their @keras.saving.register_keras_serializable classes
    are known to Keras before a saved model that uses them is loaded."""
    for source in _sources(text or ""):
        import_source(source, f"--custom-objects {source}")


def build_from_function(text: str, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """FUNCTION(input_shape, num_classes) of `SOURCE:FUNCTION`, checked against the data."""
    import keras

    label = f"--model {text}"
    spec = parse_function_spec(text)
    if spec is None:
        raise ModelError(f"{label}: not {FORMS}")
    module = import_source(spec.source, label)
    factory = getattr(module, spec.function, None)
    if factory is None:
        raise ModelError(f"{label}: {spec.source} has no function {spec.function}")
    if not callable(factory):
        raise ModelError(f"{label}: {spec.function} is a {type(factory).__name__}, not a function")
    call = f"{spec.function}(input_shape={tuple(input_shape)}, num_classes={num_classes})"
    try:
        model = factory(tuple(input_shape), num_classes)
    except Exception as exc:
        raise ModelError(f"{label}: {call} raised {_one_line(exc)}") from None
    if not isinstance(model, keras.Model):
        raise ModelError(f"{label}: {call} returned a {type(model).__name__}, not a keras.Model")
    check_fits_data(model, input_shape, num_classes, label, exact_classes=True)
    return model


def load_saved(path: str, label: str) -> keras.Model:
    """A saved .keras model without its optimizer; a class Keras cannot find is named in the line."""
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # what Keras raises for a damaged file varies: all are the file's fault
        missing = _MISSING_CLASS.search(str(exc))
        if missing is None:
            raise ModelError(f"{label}: cannot load the Keras model: {_one_line(exc)[:300]}") from None
        kind, name = missing.groups()
        module = _saved_module(path, name)
        hint = f" (saved from module {module})" if module and module != "__main__" else ""
        raise ModelError(
            f"{label}: the model uses the custom {kind} {name}{hint}, which is not defined here: "
            "name the file or module that defines it (decorated with "
            "@keras.saving.register_keras_serializable) with --custom-objects PATH.py or MODULE"
        ) from None


def _saved_module(path: str, class_name: str) -> str | None:
    """The module a saved model's config records for a class (a hint for the user), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    stack: list[Any] = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("class_name") == class_name and isinstance(item.get("module"), str):
                return str(item["module"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def check_fits_data(
    model: keras.Model, input_shape: tuple[int, ...], num_classes: int, label: str, exact_classes: bool
) -> None:
    """One input of the data's shape, one output of num_classes units (with `exact_classes`; else
    at least: data may lack a saved model's last classes). A model not yet built is built by
    calling it on one batch of zeros."""
    import numpy as np

    shape = tuple(input_shape)
    if len(getattr(model, "inputs", None) or []) > 1 or len(getattr(model, "outputs", None) or []) > 1:
        raise ModelError(f"{label}: a model with several inputs or outputs is not a classifier")
    try:
        expected = tuple(model.input_shape[1:])
    except (AttributeError, ValueError, TypeError):
        expected = None  # a subclassed model not yet called: it takes what it is given
    if expected is not None and (
        len(expected) != len(shape) or any(d not in (None, g) for d, g in zip(expected, shape, strict=True))
    ):
        raise ModelError(
            f"{label}: the model takes inputs of shape {expected}, but the data has examples of shape {shape}"
        )
    try:
        output = tuple(model.output_shape) if model.built and expected is not None else None
    except (AttributeError, ValueError, TypeError):
        output = None
    if output is None:
        try:
            output = tuple(model(np.zeros((1, *shape), "float32")).shape)
        except Exception as exc:
            raise ModelError(
                f"{label}: calling the model on a batch of shape {(1, *shape)} failed: {_one_line(exc)}"
            ) from None
    if len(output) != 2:
        raise ModelError(
            f"{label}: the model's output has shape {output[1:]} per example: a classifier's is "
            f"({num_classes},), one unit per class"
        )
    units = output[-1]
    if units != num_classes and (exact_classes or units is None or units < num_classes):
        raise ModelError(
            f"{label}: the model's output has {units} units, but the data has {num_classes} classes"
        )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
