"""TFLite model metadata, written here, for the runtimes that need it (MediaPipe Tasks
ImageClassifier / ObjectDetector / ImageSegmenter, the TFLite Task Library).

The format is the published TFLite metadata schema (``metadata_schema.fbs``, file identifier
"M001", kept in mediapipe/tasks/metadata): a flatbuffer stored in one of the model's buffers and
named "TFLITE_METADATA" in the model's ``metadata`` list, plus the associated files (the label
lists) appended to the .tflite file as a zip archive, so the file is a valid model and a valid zip
at once. This module builds that flatbuffer with the ``flatbuffers`` package from a plain nested
description (``describe``), so no metadata-writer package is needed; the schema's own generated
reader (mediapipe) reads it back field for field (tests/test_metadata.py).

What the three models get (``describe``):
  input      "image": RGB, normalization mean = std = 127.5 (pixels [0, 255] -> [-1, 1], what
             ``preprocess_input`` does), value range stats [-1, 1] (or the integer range of an
             integer input, which takes pixels as they are);
  classifier "probability" (or "logits"): labels (TENSOR_AXIS_LABELS), score range [0, 1];
  detector   "detections" export: "location" (boxes, coordinate order ymin, xmin, ymax, xmax:
             BoundingBoxProperties index [1, 0, 3, 2], BOUNDARIES, RATIO), "category" (labels
             TENSOR_VALUE_LABELS, background left out: the op's classes are 0-based), "score",
             "number of detections", the group "detection_result";
             "tasks" export (raw, for MediaPipe's own decoder): "location" (box encodings,
             ty, tx, th, tw) and "score" (softmax without the background column, labels
             TENSOR_AXIS_LABELS) and the custom metadata "DETECTOR_METADATA" (MediaPipe's
             object_detector_metadata_schema.fbs, "V001": the anchors and the box coder scales);
  segmenter  "segmentation_masks": logits [1, H, W, C], labels (TENSOR_AXIS_LABELS).
The minimum parser version is computed from the fields used, by the schema's rules (1.0.0;
tensor groups 1.2.0; custom metadata 1.5.0).

Exports no Tasks runtime can consume (``unsupported_reason``): a classifier with int8 input
(MediaPipe takes uint8 or float32 only), the DeepLab ``mask`` output (an int32 class map:
MediaPipe reads its last axis as classes), the raw SSDLite export (its scores are logits with the
background column). ``export_tflite(metadata="auto")`` writes no metadata for those and warns;
``metadata=True`` refuses them.
"""

import io
import zipfile

import numpy as np

from keras_mnv2.errors import InputError

METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
DETECTOR_METADATA_NAME = "DETECTOR_METADATA"
DETECTOR_IDENTIFIER = b"V001"
LABELS_FILE = "labels.txt"
NORMALIZATION = (127.5, 127.5)  # mean, std: pixels [0, 255] -> [-1, 1]

# Enumerations of metadata_schema.fbs used here.
CONTENT = {"NONE": 0, "FeatureProperties": 1, "ImageProperties": 2, "BoundingBoxProperties": 3}
PROCESS_UNIT = {"NONE": 0, "NormalizationOptions": 1}
COLOR_SPACE = {"UNKNOWN": 0, "RGB": 1, "GRAYSCALE": 2}
FILE_TYPE = {"UNKNOWN": 0, "DESCRIPTIONS": 1, "TENSOR_AXIS_LABELS": 2, "TENSOR_VALUE_LABELS": 3}
BOX_TYPE = {"UNKNOWN": 0, "BOUNDARIES": 1, "UPPER_LEFT": 2, "CENTER": 3}
COORDINATE_TYPE = {"RATIO": 0, "PIXEL": 1}

# The tables written, each field in its schema order (the field's id is its position: a union
# takes two ids, its type byte then its value). Kinds: "str", "bool", "byte", "ubyte", "int",
# "float", "T" (a table of that name), "union", and lists "[str]", "[float]", "[uint]",
# "[ubyte]", "[T]".
SCHEMA = {
    # metadata_schema.fbs (TFLite metadata, "M001")
    "ModelMetadata": [("name", "str"), ("description", "str"), ("version", "str"),
                      ("subgraph_metadata", "[SubGraphMetadata]"), ("author", "str"),
                      ("license", "str"), ("associated_files", "[AssociatedFile]"),
                      ("min_parser_version", "str")],
    "SubGraphMetadata": [("name", "str"), ("description", "str"),
                         ("input_tensor_metadata", "[TensorMetadata]"),
                         ("output_tensor_metadata", "[TensorMetadata]"),
                         ("associated_files", "[AssociatedFile]"),
                         ("input_process_units", "[ProcessUnit]"),
                         ("output_process_units", "[ProcessUnit]"),
                         ("input_tensor_groups", "[TensorGroup]"),
                         ("output_tensor_groups", "[TensorGroup]"),
                         ("custom_metadata", "[CustomMetadata]")],
    "TensorMetadata": [("name", "str"), ("description", "str"), ("dimension_names", "[str]"),
                       ("content", "Content"), ("process_units", "[ProcessUnit]"),
                       ("stats", "Stats"), ("associated_files", "[AssociatedFile]")],
    "Content": [("content_properties", "union"), ("range", "ValueRange")],
    "FeatureProperties": [],
    "ImageProperties": [("color_space", "byte"), ("default_size", "ImageSize")],
    "ImageSize": [("width", "uint"), ("height", "uint")],
    "BoundingBoxProperties": [("index", "[uint]"), ("type", "byte"),
                              ("coordinate_type", "byte")],
    "ValueRange": [("min", "int"), ("max", "int")],
    "ProcessUnit": [("options", "union")],
    "NormalizationOptions": [("mean", "[float]"), ("std", "[float]")],
    "Stats": [("max", "[float]"), ("min", "[float]")],
    "AssociatedFile": [("name", "str"), ("description", "str"), ("type", "byte"),
                       ("locale", "str"), ("version", "str")],
    "TensorGroup": [("name", "str"), ("tensor_names", "[str]")],
    "CustomMetadata": [("name", "str"), ("data", "[ubyte]")],
    # object_detector_metadata_schema.fbs (MediaPipe, "V001")
    "ObjectDetectorOptions": [("min_parser_version", "str"),
                              ("ssd_anchors_options", "SsdAnchorsOptions"),
                              ("tensors_decoding_options", "TensorsDecodingOptions")],
    "SsdAnchorsOptions": [("fixed_anchors_schema", "FixedAnchorsSchema")],
    "FixedAnchorsSchema": [("anchors", "[FixedAnchor]")],
    "FixedAnchor": [("x_center", "float"), ("y_center", "float"), ("width", "float"),
                    ("height", "float")],
    "TensorsDecodingOptions": [("num_classes", "int"), ("num_boxes", "int"),
                               ("num_coords", "int"), ("keypoint_coord_offset", "int"),
                               ("num_keypoints", "int"), ("num_values_per_keypoint", "int"),
                               ("x_scale", "float"), ("y_scale", "float"), ("w_scale", "float"),
                               ("h_scale", "float"), ("apply_exponential_on_box_size", "bool"),
                               ("sigmoid_score", "bool")],
}
UNIONS = {("Content", "content_properties"): CONTENT,
          ("ProcessUnit", "options"): PROCESS_UNIT}


class MetadataError(InputError):
    """An export that no Tasks runtime can consume, or a description that breaks the schema."""


# ----------------------------------------------------------------------------------------------
# Flatbuffer writing from a nested description


def _slots(table):
    """[(field, kind, first id)]: a union takes two ids (type, value)."""
    slots, slot = [], 0
    for field, kind in SCHEMA[table]:
        slots.append((field, kind, slot))
        slot += 2 if kind == "union" else 1
    return slots


_SCALARS = {  # kind -> (Builder slot method, vector element size, Builder prepend method)
    "bool": ("PrependBoolSlot", 1, "PrependBool"),
    "byte": ("PrependInt8Slot", 1, "PrependInt8"),
    "ubyte": ("PrependUint8Slot", 1, "PrependUint8"),
    "int": ("PrependInt32Slot", 4, "PrependInt32"),
    "uint": ("PrependUint32Slot", 4, "PrependUint32"),
    "float": ("PrependFloat32Slot", 4, "PrependFloat32"),
}


def _build_table(builder, table, value):
    if not isinstance(value, dict):
        raise MetadataError(f"{table}: expected a dict of fields, got {type(value).__name__}")
    unknown = set(value) - {f for f, _ in SCHEMA[table]}
    if unknown:
        raise MetadataError(f"{table} has no field(s) {sorted(unknown)}")
    offsets = {}  # children first: a flatbuffer is built bottom-up
    for field, kind, _ in _slots(table):
        item = value.get(field)
        if item is None or kind in _SCALARS:
            continue
        if kind == "str":
            offsets[field] = builder.CreateString(str(item))
        elif kind == "union":
            name, body = item
            offsets[field] = (UNIONS[(table, field)][name], _build_table(builder, name, body))
        elif kind.startswith("["):
            offsets[field] = _build_vector(builder, kind[1:-1], item)
        else:
            offsets[field] = _build_table(builder, kind, item)
    builder.StartObject(sum(2 if k == "union" else 1 for _, k in SCHEMA[table]))
    for field, kind, slot in _slots(table):
        item = value.get(field)
        if item is None:
            continue
        if kind in _SCALARS:
            # the default is a value never written, so that every given value is stored
            getattr(builder, _SCALARS[kind][0])(slot, item, None)
        elif kind == "union":
            union_type, offset = offsets[field]
            builder.PrependUint8Slot(slot, union_type, None)
            builder.PrependUOffsetTRelativeSlot(slot + 1, offset, 0)
        else:
            builder.PrependUOffsetTRelativeSlot(slot, offsets[field], 0)
    return builder.EndObject()


def _build_vector(builder, element, items):
    items = list(items)
    if element in _SCALARS:
        _, size, prepend = _SCALARS[element]
        builder.StartVector(size, len(items), 16 if element == "ubyte" else size)
        for item in reversed(items):
            getattr(builder, prepend)(item)
        return builder.EndVector()
    if element == "str":
        offsets = [builder.CreateString(str(item)) for item in items]
    else:
        offsets = [_build_table(builder, element, item) for item in items]
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def build(table, description, identifier):
    """The flatbuffer (bytes) of root table ``table`` described by ``description`` (a dict;
    see ``SCHEMA``), with the 4-byte file ``identifier``."""
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    root = _build_table(builder, table, description)
    builder.Finish(root, file_identifier=identifier)
    return bytes(builder.Output())


# ----------------------------------------------------------------------------------------------
# Reading back (our own reader, for tools that have no mediapipe: predict, tests' controls)


def _read_table(buf, pos, table):
    from flatbuffers import table as fb_table

    tab = fb_table.Table(bytearray(buf), pos)
    return _read_fields(tab, table)


def _read_fields(tab, table):
    import flatbuffers.number_types as N

    kinds = {"bool": N.BoolFlags, "byte": N.Int8Flags, "ubyte": N.Uint8Flags,
             "int": N.Int32Flags, "uint": N.Uint32Flags, "float": N.Float32Flags}
    out = {}
    for field, kind, slot in _slots(table):
        offset = tab.Offset(4 + 2 * slot)
        if kind == "union":
            if not offset:
                continue
            type_value = tab.Get(N.Uint8Flags, offset + tab.Pos)
            value_offset = tab.Offset(4 + 2 * (slot + 1))
            names = {v: k for k, v in UNIONS[(table, field)].items()}
            name = names.get(type_value, str(type_value))
            sub = tab.Indirect(value_offset + tab.Pos)
            out[field] = (name, _read_at(tab, sub, name))
            continue
        if not offset:
            continue
        if kind in kinds:
            out[field] = tab.Get(kinds[kind], offset + tab.Pos)
            if kind == "float":
                out[field] = float(np.float32(out[field]))
        elif kind == "str":
            out[field] = tab.String(offset + tab.Pos).decode("utf-8")
        elif kind.startswith("["):
            element = kind[1:-1]
            start, length = tab.Vector(offset), tab.VectorLen(offset)
            if element in kinds:
                size = {"bool": 1, "byte": 1, "ubyte": 1}.get(element, 4)
                values = [tab.Get(kinds[element], start + i * size) for i in range(length)]
                if element == "float":
                    values = [float(np.float32(v)) for v in values]
                out[field] = values
            elif element == "str":
                out[field] = [tab.String(start + 4 * i).decode("utf-8") for i in range(length)]
            else:
                out[field] = [_read_at(tab, tab.Indirect(start + 4 * i), element)
                              for i in range(length)]
        else:
            out[field] = _read_at(tab, tab.Indirect(offset + tab.Pos), kind)
    return out


def _read_at(tab, pos, table):
    from flatbuffers import table as fb_table

    return _read_fields(fb_table.Table(tab.Bytes, pos), table)


def parse(buffer, table="ModelMetadata", identifier=METADATA_IDENTIFIER):
    """The description (nested dicts, as ``build`` takes) of a metadata flatbuffer."""
    import flatbuffers

    buffer = bytes(buffer)
    if len(buffer) < 8 or buffer[4:8] != identifier:
        raise MetadataError(f"not a {table} flatbuffer: file identifier {buffer[4:8]!r}, "
                            f"expected {identifier!r}")
    pos = flatbuffers.encode.Get(flatbuffers.packer.uoffset, buffer, 0)
    return _read_table(buffer, pos, table)


# ----------------------------------------------------------------------------------------------
# What each model gets


def min_parser_version(description):
    """The minimum metadata parser version a description needs, by the schema's version rules
    for the members used here (1.0.0; input/output process units 1.1.0; tensor groups 1.2.0;
    custom metadata 1.5.0)."""
    version = (1, 0, 0)
    for subgraph in description.get("subgraph_metadata", []):
        if subgraph.get("input_process_units") or subgraph.get("output_process_units"):
            version = max(version, (1, 1, 0))
        if subgraph.get("input_tensor_groups") or subgraph.get("output_tensor_groups"):
            version = max(version, (1, 2, 0))
        if subgraph.get("custom_metadata"):
            version = max(version, (1, 5, 0))
    return ".".join(str(v) for v in version)


def _labels_file(description="Labels of the classes, one a line, in the output's order.",
                 kind="TENSOR_AXIS_LABELS"):
    return {"name": LABELS_FILE, "description": description, "type": FILE_TYPE[kind]}


def _input_tensor(input_dtype, height, width):
    if input_dtype == "float32":
        mean, std = NORMALIZATION
        low, high = (0.0 - mean) / std, (255.0 - mean) / std
    else:
        info = np.iinfo(input_dtype)
        low, high = float(info.min), float(info.max)
    return {
        "name": "image",
        "description": f"One RGB image, {height}x{width}, pixels [0, 255] normalized to "
                       "[-1, 1] with mean 127.5 and std 127.5"
                       + ("" if input_dtype == "float32" else
                          f" (the {input_dtype} input takes the pixels as they are)"),
        "content": {"content_properties": ("ImageProperties",
                                           {"color_space": COLOR_SPACE["RGB"],
                                            "default_size": {"width": int(width),
                                                             "height": int(height)}})},
        "process_units": [{"options": ("NormalizationOptions",
                                       {"mean": [NORMALIZATION[0]],
                                        "std": [NORMALIZATION[1]]})}],
        "stats": {"max": [high], "min": [low]},
    }


def _feature(name, description, value_range=None, files=None, stats=None):
    tensor = {"name": name, "description": description,
              "content": {"content_properties": ("FeatureProperties", {})}}
    if value_range is not None:
        tensor["content"]["range"] = {"min": value_range[0], "max": value_range[1]}
    if files:
        tensor["associated_files"] = files
    if stats:
        tensor["stats"] = stats
    return tensor


# The tensor metadata of each output, by the export's output name (keras_mnv2.deploy.export).
def _output_tensors(kind, output, num_classes):
    if kind == "classifier":  # "raw": the model's own output, named "output" by the export
        probabilities = output == "probabilities"
        what = {"probabilities": "Probabilities", "logits": "Logits"}.get(output, "Scores")
        return {"output" if output == "raw" else output: _feature(
            {"probabilities": "probability", "logits": "logits"}.get(output, "score"),
            f"{what} of the {num_classes} classes.", files=[_labels_file()],
            stats={"max": [1.0], "min": [0.0]} if probabilities else None)}
    if kind == "detector" and output == "detections":
        return {
            "detection_boxes": {
                "name": "location",
                "description": "Boxes (ymin, xmin, ymax, xmax), normalized to [0, 1].",
                "content": {"content_properties": (
                    "BoundingBoxProperties",
                    {"index": [1, 0, 3, 2], "type": BOX_TYPE["BOUNDARIES"],
                     "coordinate_type": COORDINATE_TYPE["RATIO"]}),
                    "range": {"min": 2, "max": 2}},
            },
            "detection_classes": _feature(
                "category", "Class of each box (0-based, background left out).", (2, 2),
                files=[_labels_file("Labels of the object classes, one a line (line i: class "
                                    "i).", "TENSOR_VALUE_LABELS")]),
            "detection_scores": _feature("score", "Score of each box.", (2, 2),
                                         stats={"max": [1.0], "min": [0.0]}),
            "num_detections": _feature("number of detections",
                                       "Number of the boxes that hold detections."),
        }
    if kind == "detector" and output == "tasks":
        return {
            "location": {
                "name": "location",
                "description": "Box encodings (ty, tx, th, tw) relative to the anchors, scaled "
                               "by the box coder's scales (see DETECTOR_METADATA).",
                "content": {"content_properties": (
                    "BoundingBoxProperties",
                    {"index": [1, 0, 3, 2], "type": BOX_TYPE["BOUNDARIES"],
                     "coordinate_type": COORDINATE_TYPE["RATIO"]}),
                    "range": {"min": 2, "max": 2}},
            },
            "score": _feature("score", "Softmax score of each object class for each anchor "
                                       "(the background column left out).", (2, 2),
                              files=[_labels_file()], stats={"max": [1.0], "min": [0.0]}),
        }
    if kind == "segmenter" and output in ("logits", "raw"):
        return {"logits" if output == "logits" else "output": {
            "name": "segmentation_masks",
            "description": f"Logits of the {num_classes} classes for each pixel.",
            "content": {"content_properties": ("ImageProperties",
                                               {"color_space": COLOR_SPACE["GRAYSCALE"]}),
                        "range": {"min": 1, "max": 2}},
            "associated_files": [_labels_file()],
        }}
    raise MetadataError(f"no metadata for a {kind} exported as {output!r}")


def unsupported_reason(kind, output, input_dtype):
    """Why no MediaPipe Tasks / Task Library runtime can consume this export, or None."""
    if kind == "other":
        return "the model is not a classifier, an SSDLite detector or a DeepLab segmenter"
    if input_dtype == "int8":
        return ("the input is int8: MediaPipe Tasks takes uint8 or float32 image inputs "
                "only (\"Requested one of these types: uint8/float32, got INT8\"); export "
                "with io_dtype='uint8' or 'float32'")
    if kind == "segmenter" and output == "mask":
        return ("the 'mask' output is an int32 class map: MediaPipe's ImageSegmenter reads "
                "the last axis of its output as the classes and gives garbage; export "
                "output='logits'")
    if kind == "detector" and output == "raw":
        return ("the 'raw' SSDLite output holds class logits with the background column: "
                "MediaPipe would read them as scores; export output='detections' (the "
                "post-process op) or output='tasks' (for MediaPipe's own decoder)")
    return None


def _label_list(labels, num_classes, kind, output):
    if labels is None:
        names = [f"class {i}" for i in range(num_classes)]
    else:
        names = [str(n) for n in labels]
        if any("\n" in n or not n.strip() for n in names):
            raise MetadataError("labels must be non-empty names without line breaks")
        if len(names) != num_classes:
            raise MetadataError(f"{len(names)} labels for a model with {num_classes} classes "
                                "(one name per class column of the model's output, the "
                                "detector's background included)")
    if kind == "detector":
        names = names[1:]  # column 0 is background: the op's classes start after it
    return names


def describe(kind, output, input_shape, num_classes, input_dtype="float32", labels=None,
             name=None, description=None, output_order=None, anchors=None,
             scale_factors=(10.0, 10.0, 5.0, 5.0), version=None):
    """The metadata of one export: (ModelMetadata description, {file name: bytes}).

    Args:
        kind: "classifier", "detector" or "segmenter" (``keras_mnv2.deploy.outputs.model_kind``).
        output: the export's output ("probabilities", "logits", "detections", "tasks", ...).
        input_shape: (H, W, C) of the model input.
        num_classes: the number of class columns of the model's output (the detector's
            background column included).
        input_dtype: "float32", "uint8" or "int8" (refused: see ``unsupported_reason``).
        labels: one name per class column (the detector's includes background first); default
            "class 0", "class 1", ...
        output_order: the export's output names in the order of the model's output tensors
            (the metadata's output list follows that order); default the names as listed here.
        anchors: [N, 4] (cy, cx, h, w) for output "tasks"; scale_factors: the box coder's.
    """
    reason = unsupported_reason(kind, output, input_dtype)
    if reason:
        raise MetadataError(f"no Tasks runtime can consume this export: {reason}")
    height, width = int(input_shape[0]), int(input_shape[1])
    names = _label_list(labels, num_classes, kind, output)
    outputs = _output_tensors(kind, output, num_classes)
    order = list(output_order) if output_order is not None else list(outputs)
    if sorted(order) != sorted(outputs):
        raise MetadataError(f"the export's outputs {order} are not those of a {kind} "
                            f"{output!r} export {sorted(outputs)}")
    title = {"classifier": "image classifier", "detector": "object detector (SSDLite)",
             "segmenter": "image segmenter (Mobile DeepLabv3)"}[kind]
    subgraph = {
        "name": title,
        "input_tensor_metadata": [_input_tensor(input_dtype, height, width)],
        "output_tensor_metadata": [outputs[n] for n in order],
    }
    if kind == "detector" and output == "detections":
        subgraph["output_tensor_groups"] = [{"name": "detection_result",
                                             "tensor_names": ["location", "category", "score"]}]
    if kind == "detector" and output == "tasks":
        if anchors is None:
            raise MetadataError("output 'tasks' needs the anchors [N, 4] (cy, cx, h, w)")
        subgraph["custom_metadata"] = [{"name": DETECTOR_METADATA_NAME,
                                        "data": list(detector_options(
                                            anchors, len(names), scale_factors))}]
    model = {
        "name": name or f"MobileNetV2 {title}",
        "description": description or (
            f"keras_mnv2 MobileNetV2 {title}, {height}x{width} RGB input, "
            f"{len(names)} classes"),
        "version": version or "keras_mnv2",
        "subgraph_metadata": [subgraph],
        "author": "keras_mnv2",
        "license": "Apache-2.0",
    }
    model["min_parser_version"] = min_parser_version(model)
    return model, {LABELS_FILE: ("\n".join(names) + "\n").encode("utf-8")}


def detector_options(anchors, num_classes, scale_factors=(10.0, 10.0, 5.0, 5.0)):
    """MediaPipe's ObjectDetectorOptions flatbuffer ("V001") for a raw SSD export: the fixed
    anchors and the decoding of box encodings (ty, tx, th, tw) with ``scale_factors``
    (y, x, h, w) and exp on the sizes; scores as they are (softmax in the model)."""
    anchors = np.asarray(anchors, np.float32)
    if anchors.ndim != 2 or anchors.shape[1] != 4:
        raise MetadataError(f"anchors must be [N, 4] (cy, cx, h, w), got {anchors.shape}")
    sy, sx, sh, sw = (float(s) for s in scale_factors)
    return build("ObjectDetectorOptions", {
        "min_parser_version": "1.0.0",
        "ssd_anchors_options": {"fixed_anchors_schema": {"anchors": [
            {"x_center": float(cx), "y_center": float(cy), "width": float(w),
             "height": float(h)} for cy, cx, h, w in anchors]}},
        "tensors_decoding_options": {
            "num_classes": int(num_classes), "num_boxes": int(len(anchors)), "num_coords": 4,
            "keypoint_coord_offset": 0, "num_keypoints": 0, "num_values_per_keypoint": 2,
            "x_scale": sx, "y_scale": sy, "w_scale": sw, "h_scale": sh,
            "apply_exponential_on_box_size": True, "sigmoid_score": False},
    }, DETECTOR_IDENTIFIER)


# ----------------------------------------------------------------------------------------------
# Into and out of a .tflite file


def _model_object(content):
    """The flatbuffer's object form, with every buffer's bytes held inline: files that keep
    constants after the flatbuffer (``offset``/``size``, as LiteRT Quantizer writes them) would
    otherwise lose them when the object is serialized again."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    for buffer in model.buffers or []:
        if getattr(buffer, "offset", 0) > 1:
            buffer.data = np.frombuffer(content[buffer.offset:buffer.offset + buffer.size],
                                        np.uint8)
            buffer.offset, buffer.size = 0, 0
    return model


def output_names(content):
    """The signature output names of a .tflite flatbuffer in the order of the main subgraph's
    output tensors."""
    model = _model_object(strip(content))
    subgraph = model.subgraphs[0]
    by_index = {}
    for signature in model.signatureDefs or []:
        for tensor_map in signature.outputs or []:
            by_index[tensor_map.tensorIndex] = tensor_map.name.decode() \
                if isinstance(tensor_map.name, bytes) else tensor_map.name
    names = []
    for index in subgraph.outputs:
        if index not in by_index:
            raise MetadataError(f"output tensor {index} has no signature name")
        names.append(by_index[index])
    return names


def strip(content):
    """The flatbuffer part of a .tflite file (associated files appended as a zip are cut off)."""
    content = bytes(content)
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            infos = archive.infolist()
        if infos:
            start = min(info.header_offset for info in infos)
            return content[:start]
    except zipfile.BadZipFile:
        pass
    return content


def populate(content, description, files):
    """``content`` (a .tflite flatbuffer, bytes) with the metadata ``description`` stored as the
    "TFLITE_METADATA" buffer and ``files`` ({name: bytes}) appended as a zip archive. Any
    metadata already there is replaced."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    buffer = build("ModelMetadata", description, METADATA_IDENTIFIER)
    model = _model_object(strip(content))
    model.metadata = [m for m in (model.metadata or [])
                      if _text(m.name) != METADATA_NAME]
    entry = schema.BufferT()
    entry.data = np.frombuffer(buffer, np.uint8)
    model.buffers.append(entry)
    item = schema.MetadataT()
    item.name = METADATA_NAME
    item.buffer = len(model.buffers) - 1
    model.metadata.append(item)
    out = io.BytesIO(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, files[name])
    return out.getvalue()


def remove(content):
    """``content`` (bytes) without TFLite metadata nor associated files."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = _model_object(strip(content))
    ours = [m for m in (model.metadata or []) if _text(m.name) == METADATA_NAME]
    if not ours:
        return strip(content)
    for item in ours:  # the buffer stays, emptied, so that no buffer index moves
        model.buffers[item.buffer].data = None
    model.metadata = [m for m in model.metadata if _text(m.name) != METADATA_NAME]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def read(content):
    """(metadata buffer bytes or None, {file name: bytes}) of a .tflite file (bytes or path)."""
    if not isinstance(content, (bytes, bytearray)):
        with open(content, "rb") as f:
            content = f.read()
    content = bytes(content)
    files = {}
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            files = {name: archive.read(name) for name in archive.namelist()}
    except zipfile.BadZipFile:
        pass
    model = _model_object(strip(content))
    for item in model.metadata or []:
        if _text(item.name) == METADATA_NAME:
            data = model.buffers[item.buffer].data
            return bytes(np.asarray(data, np.uint8).tobytes()), files
    return None, files


def read_description(content):
    """(ModelMetadata description or None, {file name: bytes}) of a .tflite file."""
    buffer, files = read(content)
    return (parse(buffer) if buffer is not None else None), files


def labels(content):
    """The label list a .tflite file carries for its (first labelled) output, or None."""
    description, files = read_description(content)
    if description is None:
        return None
    for subgraph in description.get("subgraph_metadata", []):
        for tensor in subgraph.get("output_tensor_metadata", []):
            for file in tensor.get("associated_files", []):
                if file.get("name") in files:
                    return files[file["name"]].decode("utf-8").splitlines()
    return None


# ----------------------------------------------------------------------------------------------
# export_tflite's step


METADATA_CHOICES = ("auto", True, False)


def for_export(model, content, kind, output, io_dtype="float32", metadata="auto", labels=None,
               anchors=None, scale_factors=(10.0, 10.0, 5.0, 5.0), input_shape=None,
               name=None, description=None):
    """``content`` with metadata for ``keras_mnv2.deploy.export.export_tflite``: (bytes,
    min parser version or None).

    ``metadata``: "auto" (the default) writes it where a Tasks runtime can consume the export
    and warns otherwise (``unsupported_reason``); True writes it or raises ``MetadataError``;
    False leaves the file as converted.
    """
    import warnings

    if not check(model, kind, output, io_dtype, metadata, labels):
        if metadata == "auto" and kind != "other":
            reason = unsupported_reason(kind, output, io_dtype)
            warnings.warn(f"{model.name!r}: written without TFLite metadata, as no Tasks "
                          f"runtime can consume this export: {reason}", stacklevel=3)
        return content, None
    shape = tuple(input_shape or model.input_shape[1:])
    if kind == "detector":
        num_classes = int(_detector_classes(model).shape[-1])
        if anchors is None:
            anchors = getattr(model, "anchors", None)
    else:
        num_classes = int(model.outputs[0].shape[-1])
    model_description, files = describe(
        kind, output, shape, num_classes, input_dtype=io_dtype, labels=labels, name=name,
        description=description, output_order=output_names(content),
        anchors=anchors if output == "tasks" else None, scale_factors=scale_factors)
    return populate(content, model_description, files), model_description["min_parser_version"]


def check(model, kind, output, io_dtype, metadata, labels=None):
    """Whether ``for_export`` will write metadata; raises before any conversion for a bad
    ``metadata`` value, labels without metadata, and (``metadata=True``) an export no Tasks
    runtime can consume."""
    if metadata not in METADATA_CHOICES:
        raise InputError(f"metadata must be 'auto', True or False, got {metadata!r}")
    if metadata is False:
        if labels is not None:
            raise InputError("labels are written into the metadata: they need metadata on")
        return False
    reason = unsupported_reason(kind, output, io_dtype)
    if reason and metadata is True:
        raise MetadataError(f"{model.name!r}: no TFLite metadata: no Tasks runtime can "
                            f"consume this export: {reason} (or pass metadata=False)")
    return reason is None


def _detector_classes(model):
    """The class-logits output of an SSDLite (Keras 3, tf_keras or its QAT form)."""
    from keras_mnv2.deploy.outputs import _detector_outputs, _strip

    return _detector_outputs({_strip(n): t for n, t in zip(model.output_names, model.outputs)},
                             model)[1]
