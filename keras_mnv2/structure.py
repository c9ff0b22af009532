"""Which keras_mnv2 layer each convolution of a ``.tflite`` graph is, read from the graph alone.

A MobileNetV2-family file is recognized by what its ops do, whatever its tensors are called:
from the input, a 3x3 stride-2 convolution on 3 channels (``Conv1``), a depthwise + 1x1 pair
(block 0), then 16 inverted residuals (1x1 expansion, 3x3 depthwise, 1x1 projection; a
residual ``ADD`` exactly where a block keeps its size and width, paper Table 2); then the head:
average pooling and a 1x1 convolution or fully connected layer after ``Conv_1`` (classifier),
four extra layers and a depthwise + 1x1 box and class predictor pair on each of six feature maps
(SSDLite, paper section 6.2), or image pooling, 1x1 / atrous branches, their concatenation, a
projection and the logits (Mobile DeepLabv3, section 6.3). ``layer_names(graph)`` returns
``{op index: layer name}`` in keras_mnv2's names; ``official.read_tflite_weights`` then checks
the tensor names against it where they are official or keras_mnv2's own.
"""

from keras_mnv2.errors import InputError

CONVOLUTIONS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
# Ops between a convolution and the tensor the next layer reads: unfused activations and batch
# norm (MUL / ADD by a constant), the end of a dilated convolution, (de)quantization.
_AFTER = ("RELU", "RELU6", "RELU_N1_TO_1", "QUANTIZE", "DEQUANTIZE", "BATCH_TO_SPACE_ND", "MUL",
          "ADD")
# Ops between a tensor and the convolution reading it: explicit padding, the start of a
# dilated convolution, (de)quantization.
_BEFORE = ("PAD", "PADV2", "SPACE_TO_BATCH_ND", "QUANTIZE", "DEQUANTIZE")
_POOLS = ("MEAN", "AVERAGE_POOL_2D")
# Ops between the pooling and the classifier or the image-pooling convolution.
_RESHAPES = ("RESHAPE", "SQUEEZE", "QUANTIZE", "DEQUANTIZE")
BLOCKS = 16


class NotMobileNetV2(InputError):
    """The graph is not a MobileNetV2-family model; the message says where the walk stopped."""


class _Walk:
    def __init__(self, graph):
        self.graph = graph
        self.names = {}

    # -- the graph around a tensor

    def users(self, tensor):
        return self.graph.consumers.get(tensor, [])

    def constant_input(self, op, tensor):
        others = [i for i in op["inputs"] if i >= 0 and i != tensor]
        return len(others) == 1 and self.graph.is_constant(others[0])

    def after(self, tensor):
        """The tensor the next layer reads, past unfused activations, batch norm and the end of
        a dilated convolution (one consumer at a time)."""
        while True:
            users = self.users(tensor)
            if len(users) != 1 or users[0]["op_name"] not in _AFTER:
                return tensor
            op = users[0]
            if op["op_name"] in ("MUL", "ADD") and not self.constant_input(op, tensor):
                return tensor  # a residual ADD: two activations
            tensor = op["outputs"][0]

    def convolutions_on(self, tensor, through=_BEFORE):
        """The convolutions reading ``tensor`` (through padding and the like)."""
        found, todo = [], [tensor]
        while todo:
            current = todo.pop()
            for op in self.users(current):
                if op["op_name"] in CONVOLUTIONS and op["inputs"][0] == current:
                    found.append(op)
                elif op["op_name"] in through and op["inputs"][0] == current:
                    todo.append(op["outputs"][0])
        return sorted(found, key=lambda op: op["index"])

    def kernel(self, op):
        return self.graph.shape(op["inputs"][1])

    def channels(self, tensor):
        return self.graph.shape(tensor)[-1]

    def side(self, tensor):
        shape = self.graph.shape(tensor)
        return shape[1] if len(shape) == 4 else None

    def is_pointwise(self, op):
        kernel = self.kernel(op)
        return op["op_name"] == "CONV_2D" and kernel[1:3] == (1, 1)

    def is_depthwise(self, op):
        return op["op_name"] == "DEPTHWISE_CONV_2D" and self.kernel(op)[1:3] == (3, 3)

    def stride(self, op):
        inside, outside = self.side(op["inputs"][0]), self.side(op["outputs"][0])
        return round(inside / outside) if inside and outside else 1

    # -- naming

    def one(self, ops, test, what):
        chosen = [op for op in ops if test(op)]
        if len(chosen) != 1:
            raise NotMobileNetV2(f"{what}: found {len(chosen)} candidate convolution(s), "
                                 f"expected one")
        return chosen[0]

    def name(self, op, key):
        if op["index"] in self.names:
            raise NotMobileNetV2(f"one convolution would be both {self.names[op['index']]} and "
                                 f"{key}")
        self.names[op["index"]] = key
        return self.after(op["outputs"][0])

    def stem(self):
        """Conv1: the first convolution after the input (through any op in between)."""
        seen, todo, found = set(), [self.graph.input["index"]], []
        while todo:
            tensor = todo.pop()
            for op in self.users(tensor):
                if op["index"] in seen:
                    continue
                seen.add(op["index"])
                if op["op_name"] in CONVOLUTIONS:
                    found.append(op)
                else:
                    todo.extend(op["outputs"])
        conv = self.one(found, lambda op: op["op_name"] == "CONV_2D" and self.kernel(op)[1:] ==
                        (3, 3, 3), "the stem (a 3x3 convolution on the 3-channel input)")
        if self.stride(conv) != 2:
            raise NotMobileNetV2("the stem convolution does not have stride 2")
        return self.name(conv, "Conv1")

    def block(self, index, tensor):
        """Inverted residual ``index`` reading ``tensor``: its output, and the other depthwise
        convolutions reading its expansion (SSDLite's first predictors, at block 13)."""
        prefix = "expanded_conv_" if index == 0 else f"block_{index}_"
        expanded, others = tensor, []
        if index:
            expand = self.one(self.convolutions_on(tensor), self.is_pointwise,
                              f"block {index}: the 1x1 expansion")
            expanded = self.name(expand, prefix + "expand")
        depthwise = [op for op in self.convolutions_on(expanded) if self.is_depthwise(op)]
        if len(depthwise) > 1:  # the block's own is the one that goes on (stride 2 at block 13)
            depthwise = sorted(depthwise, key=lambda op: -self.stride(op))
            if self.stride(depthwise[0]) == self.stride(depthwise[1]):
                raise NotMobileNetV2(f"block {index}: {len(depthwise)} depthwise convolutions "
                                     "read the expansion and none stands out by its stride")
            depthwise, others = depthwise[:1], depthwise[1:]
        dw = self.one(depthwise, lambda op: True, f"block {index}: the 3x3 depthwise")
        project = self.one(self.convolutions_on(self.name(dw, prefix + "depthwise")),
                           self.is_pointwise, f"block {index}: the 1x1 projection")
        out = self.name(project, prefix + "project")
        same = self.side(out) == self.side(tensor) and self.channels(out) == self.channels(tensor)
        adds = [op for op in self.users(out) if op["op_name"] == "ADD"
                and self.after(op["inputs"][0] if op["inputs"][1] == out else op["inputs"][1])
                == tensor]
        if same and index and len(adds) != 1:
            raise NotMobileNetV2(f"block {index} keeps its size and width but has no residual "
                                 "ADD")
        if adds and not (same and index):
            raise NotMobileNetV2(f"block {index} changes its size or width but has a residual "
                                 "ADD")
        return (self.after(adds[0]["outputs"][0]) if adds else out), (expanded, others)

    def backbone(self):
        """Names Conv1 and the 17 blocks; returns the last block's output and the SSDLite tap."""
        tensor = self.stem()
        taps = []
        for index in range(BLOCKS + 1):
            tensor, tap = self.block(index, tensor)
            if tap[1]:
                taps.append(tap)
        if len(taps) > 1:
            raise NotMobileNetV2(f"{len(taps)} blocks have extra depthwise convolutions on their "
                                 "expansion (SSDLite has one, block 13)")
        return tensor, (taps[0] if taps else None)

    # -- heads

    def pools_on(self, tensor):
        return [op for op in self.users(tensor) if op["op_name"] in _POOLS]

    def after_pool(self, pool, what):
        return self.one(self.convolutions_on(pool["outputs"][0], through=_BEFORE + _RESHAPES),
                        lambda op: op["op_name"] in ("CONV_2D", "FULLY_CONNECTED"), what)

    def classifier(self, features):
        (pool,) = self.pools_on(features)
        self.name(self.after_pool(pool, "the classifier after the average pooling"),
                  "predictions")
        return "classifier"

    def deeplab(self, tensor):
        pools = self.pools_on(tensor)
        if len(pools) != 1:
            raise NotMobileNetV2(f"DeepLab head: {len(pools)} poolings on the feature map")
        pooled = self.after_pool(pools[0], "DeepLab's image pooling convolution")
        self.name(pooled, "image_pooling")
        branches = self.convolutions_on(tensor)
        aspp0 = self.one(branches, self.is_pointwise, "DeepLab's 1x1 branch (aspp0)")
        concat = [op for op in self.users(self.name(aspp0, "aspp0"))
                  if op["op_name"] == "CONCATENATION"]
        if len(concat) != 1:
            raise NotMobileNetV2("DeepLab head: the 1x1 branch feeds no concatenation")
        inputs = list(concat[0]["inputs"])
        atrous = [op for op in branches if op["op_name"] == "CONV_2D" and
                  self.kernel(op)[1:3] == (3, 3)]
        if len(atrous) not in (0, 3) or len(branches) != 1 + len(atrous):
            raise NotMobileNetV2(f"DeepLab head: {len(branches)} convolutions on the feature "
                                 "map (expected 1, or 4 with ASPP)")
        ends = {op["index"]: self.after(op["outputs"][0]) for op in atrous}
        atrous.sort(key=lambda op: inputs.index(ends[op["index"]]) if ends[op["index"]] in inputs
                    else len(inputs) + op["index"])  # the concatenation's order: rates 6, 12, 18
        for i, op in enumerate(atrous, start=1):
            self.name(op, f"aspp{i}")
        projection = self.one(self.convolutions_on(concat[0]["outputs"][0]), self.is_pointwise,
                              "DeepLab's projection after the concatenation")
        logits = self.one(self.convolutions_on(self.name(projection, "concat_projection")),
                          self.is_pointwise, "DeepLab's logits")
        self.name(logits, "logits")
        return "deeplab"

    def predictors(self, index, depthwise):
        """Names feature map ``index``'s box and class predictors (depthwise + 1x1 each)."""
        if len(depthwise) != 2:
            raise NotMobileNetV2(f"SSDLite feature map {index}: {len(depthwise)} predictor "
                                 "depthwise convolutions, expected 2 (box and class)")
        pairs = []
        for dw in depthwise:
            conv = self.one(self.convolutions_on(self.after(dw["outputs"][0])), self.is_pointwise,
                            f"SSDLite feature map {index}: the predictor's 1x1 convolution")
            pairs.append((dw, conv, self._per_box(conv)))
        boxes = [pair for pair in pairs if pair[2] == 4]
        if len(boxes) != 1:  # both reshape to 4 per anchor (3 classes): box first, as built
            boxes = [pairs[0]] if all(pair[2] == 4 for pair in pairs) else boxes
        if len(boxes) != 1:
            raise NotMobileNetV2(f"SSDLite feature map {index}: no predictor with 4 box values "
                                 "per anchor")
        for dw, conv, _ in pairs:
            which = "box" if dw is boxes[0][0] else "class"
            self.name(dw, f"{which}_predictor_{index}_depthwise")
            self.name(conv, f"{which}_predictor_{index}")

    def _per_box(self, conv):
        """The last dimension the predictor's output is reshaped to (4 for boxes)."""
        tensor = self.after(conv["outputs"][0])
        for op in self.users(tensor):
            if op["op_name"] == "RESHAPE":
                return self.graph.shape(op["outputs"][0])[-1]
        return self.channels(conv["outputs"][0])

    def ssdlite(self, features, tap):
        if tap is None:
            raise NotMobileNetV2("SSDLite: no predictors on block 13's expansion")
        maps = [features]
        for k in range(1, 5):
            reduce = self.one(self.convolutions_on(maps[-1]), self.is_pointwise,
                              f"SSDLite extra layer {k}: the 1x1 reduction")
            dw = self.one(self.convolutions_on(self.name(reduce, f"extra_{k}_reduce")),
                          self.is_depthwise, f"SSDLite extra layer {k}: the depthwise")
            project = self.one(self.convolutions_on(self.name(dw, f"extra_{k}_depthwise")),
                               self.is_pointwise, f"SSDLite extra layer {k}: the projection")
            maps.append(self.name(project, f"extra_{k}_project"))
        self.predictors(0, tap[1])
        for index, tensor in enumerate(maps, start=1):
            self.predictors(index, [op for op in self.convolutions_on(tensor)
                                    if op["index"] not in self.names and self.is_depthwise(op)])
        return "ssdlite"

    def head(self, tensor, tap):
        if self.pools_on(tensor):
            return self.deeplab(tensor)
        last = self.one(self.convolutions_on(tensor), self.is_pointwise,
                        "the 1x1 convolution after the last block (Conv_1)")
        features = self.name(last, "Conv_1")
        if self.pools_on(features):
            return self.classifier(features)
        return self.ssdlite(features, tap)


def layer_names(graph):
    """``({op index: keras_mnv2 layer name}, kind)`` of a MobileNetV2-family ``TfliteGraph``
    (kind "classifier", "deeplab" or "ssdlite"), from its structure; ``NotMobileNetV2`` (an
    ``InputError``) says where the graph stops looking like one. Every convolution and fully
    connected op of the graph must get a name."""
    walk = _Walk(graph)
    tensor, tap = walk.backbone()
    kind = walk.head(tensor, tap)
    left = [op for op in graph.ops if op["op_name"] in CONVOLUTIONS
            and op["index"] not in walk.names]
    if left:
        raise NotMobileNetV2(f"{len(left)} convolution(s) outside the MobileNetV2 {kind} "
                             f"structure (the first: op {left[0]['index']}, "
                             f"{left[0]['op_name']})")
    return walk.names, kind
