"""Parameters, multiply-adds and peak activation memory of a functional model.

MAdds are counted as the paper and the TF-slim table count them: one per multiply-accumulate of
the convolutions and dense layers; batch norm (folded at inference), activations, additions,
padding and pooling count zero.

Peak activation memory assumes a simple sequential schedule: layers run one at a time in
topological order, a tensor lives from the layer that makes it to its last consumer (model outputs
to the end), and the footprint of a step is the sum of the live tensors while the layer runs (its
inputs, its outputs and everything kept for later). The peak is the largest footprint over the
steps, for batch 1.

Two orders are offered. ``schedule="keras"`` (the default) is the order Keras itself runs a
functional graph: deepest nodes first, parallel branches level by level. ``schedule="memory"`` is
a memory-aware topological order (``memory_aware_order``: layers that free memory first, then
depth first). On a chain both orders agree. They differ where branches run in parallel: for a
split-expansion block (paper section 5.1, ``keras_mnv2.split``) Keras's order computes every
expanded group before any projection, while the memory-aware order completes one group (expand,
depthwise, project, running sum) before the next; ``keras_mnv2.deploy.memory.reorder_ops`` puts a TFLite
model's ops in the same order.
"""

import dataclasses
import math
import re

from keras_mnv2.errors import InputError

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
    schedule: str = "keras"

    def block_peaks(self):
        """Peak footprint per block: layers grouped by name prefix (``block_3``, ``Conv1``...;
        the groups ``Conv1_s0``, ``Conv1_s1``... of a split layer count as ``Conv1``)."""
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
            f"{self.peak_activation_bytes / 2**20:.2f} MiB (at {self.peak_layer}, batch 1, "
            f"{self.schedule} schedule)"
        )
        return "\n".join(lines)

    def __str__(self):
        return self.table()


SCHEDULES = ("keras", "memory")


def profile(model, bytes_per_element=None, schedule="keras"):
    """Profiles a functional Keras 3 or tf_keras ``model`` with static input sizes.

    ``bytes_per_element`` defaults to the size of each tensor's dtype (4 for float32); pass 1 to
    estimate an int8 model. ``schedule`` is the layer order of the peak-memory count: "keras"
    (Keras's own) or "memory" (memory-aware; see the module docstring). Returns a ``Profile``
    whose rows follow that order; ``print(profile(model))`` shows the table.
    """
    if schedule not in SCHEDULES:
        raise InputError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    nodes = _nodes_in_order(model)
    if schedule == "memory":
        nodes = _memory_order(nodes, model, bytes_per_element)
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
                    # keras.ops calls in a functional graph are operations with no weights
                    params=_count(getattr(layer, "weights", ())) if _first_call(layer, node)
                    else 0,
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
        schedule=schedule,
    )


def _memory_order(nodes, model, bytes_per_element):
    """``nodes`` (in Keras's order) rearranged by ``memory_aware_order``."""
    sizes = {}
    for node in nodes:
        for tensor in _node_inputs(node) + _node_outputs(node):
            sizes[id(tensor)] = _tensor_bytes(tensor, bytes_per_element, model.name)
    order = memory_aware_order(
        [[id(t) for t in _node_inputs(node)] for node in nodes],
        [[id(t) for t in _node_outputs(node)] for node in nodes],
        sizes,
        keep={id(t) for t in _flatten(model.outputs)},
    )
    return [nodes[index] for index in order]


def memory_aware_order(op_inputs, op_outputs, sizes, keep=()):
    """A memory-aware topological order of a graph of ops (greedy list scheduling).

    ``op_inputs[i]`` and ``op_outputs[i]`` list the tensor keys of op ``i``, the ops being given
    in some topological order; ``sizes`` maps tensor keys to bytes (missing keys count 0);
    tensors in ``keep`` are never freed. A tensor is freed after its last consumer. Of the ops
    whose inputs are ready, the next one is, in this order of preference: one that does not
    grow the live memory (its outputs are no larger than the inputs it frees), then the one that
    continues the most recent work (depth first: the latest-made input), then the earliest in
    the given order. Depth first is what runs a split-expansion block one group at a time.
    Returns the op indices in the new order.
    """
    producer = {}
    for index, outputs in enumerate(op_outputs):
        for key in outputs:
            producer[key] = index
    waiting, users = [], {}
    for index, inputs in enumerate(op_inputs):
        waiting.append({producer[key] for key in inputs if key in producer})
        for key in set(inputs):
            users[key] = users.get(key, 0) + 1
    children = [[] for _ in op_inputs]
    for index, parents in enumerate(waiting):
        for parent in parents:
            children[parent].append(index)
    made_at = {}  # tensor key -> step that made it
    ready = {index for index, parents in enumerate(waiting) if not parents}
    order = []

    def preference(index):
        inputs = set(op_inputs[index])
        freed = sum(sizes.get(key, 0) for key in inputs if users[key] == 1 and key not in keep)
        grows = sum(sizes.get(key, 0) for key in op_outputs[index]) > freed
        recency = max((made_at.get(key, -1) for key in inputs), default=-1)
        return grows, -recency, index

    while ready:
        chosen = min(ready, key=preference)
        ready.discard(chosen)
        for key in set(op_inputs[chosen]):
            users[key] -= 1
        for key in op_outputs[chosen]:
            made_at[key] = len(order)
        order.append(chosen)
        for child in children[chosen]:
            waiting[child].discard(chosen)
            if not waiting[child]:
                ready.add(child)
    if len(order) != len(op_inputs):
        raise ValueError("the ops do not form an acyclic graph")
    return order


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
        raise InputError(
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
    return re.sub(r"_s\d+$", "", name)  # a group of a split layer (keras_mnv2.split)
