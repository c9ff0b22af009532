"""Parameters, multiply-adds and peak activation memory of a functional model.

MAdds are counted as the paper and the TF-slim table count them: one per multiply-accumulate of
the convolutions and dense layers; batch norm (folded at inference), activations, additions,
padding and pooling count zero.

Peak activation memory assumes a simple sequential schedule: layers run one at a time in
topological order, a tensor lives from the layer that makes it to its last consumer (model outputs
to the end), and the footprint of a step is the sum of the live tensors while the layer runs (its
inputs, its outputs and everything kept for later). The peak is the largest footprint over the
steps, for batch 1.
"""

import dataclasses
import math

_CONV_TYPES = ("Conv2D", "Conv1D", "Conv3D")


@dataclasses.dataclass(frozen=True)
class LayerProfile:
    name: str
    type: str
    output_shape: tuple
    params: int
    madds: int
    live_bytes: int  # footprint of the step that runs this layer


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    params: int
    trainable_params: int
    madds: int
    peak_activation_bytes: int
    peak_layer: str
    layers: tuple

    def block_peaks(self):
        """Peak footprint per block: layers grouped by name prefix (``block_3``, ``Conv1``...)."""
        peaks = {}
        for row in self.layers:
            key = _block_key(row.name)
            peaks[key] = max(peaks.get(key, 0), row.live_bytes)
        return peaks

    def table(self, max_rows=None):
        """The per-layer table as text (all rows, or the first ``max_rows``)."""
        header = f"{'layer':<32} {'type':<24} {'output shape':<22} {'params':>10} " \
                 f"{'MAdds':>14} {'live KiB':>10}"
        lines = [f"Profile of {self.name}", header, "-" * len(header)]
        rows = self.layers if max_rows is None else self.layers[:max_rows]
        for row in rows:
            shape = "x".join("?" if d is None else str(d) for d in row.output_shape)
            lines.append(
                f"{row.name:<32.32} {row.type:<24.24} {shape:<22.22} {row.params:>10,} "
                f"{row.madds:>14,} {row.live_bytes / 1024:>10.1f}"
            )
        if max_rows is not None and len(self.layers) > max_rows:
            lines.append(f"... {len(self.layers) - max_rows} more layers")
        lines.append("-" * len(header))
        lines.append(
            f"total: {self.params:,} parameters ({self.trainable_params:,} trainable), "
            f"{self.madds / 1e6:,.1f}M MAdds, peak activation memory "
            f"{self.peak_activation_bytes / 2**20:.2f} MiB (at {self.peak_layer}, batch 1)"
        )
        return "\n".join(lines)

    def __str__(self):
        return self.table()


def profile(model, bytes_per_element=None):
    """Profiles a functional Keras 3 or tf_keras ``model`` with static input sizes.

    ``bytes_per_element`` defaults to the size of each tensor's dtype (4 for float32); pass 1 to
    estimate an int8 model. Returns a ``Profile``; ``print(profile(model))`` shows the table.
    """
    nodes = _nodes_in_order(model)
    producers, consumers = {}, {}
    for step, node in enumerate(nodes):
        for tensor in _node_inputs(node):
            consumers[id(tensor)] = step
        for tensor in _node_outputs(node):
            producers[id(tensor)] = step
    keep = {id(t) for t in _flatten(model.outputs)}

    rows, live, sizes = [], {}, {}
    peak, peak_layer = 0, ""
    for step, node in enumerate(nodes):
        layer = _node_layer(node)
        inputs, outputs = _node_inputs(node), _node_outputs(node)
        for tensor in outputs:
            sizes[id(tensor)] = _tensor_bytes(tensor, bytes_per_element, model.name)
            live[id(tensor)] = sizes[id(tensor)]
        for tensor in inputs:  # tensors fed from outside the graph
            if id(tensor) not in live and id(tensor) not in producers:
                live[id(tensor)] = _tensor_bytes(tensor, bytes_per_element, model.name)
        footprint = sum(live.values())
        if footprint > peak:
            peak, peak_layer = footprint, layer.name
        if type(layer).__name__ != "InputLayer":
            rows.append(
                LayerProfile(
                    name=layer.name,
                    type=type(layer).__name__,
                    output_shape=tuple(outputs[0].shape[1:]) if outputs else (),
                    params=_count(layer.weights) if _first_call(layer, node) else 0,
                    madds=_layer_madds(layer, inputs, outputs),
                    live_bytes=footprint,
                )
            )
        for tensor in inputs:
            if consumers.get(id(tensor)) == step and id(tensor) not in keep:
                live.pop(id(tensor), None)

    return Profile(
        name=model.name,
        params=_count(model.weights),
        trainable_params=_count(model.trainable_weights),
        madds=sum(r.madds for r in rows),
        peak_activation_bytes=peak,
        peak_layer=peak_layer,
        layers=tuple(rows),
    )


def count_madds(model):
    """Total MAdds of ``model`` (see ``profile``)."""
    return profile(model).madds


def _layer_madds(layer, inputs, outputs):
    kind = type(layer).__name__
    if not inputs or not outputs:
        return 0
    in_shape, out_shape = inputs[0].shape, outputs[0].shape
    if kind == "Dense":
        return _prod(in_shape[1:]) * layer.units
    if kind == "DepthwiseConv2D":
        return _prod(out_shape[1:]) * _prod(layer.kernel_size)
    if kind == "SeparableConv2D":
        depthwise = _prod(out_shape[1:-1]) * in_shape[-1] * layer.depth_multiplier
        return depthwise * _prod(layer.kernel_size) + depthwise * out_shape[-1]
    if kind in _CONV_TYPES:
        groups = getattr(layer, "groups", 1) or 1
        return _prod(out_shape[1:]) * _prod(layer.kernel_size) * in_shape[-1] // groups
    if kind == "Conv2DTranspose":
        return _prod(in_shape[1:]) * _prod(layer.kernel_size) * out_shape[-1]
    if hasattr(layer, "layers") and hasattr(layer, "outputs"):  # a nested functional model
        return profile(layer).madds
    return 0


def _tensor_bytes(tensor, bytes_per_element, model_name):
    shape = tuple(tensor.shape[1:])
    if any(d is None for d in shape):
        raise ValueError(
            f"profile needs static input sizes; {model_name!r} has a tensor of shape "
            f"{tuple(tensor.shape)} (build the model with a fixed input_shape)"
        )
    if bytes_per_element is None:
        import numpy as np

        dtype = getattr(tensor.dtype, "name", tensor.dtype)
        bytes_per_element = np.dtype(str(dtype)).itemsize
    return _prod(shape) * bytes_per_element


def _nodes_in_order(model):
    if not hasattr(model, "_nodes_by_depth"):
        raise TypeError(
            f"profile needs a functional model; {model.name!r} is {type(model).__name__}"
        )
    nodes = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        nodes.extend(model._nodes_by_depth[depth])
    return nodes


def _node_layer(node):
    return getattr(node, "operation", None) or node.layer


def _node_inputs(node):
    return list(_flatten(node.input_tensors))


def _node_outputs(node):
    outputs = getattr(node, "output_tensors", None)
    if outputs is None:
        outputs = node.outputs
    return list(_flatten(outputs))


def _first_call(layer, node):
    inbound = getattr(layer, "_inbound_nodes", None) or [node]
    return inbound[0] is node


def _flatten(structure):
    if isinstance(structure, dict):
        for value in structure.values():
            yield from _flatten(value)
    elif isinstance(structure, (list, tuple)):
        for value in structure:
            yield from _flatten(value)
    elif structure is not None:
        yield structure


def _count(weights):
    return int(sum(_prod(w.shape) for w in weights))


def _prod(values):
    return int(math.prod(int(v) for v in values))


def _block_key(name):
    parts = name.split("_")
    if parts[0] == "block" and len(parts) > 1:
        return "_".join(parts[:2])
    if name.startswith("expanded_conv"):
        return "expanded_conv"
    return name
