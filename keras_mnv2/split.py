"""Memory-efficient inference (paper section 5.1): a trained model in split-expansion form.

An inverted residual F(x) = A(N(B(x))) (B the 1x1 expansion, N the per-channel BN/ReLU6/depthwise
part, A the 1x1 projection) equals sum_i A_i(N(B_i(x))) over channel groups i of the expanded
tensor, so a runtime that computes one group at a time only ever holds one expanded group.
``MobileNetV2(expansion_splits=k)`` (and ``SSDLite``) build that form directly;
``split_expansion(model, k)`` converts an already trained model into it, with its weights sliced
from the original, so a model trained normally can be exported memory-efficiently.

``split_expansion`` rewrites the model's own graph rather than calling a builder again, so it
works on any functional model made of these blocks (a classifier, SSDLite, DeepLabV3, a model
just loaded from a ``.keras`` file), and it emits each split block with the builders' own
``keras_mnv2.blocks.split_branch``, so the result has the same layers, names and graph as a
model built with ``expansion_splits=k``: when the source carries a builder record
(``keras_mnv2.record``), the split model's record is the same with ``expansion_splits=k``, so it
saves, reloads and gets its tf_keras twin like a model built split. Blocks whose expanded tensor
is used outside the block (the SSDLite tap ``block_13_expand_relu``) stay whole, as in the builder.

The saving needs a runtime that computes one group at a time. It shows under the memory-aware
schedule of ``keras_mnv2.profile(model, schedule="memory")`` and in the TFLite arena
(``keras_mnv2.deploy.memory.tflite_arena_bytes``) of a flatbuffer whose ops are in that order: run
``keras_mnv2.deploy.memory.reorder_ops`` on the converted model, since the converter orders parallel
branches by op name. Keras's own order runs the graph level by level, all groups side by side,
so ``profile(model)`` (schedule="keras") shows less of the saving.

Measured (``python -m benchmarks.memory_bench``): splitting Conv1 + block 0 into 3, block 1 into
6 and block 2 into 3 halves the TFLite arena of MobileNetV2 1.0/224 and SSDLite 320, float32 and
int8; uniform splits cost more speed for less memory. In int8 every partial projection is
requantized before the sum, which adds rounding (PTQ: about 1.5 times the unsplit model's output
error). For deployment ``fold_projection_bn`` folds the BN that follows a split block's sum into
the partial projections (the converter cannot; ``keras_mnv2.deploy.export`` does it in the float and
int8 modes, and ``keras_mnv2.deploy.qat.quantize`` before it quantizes, so that a QAT model is int8
throughout).
"""

import re

import numpy as np

from keras_mnv2.blocks import clone_layer, split_branch, split_sizes
from keras_mnv2.errors import InputError
from keras_mnv2.frameworks import framework_of, get_keras
from keras_mnv2.spec import splits_per_block
from keras_mnv2.record import functional, with_record
from keras_mnv2.profiler import (
    _flatten,
    _node_inputs,
    _node_layer,
    _node_outputs,
    _nodes_in_order,
)

# Layers of one inverted residual from the expansion to the projection, in graph order ("pad"
# only in stride-2 blocks). Block 0 ("expanded_conv_") has no expansion: MobileNetV2's first
# layer (Conv1, its BN and ReLU6) takes its place.
BRANCH_ROLES = ("expand", "expand_BN", "expand_relu", "pad", "depthwise", "depthwise_BN",
                "depthwise_relu", "project")
STEM = ("Conv1", "bn_Conv1", "Conv1_relu")
_EXPAND_NAME = re.compile(r"(block_\d+_)expand")
_SPLIT_NAME = re.compile(r"(.*_)project_s\d+")
_PER_CHANNEL = ("BatchNormalization", "ReLU", "ZeroPadding2D", "DepthwiseConv2D")


def split_expansion(model, splits, name=None):
    """Returns ``model`` with every inverted residual computed over ``splits`` channel groups.

    Args:
        model: a functional Keras 3 or tf_keras model containing MobileNetV2 blocks (layer names
            ``block_{i}_expand`` ... ``block_{i}_project``), e.g. from ``MobileNetV2``,
            ``SSDLite`` or ``DeepLabV3``, trained or loaded from a file.
        splits: number of channel groups k >= 1 per block (capped at each block's expanded
            width; the groups are as equal as possible), or one count per MobileNetV2 block
            (17, as ``MobileNetV2(expansion_splits=...)``; block 0 means Conv1 + block 0).
        name: name of the new model (default: the original's).

    Group i of block b has layers ``block_{b}_expand_s{i}`` (the expansion's output channels of
    the group), ``..._expand_BN_s{i}``, ``..._expand_relu_s{i}``, ``..._pad_s{i}``,
    ``..._depthwise_s{i}``, ``..._depthwise_BN_s{i}``, ``..._depthwise_relu_s{i}`` (the group's
    channels) and ``..._project_s{i}`` (the group's input rows of the projection, to all output
    channels; a projection bias would go to group 0 only), then the running sums
    ``..._project_sum_s{i}`` and the original ``..._project_BN``. Block 0, which has no
    expansion, splits with Conv1 (``Conv1_s{i}``, ``bn_Conv1_s{i}``, ``Conv1_relu_s{i}``,
    ``expanded_conv_depthwise_s{i}``, ...). The weights are sliced from the original; every
    other layer keeps its name and weights. In inference mode the outputs equal the
    original's up to float rounding. The source's builder record, if any, carries over with
    ``expansion_splits=splits``.
    """
    framework = framework_of(model)
    counts = splits_per_block(splits, argument="splits")
    keras = get_keras(framework)
    nodes = _nodes_in_order(model)
    already = [layer.name for layer in model.layers if _SPLIT_NAME.fullmatch(layer.name)]
    if already:
        raise InputError(
            f"model {model.name!r} is already split (it has layer {already[0]!r}); split the "
            "original model instead"
        )
    branches = _find_branches(model, nodes)
    if not branches:
        raise InputError(
            f"model {model.name!r} has no inverted residual with an expansion layer "
            "(block_{i}_expand ... block_{i}_project) in its top-level graph"
        )
    groups = {name: _block_count(name, counts, model.name) for name in branches}
    skip = {layer.name for branch in branches.values() for layer in branch[1:]}

    def rewrite(node, layer, new, clones):
        if layer.name in skip:
            return True
        if layer.name not in branches:
            return False
        branch = branches[layer.name]
        x = new[id(_node_inputs(node)[0])]
        if groups[layer.name] > 1:
            y = split_branch(keras, x, branch, groups[layer.name])
        else:
            y = x
            for member in branch:
                clones[member.name] = clone_layer(member)
                y = clones[member.name](y)
        project_output = _node_outputs(_nodes_of(branch[-1], nodes)[0])[0]
        new[id(project_output)] = y
        return True

    split = _replay(model, keras, nodes, rewrite, name)

    split_layers = {member.name: first for first, branch in branches.items() if groups[first] > 1
                    for member in branch}
    for layer in model.layers:
        if layer.name in split_layers:
            if layer.name in branches:
                _copy_split_weights(split, branches[layer.name], groups[layer.name])
        elif layer.get_weights():
            split.get_layer(layer.name).set_weights(layer.get_weights())
    return with_record(split, model, expansion_splits=splits)


def _replay(model, keras, nodes, rewrite, name=None):
    """A new functional model with ``model``'s graph, every layer cloned (weights unset).

    ``rewrite(node, layer, new, clones)`` sees each node first: it returns True when it has put
    the node's outputs into ``new`` (id(original tensor) -> new tensor) itself, or skips the node;
    False to have the layer cloned (``clones``: name -> clone) and called as in the original.
    SSDLite's ``anchors`` carry over.
    """
    new, clones = {}, {}
    for node in nodes:
        layer = _node_layer(node)
        outputs = _node_outputs(node)
        if type(layer).__name__ == "InputLayer":
            tensor = outputs[0]
            new[id(tensor)] = keras.Input(shape=tuple(tensor.shape[1:]),
                                          batch_size=tensor.shape[0], dtype=tensor.dtype,
                                          name=layer.name)
            continue
        if rewrite(node, layer, new, clones):
            continue
        if layer.name not in clones:
            clones[layer.name] = clone_layer(layer)
        args, kwargs = _call_arguments(node)
        result = clones[layer.name](*_replace(args, new), **_replace(kwargs, new))
        for old, tensor in zip(outputs, _flatten(result)):
            new[id(old)] = tensor
    inputs = _replace(_structure(model, "inputs"), new)
    outputs = _replace(_structure(model, "outputs"), new)
    rebuilt = functional(keras, inputs, outputs, name=name or model.name)
    if hasattr(model, "anchors"):  # SSDLite's anchor table
        rebuilt.anchors = model.anchors
    return rebuilt


def _block_count(first_layer, counts, model_name):
    """The split count of the block whose branch starts with ``first_layer``."""
    block_id = 0 if first_layer == STEM[0] else int(_EXPAND_NAME.fullmatch(first_layer)
                                                      .group(1).split("_")[1])
    if block_id >= len(counts):
        raise InputError(f"model {model_name!r} has block {block_id}, beyond the "
                         f"{len(counts)} split counts given")
    return counts[block_id]


def split_blocks(model):
    """Block prefixes of ``model`` that are in split form, with their group counts:
    {"expanded_conv_": 6, "block_1_": 6, ...}."""
    counts = {}
    for layer in model.layers:
        match = _SPLIT_NAME.fullmatch(layer.name)
        if match:
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


def _find_branches(model, nodes):
    """{expand layer name: [expand, ..., project]} for the blocks that can be split."""
    layers = {layer.name: layer for layer in model.layers}
    consumers = {}
    for node in nodes:
        for tensor in _node_inputs(node):
            consumers.setdefault(id(tensor), []).append(node)
    model_outputs = {id(t) for t in _flatten(model.outputs)}
    candidates = []
    for layer_name in layers:
        match = _EXPAND_NAME.fullmatch(layer_name)
        if match:
            candidates.append([match.group(1) + role for role in BRANCH_ROLES])
    if all(name in layers for name in STEM):
        candidates.append(list(STEM) + ["expanded_conv_" + role for role in BRANCH_ROLES[3:]])
    branches = {}
    for names in candidates:
        missing = [name for name in names if name not in layers and not name.endswith("_pad")]
        if missing:
            raise InputError(f"model {model.name!r}: the block of {names[0]!r} lacks {missing}")
        branch = [layers[name] for name in names if name in layers]
        if _is_chain(branch, nodes, consumers, model_outputs):
            branches[names[0]] = branch
    return branches


def _is_chain(branch, nodes, consumers, model_outputs):
    """True when each layer of ``branch`` runs once, on the previous one's output, no tensor
    inside the branch (before the projection) is used elsewhere (a feature tap, say), and the
    layers between the two convolutions act per channel."""
    calls = [_nodes_of(layer, nodes) for layer in branch]
    if any(len(c) != 1 for c in calls):
        return False
    for before, after in zip(calls, calls[1:]):
        outputs, inputs = _node_outputs(before[0]), _node_inputs(after[0])
        if len(outputs) != 1 or len(inputs) != 1 or outputs[0] is not inputs[0]:
            return False
        if len(consumers.get(id(outputs[0]), ())) != 1 or id(outputs[0]) in model_outputs:
            return False
    # Only per-channel layers between the expansion and the projection (plain convolutions).
    if any(type(layer).__name__ != "Conv2D" or getattr(layer, "groups", 1) != 1
           for layer in (branch[0], branch[-1])):
        return False
    return all(type(layer).__name__ in _PER_CHANNEL
               and getattr(layer, "depth_multiplier", 1) == 1 for layer in branch[1:-1])


def _nodes_of(layer, nodes):
    return [node for node in nodes if _node_layer(node) is layer]


def _copy_split_weights(split, branch, splits):
    """Slices the weights of ``branch`` (the original layers) into the groups of ``split``."""
    expand, project = branch[0], branch[-1]
    start = 0
    for i, width in enumerate(split_sizes(expand.filters, splits)):
        stop = start + width
        for layer in branch:
            weights = layer.get_weights()
            if not weights:
                continue
            target = split.get_layer(f"{layer.name}_s{i}")
            if layer is project:  # kernel [1, 1, expanded, out]: the group's rows
                sliced = [weights[0][:, :, start:stop, :]]
                sliced += [w if i == 0 else np.zeros_like(w) for w in weights[1:]]  # bias
            elif type(layer).__name__ == "DepthwiseConv2D":  # kernel [kh, kw, expanded, 1]
                sliced = [weights[0][:, :, start:stop, :]] + [w[start:stop] for w in weights[1:]]
            else:  # the expansion's kernel and bias, batch-norm vectors: last axis
                sliced = [w[..., start:stop] for w in weights]
            target.set_weights(sliced)
        start = stop


def _call_arguments(node):
    arguments = getattr(node, "arguments", None)
    if arguments is not None:  # Keras 3
        return arguments.args, arguments.kwargs
    return node.call_args, node.call_kwargs  # tf_keras


def _structure(model, which):
    """The model's inputs or outputs as built (a tensor, list or dict)."""
    for attr in (f"_{which}_struct", f"_nested_{which}"):
        value = getattr(model, attr, None)
        if value is not None:
            return value
    return getattr(model, which)


def _replace(structure, new):
    """``structure`` with every original tensor replaced by its counterpart in ``new``."""
    if isinstance(structure, dict):
        return {key: _replace(value, new) for key, value in structure.items()}
    if isinstance(structure, (list, tuple)):
        return type(structure)(_replace(value, new) for value in structure)
    return new.get(id(structure), structure)


def foldable_blocks(model):
    """The split blocks of ``model`` ({prefix: groups}, as ``split_blocks``) whose projection BN
    follows the sum of the partial projections, unfolded (see ``fold_projection_bn``)."""
    names = {layer.name: type(layer).__name__ for layer in model.layers}
    return {prefix: groups for prefix, groups in split_blocks(model).items()
            if names.get(prefix + "project_BN") == "BatchNormalization"}


def fold_projection_bn(model, name=None):
    """``model`` with the batch norm after each split block's sum folded into its projections.

    In split form a block's projection BN follows the sum of the partial projections
    (``<prefix>project_BN``), so the TFLite converter cannot fold it into a convolution as it
    does for a whole block: it stays a MUL and an ADD over the block's output (and in a
    quantization-aware model, where TFMOT folds BN only after a convolution, a float BN between
    a dequantize and a quantize). BN in inference is affine per channel, so
    BN(sum_i P_i) = sum_i (s * P_i) + (beta - s * mean) with s = gamma / sqrt(var + eps): here
    each ``<prefix>project_s<i>`` convolution gets the scaled kernel (group 0 also the bias), and
    the BN layer is gone. The outputs equal the original's in inference up to float rounding.

    This is an inference (deployment) form: the BN statistics are frozen into the kernels, and
    the model no longer has the builder's graph (``tf_keras_twin`` cannot rebuild it; take the
    twin of the split model first, then fold the twin). Works on Keras 3 and tf_keras models;
    raises ValueError when ``model`` has no split block.
    """
    framework = framework_of(model)
    keras = get_keras(framework)
    blocks = foldable_blocks(model)
    if not blocks:
        raise InputError(f"model {model.name!r} has no split-expansion block with a projection "
                         "BN to fold (none split, or folded already)")
    nodes = _nodes_in_order(model)
    layers = {layer.name: layer for layer in model.layers}
    folds = {}  # BN name -> (prefix, groups)
    for prefix, groups in blocks.items():
        bn = layers[prefix + "project_BN"]
        if len(_nodes_of(bn, nodes)) != 1:
            raise InputError(f"model {model.name!r}: {bn.name} is called more than once")
        folds[bn.name] = (prefix, groups)
    projections = {f"{prefix}project_s{i}": prefix for prefix, groups in blocks.items()
                   for i in range(groups)}

    def rewrite(node, layer, new, clones):
        if layer.name in folds:  # the sum goes straight on
            new[id(_node_outputs(node)[0])] = new[id(_node_inputs(node)[0])]
            return True
        if layer.name in projections and layer.name not in clones:
            clones[layer.name] = clone_layer(layer, use_bias=True)
        return False

    folded = _replay(model, keras, nodes, rewrite, name)

    scales = {}
    for bn_name, (prefix, _) in folds.items():
        bn = layers[bn_name]
        config = bn.get_config()
        weights = dict(zip([w.name.split("/")[-1].split(":")[0] for w in bn.weights],
                           bn.get_weights()))
        variance = weights["moving_variance"]
        scale = weights.get("gamma", np.ones_like(variance)) / np.sqrt(variance
                                                                        + config["epsilon"])
        shift = weights.get("beta", np.zeros_like(variance)) - scale * weights["moving_mean"]
        scales[prefix] = (scale, shift)
    for layer in model.layers:
        if layer.name in folds or not layer.get_weights():
            continue
        target = folded.get_layer(layer.name)
        if layer.name in projections:
            scale, shift = scales[projections[layer.name]]
            kernel, *bias = layer.get_weights()
            first = layer.name.endswith("_s0")
            bias = bias[0] * scale if bias else np.zeros_like(shift)
            target.set_weights([kernel * scale, bias + (shift if first else 0.0)])
        else:
            target.set_weights(layer.get_weights())
    return folded
