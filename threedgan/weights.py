"""Weights files in the legacy Keras 2 HDF5 layout, the one the chapter's `model.save_weights("x.h5")` writes.

Keras 3 only writes `.weights.h5` files, whose layout Keras 2 (`tf_keras`) cannot read, while Keras 3's
`load_weights("x.h5")` still reads the legacy layout. Writing that layout ourselves gives one file that both Keras 3
and `tf_keras` load, topologically or `by_name=True`, so weights move freely between this project and Keras-2-era code.

The layout, as `tf_keras` writes it:

    /                       attrs: layer_names (every layer, in model order), backend, keras_version
    /<layer>                attrs: weight_names, e.g. [b"generator_deconv_1/kernel:0", b"generator_deconv_1/bias:0"]
    /<layer>/<weight name>  the array (the "/" in the weight name makes a nested group)
    /top_level_model_weights  weights owned by the model itself (none for functional models)

Layers without weights still get a group with an empty `weight_names`; loaders skip them.
"""

from __future__ import annotations

import os
import tempfile

import h5py
import keras
import numpy as np

from threedgan.errors import WeightsError

# HDF5 refuses object headers (where attributes live) above 64 KiB; tf_keras splits longer name lists into
# `name0`, `name1`, ... attributes at this size, and both loaders reassemble them.
_HDF5_OBJECT_HEADER_LIMIT = 64512
_TOP_LEVEL_GROUP = "top_level_model_weights"
_WEIGHTS_SUFFIXES = (".h5", ".hdf5")


def save_weights_h5(model, path):
    """Writes a model's weights as a legacy Keras 2 HDF5 weights file.

    The file loads with Keras 3 `model.load_weights(path)` (or `load_weights_h5`) and with `tf_keras`
    `model.load_weights(path)` / `model.load_weights(path, by_name=True)` into a model with the same layer names and
    weight shapes. The file is written to a temporary file beside `path` and renamed over it, so a crash never
    leaves a half-written weights file behind.

    Args:
        model: a built `keras.Model`.
        path: destination; must end in `.h5` or `.hdf5`, the suffixes Keras 3 reads as the legacy layout. The parent
            folder is created.

    Returns:
        The destination path as given.

    Raises:
        WeightsError: `path` does not end in `.h5` or `.hdf5`.
    """
    path_string = os.fspath(path)
    if not path_string.endswith(_WEIGHTS_SUFFIXES):
        raise WeightsError(
            f"weights file {path_string} must end in .h5 or .hdf5 (Keras 3 reads other suffixes as other formats)"
        )
    folder = os.path.dirname(os.path.abspath(path_string))
    os.makedirs(folder, exist_ok=True)
    # The temporary file lives in the destination folder so that os.replace is a same-filesystem, atomic rename.
    handle, temporary_path = tempfile.mkstemp(prefix=".tmp-", suffix=".h5", dir=folder)
    os.close(handle)
    try:
        with h5py.File(temporary_path, "w") as file:
            _write_weights(file, model)
        # mkstemp creates the file private (0600); weights files get the usual permissions under the user's umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary_path, 0o666 & ~umask)
        os.replace(temporary_path, path_string)
    except BaseException as error:
        if os.path.exists(temporary_path):
            os.remove(temporary_path)
        if isinstance(error, OSError) and error.filename is None:
            # h5py's errors (a full disk, say) carry no path: name the file being written.
            reason = error.strerror or " ".join(str(error).split()) or type(error).__name__
            raise OSError(error.errno, f"cannot write weights ({reason})", path_string) from error
        raise
    return path


def load_weights_h5(model, path, by_name=False):
    """Loads a legacy Keras 2 HDF5 weights file into a model, with a clear error when the file does not fit.

    Before handing the file to Keras 3's `model.load_weights`, the stored weight shapes are compared with the
    model's, so a wrong file fails with a one-line message naming the file and the first layer that differs
    instead of a Keras traceback (or, worse, a half-loaded model). Only arrays are read: nothing in the file is
    executed.

    Args:
        model: a built `keras.Model`.
        path: a `.h5`/`.hdf5` file written by `save_weights_h5`, by `tf_keras` `save_weights`, or a full-model
            Keras 2 `.h5` file (its `model_weights` group is used).
        by_name: load each layer from the group of the same name, as the chapter's `load_weights(path, True)`
            does; layers the file lacks keep their weights. `False` loads in layer order.

    Returns:
        The model, for chaining.

    Raises:
        WeightsError: the file is missing, is not an HDF5 file, is not a Keras weights file, does not end in
            `.h5`/`.hdf5`, or holds weights of another architecture (layer count, weight count or shapes differ).
    """
    path_string = os.fspath(path)
    if not os.path.exists(path_string):
        raise WeightsError(f"weights file {path_string} does not exist")
    if not os.path.isfile(path_string):
        raise WeightsError(f"weights file {path_string} is not a file")
    if not h5py.is_hdf5(path_string):
        raise WeightsError(f"weights file {path_string} is not an HDF5 file")
    if not path_string.endswith(_WEIGHTS_SUFFIXES):
        raise WeightsError(
            f"weights file {path_string} must end in .h5 or .hdf5 (Keras 3 reads other suffixes as other formats)"
        )
    try:
        with h5py.File(path_string, "r") as file:
            stored = _read_stored_shapes(file, path_string)
    except OSError as error:
        raise WeightsError(f"weights file {path_string} cannot be read: {error}") from error
    checked_layers = _check_compatible(model, stored, path_string, by_name)
    # Only after the shapes fit (so reading is bounded by the model's size): every value must be a finite real.
    try:
        with h5py.File(path_string, "r") as file:
            _check_values(file, checked_layers, path_string)
    except OSError as error:
        raise WeightsError(f"weights file {path_string} cannot be read: {error}") from error
    try:
        if by_name:
            model.load_weights(path_string, by_name=True)
        else:
            model.load_weights(path_string)
    except (ValueError, KeyError, OSError) as error:
        # The checks above should catch every mismatch; this keeps the one-line-error promise if Keras finds more.
        message = " ".join(str(error).split())
        raise WeightsError(f"weights file {path_string} does not fit model {model.name}: {message}") from error
    return model


def _write_weights(file, model):
    _write_name_list(file, "layer_names", [layer.name for layer in model.layers])
    file.attrs["backend"] = keras.backend.backend().encode("utf8")
    file.attrs["keras_version"] = str(keras.__version__).encode("utf8")
    # tf_keras writes groups sorted by name so that no group name is created after a longer name it prefixes.
    for layer in sorted(model.layers, key=lambda layer: layer.name):
        _write_weight_group(file.create_group(layer.name), _legacy_order(layer))
    # Variables the model creates itself (not its layers); Keras 3's topological loader reads them from here.
    own_variables = list(getattr(model, "_trainable_variables", [])) + list(
        getattr(model, "_non_trainable_variables", [])
    )
    _write_weight_group(file.create_group(_TOP_LEVEL_GROUP), own_variables)


def _write_weight_group(group, variables):
    names = _legacy_weight_names(variables)
    _write_name_list(group, "weight_names", names)
    for name, variable in zip(names, variables):
        value = np.asarray(keras.ops.convert_to_numpy(variable))
        if value.dtype.kind == "V" or value.dtype.name == "bfloat16":
            # h5py cannot store ml_dtypes' bfloat16; float32 holds it exactly and loaders cast on assignment.
            value = value.astype(np.float32)
        dataset = group.create_dataset(name, value.shape, dtype=value.dtype)
        dataset[()] = value


def _legacy_weight_names(variables):
    """Keras 2 names: the variable's path plus the ":0" of a TensorFlow output, unique within the layer."""
    names, seen = [], set()
    for variable in variables:
        base = getattr(variable, "path", None) or variable.name
        base = base[: -len(":0")] if base.endswith(":0") else base
        name, suffix = f"{base}:0", 1
        # TensorFlow made clashing variable names unique as `name_1`; datasets need unique names the same way.
        while name in seen:
            name = f"{base}_{suffix}:0"
            suffix += 1
        seen.add(name)
        names.append(name)
    return names


def _legacy_order(layer):
    """Keras 2 saved trainable weights before non-trainable ones, and both loaders expect that order."""
    return list(layer.trainable_weights) + list(layer.non_trainable_weights)


def _write_name_list(group, attribute, names):
    encoded = [name.encode("utf8") for name in names]
    if not encoded:
        # What tf_keras writes for a layer without weights (h5py stores the empty list as an empty float array).
        group.attrs[attribute] = encoded
        return
    chunk_count = 1
    chunks = np.array_split(np.asarray(encoded), chunk_count)
    while any(chunk.nbytes > _HDF5_OBJECT_HEADER_LIMIT for chunk in chunks):
        chunk_count += 1
        chunks = np.array_split(np.asarray(encoded), chunk_count)
    if chunk_count == 1:
        group.attrs[attribute] = encoded
    else:
        for index, chunk in enumerate(chunks):
            group.attrs[f"{attribute}{index}"] = [bytes(name) for name in chunk]


def _read_name_list(group, attribute):
    if attribute in group.attrs:
        values = [group.attrs[attribute]]
    else:
        values, index = [], 0
        while f"{attribute}{index}" in group.attrs:
            values.append(group.attrs[f"{attribute}{index}"])
            index += 1
        if not values:
            return None
    names = []
    for value in values:
        for name in np.atleast_1d(value):
            names.append(name.decode("utf8") if isinstance(name, bytes) else str(name))
    return names


def _read_stored_shapes(file, path_string):
    """Returns {layer name: [weight shapes]} for the file's layers that hold weights, in file order."""
    if _read_name_list(file, "layer_names") is None and "model_weights" in file:
        # A full-model Keras 2 `.h5` keeps its weights in this group; Keras 3 loads it the same way.
        file = file["model_weights"]
    layer_names = _read_name_list(file, "layer_names")
    if layer_names is None:
        raise WeightsError(f"weights file {path_string} is an HDF5 file but not a Keras weights file (no layer_names)")
    stored = {}
    for layer_name in layer_names:
        group = file.get(layer_name)
        if not isinstance(group, h5py.Group):
            raise WeightsError(f"weights file {path_string} lists layer {layer_name} but has no group for it")
        weight_names = _read_name_list(group, "weight_names") or []
        shapes = []
        for weight_name in weight_names:
            dataset = group.get(weight_name)
            if not isinstance(dataset, h5py.Dataset):
                raise WeightsError(f"weights file {path_string} lists weight {weight_name} but does not hold it")
            shapes.append(tuple(dataset.shape))
        if shapes:
            stored[layer_name] = shapes
    return stored


def _check_compatible(model, stored, path_string, by_name):
    expected = {}
    for layer in model.layers:
        shapes = [tuple(int(size) for size in variable.shape) for variable in _legacy_order(layer)]
        if shapes:
            expected[layer.name] = shapes
    if by_name:
        pairs = [(name, name, stored[name], shapes) for name, shapes in expected.items() if name in stored]
        if not pairs:
            raise WeightsError(
                f"weights file {path_string} has no layer named like a layer of model {model.name} "
                f"(file: {', '.join(stored) or 'none'})"
            )
    else:
        if len(stored) != len(expected):
            raise WeightsError(
                f"weights file {path_string} holds weights for {len(stored)} layers but model {model.name} has "
                f"{len(expected)} layers with weights"
            )
        pairs = [
            (model_name, file_name, stored[file_name], shapes)
            for (model_name, shapes), file_name in zip(expected.items(), stored)
        ]
    for model_name, file_name, stored_shapes, expected_shapes in pairs:
        if stored_shapes != expected_shapes:
            raise WeightsError(
                f"weights file {path_string} does not fit model {model.name}: layer {model_name} expects weight "
                f"shapes {_format_shapes(expected_shapes)} but the file's layer {file_name} holds "
                f"{_format_shapes(stored_shapes)}"
            )
    return [file_name for _, file_name, _, _ in pairs]


def _check_values(file, layer_names, path_string):
    """Refuses weights that are not finite real numbers (NaN, infinity, complex, strings), naming the dataset."""
    if _read_name_list(file, "layer_names") is None and "model_weights" in file:
        file = file["model_weights"]
    for layer_name in layer_names:
        group = file[layer_name]
        for weight_name in _read_name_list(group, "weight_names") or []:
            dataset = group[weight_name]
            kind = dataset.dtype.kind
            if kind == "c":
                raise WeightsError(f"weights file {path_string}: {layer_name}/{weight_name} holds complex values")
            if kind not in "fiub":
                raise WeightsError(f"weights file {path_string}: {layer_name}/{weight_name} holds {dataset.dtype} values, not numbers")
            if kind == "f" and not np.isfinite(dataset[()]).all():
                raise WeightsError(
                    f"weights file {path_string}: {layer_name}/{weight_name} holds NaN or infinite values; "
                    "use an earlier checkpoint's weights"
                )


def _format_shapes(shapes):
    return "[" + ", ".join("(" + ", ".join(str(size) for size in shape) + ")" for shape in shapes) + "]"
