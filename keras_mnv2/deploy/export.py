"""TFLite export of the three models in every mode, each file loaded back and run once.

Modes (``MODES``):
  float32   plain conversion;
  float16   weights stored as float16 (computed in float32, or float16 where the delegate can);
  dynamic   dynamic-range quantization: int8 weights, float activations;
  int8      full-integer post-training quantization, activation ranges calibrated on
            ``representative_data`` (images drawn from the training pipeline);
  qat       a quantization-aware tf_keras model (``keras_mnv2.deploy.qat.quantize`` + ``qat_fit``) to
            full integer, with the ranges learnt in training.
``io_dtype`` "int8" or "uint8" makes the input and the outputs integer in int8/qat mode (except
the detection outputs, float by the op's definition, and the int32 mask).

What comes out (``output``):
  classifier  "probabilities" (softmax appended when the model ends in logits) or "logits";
  SSDLite     "detections": the ``TFLite_Detection_PostProcess`` custom op appended (TFLite's
              built-in kernel: softmax scores, decode with the (10, 10, 5, 5) box coder against
              the anchors, then NMS, see ``NMS``; it computes in float: in an int8 model its
              inputs are dequantized, and it is listed in the float ops); outputs ``detection_boxes`` [1, K, 4] (ymin, xmin, ymax, xmax,
              normalized, not clipped), ``detection_classes`` [1, K] (0-based: label - 1),
              ``detection_scores`` [1, K], ``num_detections`` [1]), the form on-device
              detection apps consume; "tasks": box encodings ``location`` [1, N, 4] and
              softmax scores without the background column ``score`` [1, N, C - 1], for
              MediaPipe's own SSD decoder (anchors and box coder scales go in the metadata);
              or "raw" (box encodings and class logits);
  DeepLabV3   "logits" [1, H, W, C] or "mask" [1, H, W] int32 (argmax).
The input is one image, ``image`` [1, H, W, 3], preprocessed as for the Keras model.

TFLite model metadata (``keras_mnv2.deploy.metadata``: input normalization, labels, the meaning
of the detector's outputs) is written by default, so that MediaPipe Tasks and the TFLite Task
Library run the file; ``metadata=False`` leaves it out.

A model with split-expansion blocks (``expansion_splits`` / ``keras_mnv2.split.split_expansion``,
paper section 5.1) is exported with its ops in the memory-aware order of
``keras_mnv2.deploy.memory.reorder_ops`` (one group of a split block at a time), in every mode: the
converter orders parallel branches by name, which can run the groups side by side and lose the
arena saving. In the float modes and int8 its projection BNs are folded into the partial
projections first (``keras_mnv2.split.fold_projection_bn``; otherwise each stays a MUL and an
ADD over the block's output); ``keras_mnv2.deploy.qat.quantize`` folds them the same way before it
quantizes a split model.
"""

import dataclasses
import os
import re
import tempfile
import warnings

import numpy as np

from keras_mnv2.deploy.calibration import calibration_images
from keras_mnv2.deploy.outputs import (  # noqa: F401  (export.model_kind stays public)
    _detector_outputs, _ends_in_softmax, _strip, model_kind)
from keras_mnv2.errors import InputError, NoAnchorsError
from keras_mnv2.files import temporary_name, write_bytes

MODES = ("float32", "float16", "dynamic", "int8", "qat")
# Who quantizes mode int8: the TFLite converter's post-training quantization, or LiteRT Quantizer
# (ai-edge-quantizer: a float32 file, then its static int8 recipe, calibrated on the same images).
QUANTIZERS = ("converter", "litert")
IO_DTYPES = ("float32", "int8", "uint8")
OUTPUTS = {  # the first is the default; "raw" (the model's outputs as they are) fits any model
    "classifier": ("probabilities", "logits", "raw"),
    "detector": ("detections", "tasks", "raw"),
    "segmenter": ("logits", "mask", "raw"),
    "other": ("raw",),
}
POSTPROCESS_OP = "TFLite_Detection_PostProcess"
DETECTION_OUTPUTS = ("detection_boxes", "detection_classes", "detection_scores",
                     "num_detections")


class ExportError(RuntimeError):
    """A conversion or the check of an exported file failed; the message names the op or the
    setting at fault."""


@dataclasses.dataclass(frozen=True)
class NMS:
    """Settings of the ``TFLite_Detection_PostProcess`` op.

    ``use_regular_nms=True`` (the default here) is class-wise NMS, as
    ``keras_mnv2.detection.postprocess.decode_detections`` (up to 100 boxes per class: the kernel's fixed
    ``detections_per_class``; the op does not clip boxes to the image before NMS, the Keras side
    does, so it can keep a few more boxes near the border); False is the OD API's default, the
    faster class-agnostic NMS over each anchor's best ``max_classes_per_detection`` classes.
    """

    max_detections: int = 100
    score_threshold: float = 0.01
    iou_threshold: float = 0.6
    use_regular_nms: bool = True
    max_classes_per_detection: int = 1
    scale_factors: tuple = (10.0, 10.0, 5.0, 5.0)

    def __post_init__(self):
        for name in ("max_detections", "max_classes_per_detection"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"NMS {name} must be an integer >= 1, got {value!r}")
        for name in ("score_threshold", "iou_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"NMS {name} must be in [0, 1], got {getattr(self, name)!r}")
        if len(self.scale_factors) != 4 or min(self.scale_factors) <= 0:
            raise InputError(f"NMS scale_factors must be 4 numbers > 0, got "
                             f"{self.scale_factors!r}")


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """What ``export_tflite`` wrote (after loading the file back and running it once)."""

    path: str
    mode: str
    io_dtype: str
    output: str
    size_bytes: int
    input: tuple  # (name, shape, dtype)
    outputs: dict  # name -> (shape, dtype)
    ops: dict  # op name -> count
    float_ops: tuple  # ops computing in float (see keras_mnv2.deploy.tflite.float_ops)
    metadata: str = None  # min parser version of the TFLite metadata written, None: none

    def summary(self):
        floats = sorted(set(self.float_ops))
        return (f"{self.path}: {self.mode} ({self.io_dtype} I/O, {self.output}), "
                f"{self.size_bytes / 1e6:.2f} MB, {sum(self.ops.values())} ops"
                + (f"; float ops: {', '.join(floats)}" if self.mode in ("int8", "qat") and floats
                   else ""))


def _postprocess_function(num_classes, nms):
    """A tf.function the converter replaces by the TFLite_Detection_PostProcess op.

    The converter recognises it by ``experimental_implements`` (the op name and its attributes,
    as a NameAttrList text proto) and rewrites the whole function into the custom op, so the body
    only has to give the outputs' shapes and types.
    """
    import tensorflow as tf

    sy, sx, sh, sw = (float(s) for s in nms.scale_factors)

    def attr(key, kind, value):
        return f'attr {{ key: "{key}" value {{ {kind}: {value} }} }}'

    implements = " ".join([
        f'name: "{POSTPROCESS_OP}"',
        attr("max_detections", "i", int(nms.max_detections)),
        attr("max_classes_per_detection", "i", int(nms.max_classes_per_detection)),
        attr("num_classes", "i", int(num_classes)),
        attr("nms_score_threshold", "f", format(float(nms.score_threshold), ".9g")),
        attr("nms_iou_threshold", "f", format(float(nms.iou_threshold), ".9g")),
        attr("y_scale", "f", format(sy, ".9g")),
        attr("x_scale", "f", format(sx, ".9g")),
        attr("h_scale", "f", format(sh, ".9g")),
        attr("w_scale", "f", format(sw, ".9g")),
        attr("use_regular_nms", "b", "true" if nms.use_regular_nms else "false"),
    ])
    k = int(nms.max_detections)

    @tf.function(experimental_implements=implements)
    def postprocess(box_encodings, class_scores, anchors):
        del box_encodings, class_scores, anchors
        return (tf.zeros([1, k, 4]), tf.zeros([1, k]), tf.zeros([1, k]), tf.zeros([1]))

    return postprocess


def serving_function(model, output="auto", anchors=None, nms=NMS()):
    """The function that is converted: one image [1, H, W, 3] -> a dict of named outputs."""
    import tensorflow as tf

    kind = model_kind(model)
    output = OUTPUTS[kind][0] if output == "auto" else output
    if output not in OUTPUTS[kind]:
        raise InputError(f"output {output!r} does not fit a {kind} ({model.name!r}); choose from "
                         f"{OUTPUTS[kind]}")
    if kind == "classifier" and output == "logits" and _ends_in_softmax(model):
        raise InputError(f"{model.name!r} ends in a softmax: it has no logits to export (build it "
                         "with classifier_activation=None, or export 'probabilities')")
    if kind == "detector" and output in ("detections", "tasks"):
        if anchors is None:
            from keras_mnv2.detection.ssdlite import model_anchors

            anchors = model_anchors(model)  # raises NoAnchorsError for a model without them
        anchors = np.asarray(anchors, np.float32)
        _, classes_output = _detector_outputs(
            {_strip(n): t for n, t in zip(model.output_names, model.outputs)}, model)
        num_anchors, num_logits = int(classes_output.shape[1]), int(classes_output.shape[2])
        if anchors.shape != (num_anchors, 4):
            raise InputError(f"anchors have shape {anchors.shape}, the model predicts for "
                             f"{num_anchors} anchors: expected ({num_anchors}, 4) (cy, cx, h, w)")
        postprocess = _postprocess_function(num_logits - 1, nms)

    def serve(image):
        with warnings.catch_warnings():  # Keras 3 warns when a [input] model gets a bare tensor
            warnings.simplefilter("ignore", UserWarning)
            outputs = model(image, training=False)
        if output == "raw" and kind != "detector":
            if isinstance(outputs, dict):
                return {_strip(k): v for k, v in outputs.items()}
            if isinstance(outputs, (list, tuple)):
                return {f"output_{i}": v for i, v in enumerate(outputs)}
            return {"output": outputs}
        if kind == "detector":
            boxes, logits = _detector_outputs(outputs, model)
            if output == "raw":
                return {"boxes": boxes, "classes": logits}
            if output == "tasks":
                return {"location": boxes, "score": tf.nn.softmax(logits, axis=-1)[..., 1:]}
            # Column 0 is background: the kernel skips it (label offset = 1).
            scores = tf.nn.softmax(logits, axis=-1)
            return dict(zip(DETECTION_OUTPUTS,
                            postprocess(boxes, scores, tf.constant(anchors))))
        if kind == "classifier":
            if output == "probabilities" and not _ends_in_softmax(model):
                outputs = tf.nn.softmax(outputs, axis=-1)
            return {output: outputs}
        if output == "mask":
            return {"mask": tf.argmax(outputs, axis=-1, output_type=tf.int32)}
        return {output: outputs}

    return serve, kind, output


# ----------------------------------------------------------------------------------------------
# Conversion


def _tf_variables(model):
    import tensorflow as tf

    return [v if isinstance(v, tf.Variable) else v.value for v in model.variables]


def _check_settings(model, mode, io_dtype, representative_data, quantizer="converter"):
    from keras_mnv2.frameworks import framework_of
    from keras_mnv2.deploy.qat import is_quantized

    framework_of(model)  # TypeError for anything but a Keras model
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    if io_dtype not in IO_DTYPES:
        raise InputError(f"io_dtype must be one of {IO_DTYPES}, got {io_dtype!r}")
    if io_dtype != "float32" and mode not in ("int8", "qat"):
        raise InputError(f"io_dtype={io_dtype!r} needs a full-integer model (mode 'int8' or "
                         f"'qat'); mode {mode!r} keeps float inputs and outputs")
    from keras_mnv2.deploy.keras_qat import is_keras_quantized, uncalibrated

    keras_qat = is_keras_quantized(model)
    quantized = is_quantized(model) or keras_qat
    if mode == "qat" and not quantized:
        raise InputError(
            f"mode 'qat' needs a quantization-aware tf_keras model (keras_mnv2.deploy.qat.quantize, "
            f"then qat_fit); {model.name!r} is a float model: use mode 'int8' for post-training "
            "quantization"
        )
    if mode == "qat":
        from keras_mnv2.deploy.qat import uncalibrated_inputs

        empty = uncalibrated(model) if keras_qat else uncalibrated_inputs(model)
        if empty:
            raise InputError(
                f"{model.name!r}: the input range of {', '.join(empty)} is empty (the QAT model "
                "was never trained nor calibrated, and would quantize every input to 0): run "
                "qat_fit, or quantize(..., calibration_data=images)"
            )
    if mode != "qat" and quantized:
        raise InputError(f"{model.name!r} is quantization-aware: it converts with mode 'qat' "
                         f"only, not {mode!r}")
    if mode == "int8" and representative_data is None:
        raise InputError(
            "mode 'int8' (full-integer post-training quantization) needs representative_data: "
            "about 100 training images (an array, a tf.data.Dataset or a generator function) to "
            "calibrate the activation ranges"
        )
    if mode == "qat" and representative_data is not None:
        raise InputError("mode 'qat' takes its activation ranges from quantization-aware "
                         "training; representative_data is for mode 'int8' only")
    if quantizer not in QUANTIZERS:
        raise InputError(f"quantizer must be one of {QUANTIZERS}, got {quantizer!r}")
    if quantizer == "litert" and (mode != "int8" or io_dtype != "float32"):
        raise InputError(f"quantizer='litert' quantizes mode 'int8' with float32 I/O, got "
                         f"mode={mode!r}, io_dtype={io_dtype!r}")


def _ops_at_fault(message):
    """The TF/TFL op names and the graph paths (model/layer/...) a converter error points at."""
    ops, where = [], []
    for op in re.findall(r"\b(?:tf|tfl)\.([A-Z][A-Za-z0-9_]+)\b", message):
        if op not in ops:
            ops.append(op)
    for path in re.findall(r'fused\["\w+:", "([^"@]+)@', message):
        if "/" in path and path not in where:
            where.append(path)
    return ops, where


def _input_shape(model, input_shape):
    shape = tuple(input_shape or model.input_shape[1:])
    if len(shape) != 3 or any(d is None for d in shape):
        raise InputError(f"export needs a static input shape (H, W, C); {model.name!r} has "
                         f"{tuple(model.input_shape[1:])}: pass input_shape=")
    return shape


def convert(model, mode="float32", representative_data=None, io_dtype="float32",
            output="auto", anchors=None, nms=NMS(), num_calibration_images=100,
            input_shape=None, quantizer="converter", memory_order=True):
    """Converts ``model`` to a TFLite flatbuffer (bytes): the package's one converter.

    ``export_tflite`` writes these bytes (with metadata added); the benchmarks and the memory
    measurements convert through it too, so that they measure what ships: projection BNs of
    split blocks folded, every mode, ``quantizer`` "converter" or "litert" (see
    ``export_tflite`` for the other arguments). ``memory_order=False`` keeps the converter's op
    order for a model with split-expansion blocks instead of ``memory.reorder_ops``' order (the
    shipped one), to measure what the reordering saves. ``output="raw"`` converts any Keras
    model with one image input [H, W, C] as it is (its outputs named ``output`` or by its
    output names).
    """
    return _convert(model, mode, representative_data, io_dtype, output, anchors, nms,
                    num_calibration_images, input_shape, quantizer, memory_order)[0]


def _convert(model, mode, representative_data, io_dtype, output, anchors, nms,
             num_calibration_images, input_shape, quantizer="converter", memory_order=True):
    """``convert``, returning (bytes, the output chosen for "auto")."""
    import contextlib
    import io

    import tensorflow as tf

    _check_settings(model, mode, io_dtype, representative_data, quantizer)
    if quantizer == "litert":
        content, output = _convert(model, "float32", None, io_dtype, output, anchors, nms,
                                   num_calibration_images, input_shape,
                                   memory_order=memory_order)
        calibration = calibration_images(representative_data, _input_shape(model, input_shape),
                                         num_calibration_images)
        try:
            return litert_quantize(content, calibration), output
        except ExportError:
            raise
        except Exception as err:
            raise ExportError(f"LiteRT Quantizer failed on {model.name!r}: {err}") from err
    shape = _input_shape(model, input_shape)
    if mode != "qat":
        from keras_mnv2.split import fold_projection_bn, foldable_blocks

        if foldable_blocks(model):
            model = fold_projection_bn(model)
    serve, kind, output = serving_function(model, output, anchors, nms)
    calibration = None
    if mode == "int8":
        calibration = calibration_images(representative_data, shape, num_calibration_images)

    setting = f"mode={mode!r}, io_dtype={io_dtype!r}, output={output!r}"
    with tempfile.TemporaryDirectory() as saved:
        module = tf.Module()
        module.weights = _tf_variables(model)
        module.serve = tf.function(serve, input_signature=[
            tf.TensorSpec([1, *shape], tf.float32, name="image")])
        with contextlib.redirect_stdout(io.StringIO()):
            tf.saved_model.save(module, saved, signatures={"serving_default": module.serve})
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        detections = kind == "detector" and output == "detections"
        if detections:
            converter.allow_custom_ops = True
        if mode != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if mode == "int8":
            converter.representative_dataset = lambda: ([x] for x in calibration)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io_dtype != "float32":
            converter.inference_input_type = getattr(tf, io_dtype)
            if output not in ("detections", "tasks", "mask"):  # float / int32 by design
                converter.inference_output_type = getattr(tf, io_dtype)
        try:
            content = converter.convert()
        except Exception as err:  # the converter raises ConverterError, ValueError, ...
            message = str(err)
            ops, where = _ops_at_fault(message)
            lines = "\n".join(line for line in message.splitlines() if line.strip())[:2000]
            raise ExportError(
                f"TFLite conversion of {model.name!r} failed ({setting})"
                + (f"; ops at fault: {', '.join(ops)}" if ops else "")
                + (f" (in {', '.join(where[:3])})" if where else "")
                + f"\nconverter: {lines}"
            ) from err
    if detections:
        from keras_mnv2.deploy.tflite import op_counts

        if POSTPROCESS_OP not in op_counts(content):
            raise ExportError(f"{model.name!r} ({setting}): the converter did not fuse the "
                              f"{POSTPROCESS_OP} function into the custom op")
    if memory_order and has_split_blocks(model):
        from keras_mnv2.deploy.memory import reorder_ops

        content = reorder_ops(content)
    return content, output


def has_split_blocks(model):
    """True when ``model`` (Keras 3, tf_keras or its QAT form, whose wrappers are named
    ``quant_<layer>``) has split-expansion blocks (``keras_mnv2.split``, paper section 5.1)."""
    from keras_mnv2.split import split_blocks

    return bool(split_blocks(model))


def _sample_image(shape, representative_data, limit=1):
    if representative_data is not None:
        return calibration_images(representative_data, shape, limit)[0]
    return np.random.RandomState(0).uniform(-1, 1, (1, *shape)).astype(np.float32)


def check_runs(path, image):
    """Loads a .tflite file with ai_edge_litert, runs it once on ``image`` [1, H, W, C] and
    returns the outputs; raises ExportError naming the failing node and op."""
    from keras_mnv2.deploy.tflite import run_signature

    try:
        outputs = run_signature(path, image)
    except Exception as err:
        message = str(err)
        node = re.search(r"Node number \d+ \(([^)]+)\) failed to \w+", message)
        detail = f"op {node.group(1)} fails" if node else "it fails"
        if node and "XNNPACK" in node.group(1).upper():
            try:
                run_signature(path, image, delegates=False)
                detail += " (the model runs without the XNNPACK delegate: XNNPACK rejects it)"
            except Exception as plain:
                found = re.search(r"Node number \d+ \(([^)]+)\) failed to \w+", str(plain))
                if found:
                    detail = f"op {found.group(1)} fails"
        raise ExportError(f"{path} does not run: {detail} ({message.strip()[:500]})") from err
    for name, value in outputs.items():
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise ExportError(f"{path}: output {name!r} holds NaN or infinite values")
    return outputs


def litert_quantize(float_content, calibration, signature="serving_default", input_name="image"):
    """A float32 TFLite flatbuffer quantized by LiteRT Quantizer (``ai_edge_quantizer``) with its
    static int8 recipe (int8 weights per channel, int8 activations per tensor, ranges from
    ``calibration``: images [1, H, W, C]); returns the quantized flatbuffer (bytes). Ops the
    recipe does not cover stay float (``keras_mnv2.deploy.tflite.float_ops`` lists them).

    The model's input and outputs stay float32, as with the converter's int8 and float32 I/O:
    the file quantizes its input and dequantizes its outputs itself. The bare recipe also
    quantizes the graph's input and outputs (its INPUT and OUTPUT entries): the input is then
    clipped to the calibration images' range, and SSDLite's float detection outputs go through
    int8 after ``TFLite_Detection_PostProcess``, so that class ids come back a fraction off the
    integer (a reader's int() takes the class below) and the count is capped at the largest
    one seen in calibration (AP50 18.3 against the converter's 88.1 on the embedded COCO
    model)."""
    import contextlib
    import io

    try:
        from ai_edge_quantizer import algorithm_manager, qtyping, quantizer as aeq, recipe
    except ImportError as err:  # pragma: no cover - a dependency in pyproject
        raise ExportError("quantizer='litert' needs the ai-edge-quantizer package") from err
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        q = aeq.Quantizer(bytearray(float_content), recipe.static_wi8_ai8())
        for io_op in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
            q.update_quantization_recipe(  # later entries win over the recipe's ".*" one
                regex=".*", operation_name=io_op,
                algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
        result = q.calibrate({signature: [{input_name: x} for x in calibration]})
        quantized = q.quantize(result, enable_progress_report=False).quantized_model
    return bytes(quantized)


def export_tflite(model, path, mode="float32", representative_data=None, io_dtype="float32",
                  output="auto", anchors=None, nms=NMS(), num_calibration_images=100,
                  input_shape=None, metadata="auto", labels=None, quantizer="converter"):
    """Converts ``model``, writes ``path`` once the file has loaded and run, returns a report.

    Args:
        model: a Keras 3 model (modes float32, float16, dynamic, int8) or a quantization-aware
            tf_keras model from ``keras_mnv2.deploy.qat.quantize`` (mode qat).
        path: the .tflite file to write.
        mode: one of ``MODES`` (see the module docstring).
        representative_data: calibration images for mode int8 (array, tf.data.Dataset or
            generator function; the first ``num_calibration_images`` are used).
        io_dtype: "float32", or "int8" / "uint8" for integer input and outputs (int8, qat).
        output: "auto" or one of ``OUTPUTS[model_kind(model)]``.
        anchors: SSDLite anchors [N, 4] (cy, cx, h, w); defaults to the model's own
            (``model.anchors``, or its SSDLite builder record).
        nms: ``NMS`` settings of the detection post-process op.
        input_shape: (H, W, C) for a model built without a static input size.
        metadata: "auto" writes TFLite metadata (``keras_mnv2.deploy.metadata``) where a Tasks
            runtime can consume the export and warns where none can (int8 input, DeepLab
            "mask", SSDLite "raw"); True writes it or refuses those; False writes none.
        labels: one class name per class column of the output (the detector's background
            first), written into the metadata; default the model's own (``model.labels``,
            e.g. a preset's), else "class 0", "class 1", ...
        quantizer: for mode int8, "converter" (the TFLite converter's post-training
            quantization) or "litert" (a float32 conversion quantized by LiteRT Quantizer's
            static int8 recipe on the same calibration images, ``litert_quantize``; float32
            I/O only).

    The file is written next to ``path`` first, loaded back with ai_edge_litert and run once
    (on the first calibration image, or a random one), and only then renamed to ``path``
    (``keras_mnv2.files.write_file``).
    Conversion and run failures raise ``ExportError`` naming the setting and the op at fault.
    """
    from keras_mnv2.deploy import metadata as tflite_metadata
    from keras_mnv2.deploy import tflite

    _check_settings(model, mode, io_dtype, representative_data, quantizer)
    kind = model_kind(model)
    if labels is None and metadata is not False:  # the model's own class names, if it has them
        from keras_mnv2.labels import for_metadata, model_labels

        labels = for_metadata(model_labels(model))
    tflite_metadata.check(model, kind, OUTPUTS[kind][0] if output == "auto" else output,
                          io_dtype, metadata, labels)  # before converting
    content, output = _convert(model, mode, representative_data, io_dtype, output, anchors, nms,
                               num_calibration_images, input_shape, quantizer)
    if anchors is None and kind == "detector":
        from keras_mnv2.detection.ssdlite import model_anchors

        try:  # the model's, for the metadata of a "tasks" export
            anchors = model_anchors(model)
        except NoAnchorsError:
            pass  # a "raw" export needs none
    content, parser_version = tflite_metadata.for_export(
        model, content, kind, output,
        io_dtype=io_dtype if mode in ("int8", "qat") else "float32", metadata=metadata,
        labels=labels, anchors=anchors, scale_factors=nms.scale_factors, input_shape=input_shape)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    shape = _input_shape(model, input_shape)
    staging = temporary_name(path)
    found = []

    def check():  # the written file, before it is renamed to ``path``
        check_runs(staging, _sample_image(shape, representative_data))
        interp = tflite.interpreter(staging)
        runner = interp.get_signature_runner()
        (input_name, input_detail), = runner.get_input_details().items()
        outputs = {name: (tuple(int(d) for d in detail["shape"]),
                          np.dtype(detail["dtype"]).name)
                   for name, detail in runner.get_output_details().items()}
        found.append(ExportReport(
            path=path, mode=mode, io_dtype=io_dtype,
            output=output,
            size_bytes=len(content),
            input=(input_name, tuple(int(d) for d in input_detail["shape"]),
                   np.dtype(input_detail["dtype"]).name),
            outputs=outputs, ops=tflite.op_counts(staging),
            float_ops=tuple(tflite.float_ops(staging)), metadata=parser_version,
        ))

    try:
        write_bytes(path, content, before_rename=check)
    except BaseException:
        if os.path.exists(staging):
            os.remove(staging)
        raise
    return found[0]
