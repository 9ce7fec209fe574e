"""Remove the layers that are the identity at inference (random augmentation, also inside nested
``Sequential`` blocks; Dropout variants, GaussianNoise/GaussianDropout/AlphaDropout,
ActivityRegularization, ...) before anything is converted. Each candidate is first checked to
return its input unchanged with ``training=False`` (RandomCrop, say, is not always a no-op).
In-graph preprocessing (``Rescaling``, ``Normalization``) stays in the model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

# Layers that only act in training. Candidates are removed only after a probe shows that they
# return their input unchanged with training=False (RandomCrop, say, does not at every size).
_REGULARISERS = frozenset({
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity"})


_AUGMENTERS = frozenset({"AugMix", "CutMix", "MixUp", "RandAugment", "Solarization", "Pipeline"})


def _is_candidate(layer: Any) -> bool:
    cls = type(layer).__name__
    return cls in _REGULARISERS or cls in _AUGMENTERS or cls.startswith("Random")


def _is_identity(layer: Any, shape: tuple[Any, ...] | None) -> bool:
    """A candidate layer that returns a probe unchanged with training=False."""
    if not _is_candidate(layer):
        return False
    if shape is None or len(shape) < 2:
        return type(layer).__name__ in _REGULARISERS
    dims = [2] + [int(d) if d is not None else 32 for d in shape[1:]]
    probe = np.random.default_rng(0).uniform(0.0, 255.0, dims).astype(np.float32)
    try:
        out = np.asarray(layer(probe, training=False))
    except Exception:  # noqa: BLE001 - a layer that cannot take the probe: keep it unless classic
        return type(layer).__name__ in _REGULARISERS
    return out.shape == probe.shape and bool(np.array_equal(out, probe))


def _describe_removed(prefix: str, layer: Any, inner: list[str] | None = None) -> str:
    cls = type(layer).__name__
    if inner is not None:
        kinds = [s[s.rfind("(") + 1:-1] for s in inner]
        return f"{prefix}{layer.name} ({cls} of {', '.join(kinds)})"
    return f"{prefix}{layer.name} ({cls})"


def clean_keras3(model: Any, keras: Any, shape: tuple[Any, ...] | None = None,
                  prefix: str = "") -> tuple[Any, list[str]]:
    """``(cleaned, removed)``: a Functional/Sequential copy sharing the original layers (and so
    their weights) with the identity-at-inference layers left out, recursively. ``cleaned`` is
    the string "identity" when nothing is left of a nested Sequential, None for a model that is
    neither Functional nor Sequential (subclassed)."""
    from keras.src.models.functional import Functional

    removed: list[str] = []
    if isinstance(model, keras.Sequential):
        if shape is None and model.inputs:
            shape = tuple(model.inputs[0].shape)
        kept = []
        for layer in model.layers:
            sub = _clean_nested(layer, keras, shape, prefix, removed)
            if sub == "identity" or (sub is None and _is_identity(layer, shape)):
                if sub is None:
                    removed.append(_describe_removed(prefix, layer))
                continue
            layer = sub if sub is not None else layer
            kept.append(layer)
            shape = _next_shape(layer, shape)
        if not kept:
            return "identity", removed
        if not removed:
            return model, removed
        head = []
        if prefix == "" and model.inputs:
            inp = model.inputs[0]
            head = [keras.Input(batch_shape=tuple(inp.shape), dtype=inp.dtype)]
        return keras.Sequential(head + kept, name=model.name), removed
    if not isinstance(model, Functional):
        return None, removed
    if not any(_is_candidate(layer) or isinstance(layer, keras.Model)
               for layer in all_layers(model)):
        return model, removed  # nothing to remove: no need to re-trace the graph

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        x = args[0] if args else None
        xshape = tuple(x.shape) if hasattr(x, "shape") else None
        sub = _clean_nested(layer, keras, xshape, prefix, removed)
        if sub == "identity":
            return x
        if sub is not None:
            return sub(*args, **kwargs)
        if xshape is not None and len(args) == 1 and _is_identity(layer, xshape):
            removed.append(_describe_removed(prefix, layer))
            return x
        return layer(*args, **kwargs)

    cleaned = keras.models.clone_model(model, clone_function=lambda layer: layer,
                                       call_function=call)
    return (cleaned if removed else model), removed


def _clean_nested(layer: Any, keras: Any, shape: tuple[Any, ...] | None, prefix: str,
                  removed: list[str]) -> Any:
    """For a nested model: its cleaned copy, "identity" (recorded as one entry) or None."""
    if not isinstance(layer, keras.Model):
        return None
    sub, inner = clean_keras3(layer, keras, shape, f"{prefix}{layer.name}/")
    if sub == "identity":
        removed.append(_describe_removed(prefix, layer, inner))
        return "identity"
    removed.extend(inner)
    return sub if sub is not None and sub is not layer else None


def _next_shape(layer: Any, shape: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    if shape is None:
        return None
    try:
        return tuple(layer.compute_output_shape(shape))
    except Exception:  # noqa: BLE001 - only used to size probes of later layers
        return None


def clean_tf_keras(model: Any, tfk: Any, prefix: str = "") -> tuple[Any, list[str]]:
    """The tf_keras counterpart: ``clone_model`` reusing the layers, with each identity layer
    swapped for a weightless linear Activation of the same name (no op in the traced graph)."""
    removed: list[str] = []
    if not isinstance(model, (tfk.Sequential, tfk.Model)) or not getattr(
            model, "_is_graph_network", False):
        return None, removed

    def shape_of(layer: Any) -> tuple[Any, ...] | None:
        try:
            shape = layer.input_shape
        except Exception:  # noqa: BLE001 - shared layers have no single input shape
            return None
        return tuple(shape) if isinstance(shape, tuple) else None

    def replace(layer: Any) -> Any:
        if isinstance(layer, tfk.Model) and getattr(layer, "_is_graph_network", False):
            sub, inner = clean_tf_keras(layer, tfk, f"{prefix}{layer.name}/")
            kept = [x for x in layer.layers if type(x).__name__ != "InputLayer"]
            if sub is not None and len(inner) == len(kept):  # report the block as one entry
                removed.append(_describe_removed(prefix, layer, inner))
            else:
                removed.extend(inner)
            # The cloned block, not an Activation in its place: the outer config calls it by
            # node index (its own input is node 0), which a fresh layer cannot match.
            return sub if sub is not None else layer
        if _is_identity(layer, shape_of(layer)):
            removed.append(_describe_removed(prefix, layer))
            return tfk.layers.Activation("linear", name=layer.name)
        return layer

    cleaned = tfk.models.clone_model(model, clone_function=replace)
    if not removed:
        return model, removed
    return cleaned, removed


def all_layers(model: Any) -> Iterator[Any]:
    for layer in getattr(model, "layers", []) or []:
        yield layer
        if hasattr(layer, "layers"):
            yield from all_layers(layer)


