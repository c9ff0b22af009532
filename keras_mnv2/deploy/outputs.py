"""What a model's outputs are, through the QAT wrappers: its kind (classifier, detector,
segmenter), its output names without the wrappers' marks, SSDLite's boxes and class logits, and
whether a classifier already ends in softmax. Read by ``export``, ``metadata`` and ``predict``.
"""


def model_kind(model):
    """"detector" (SSDLite's {"boxes", "classes"} outputs), "segmenter" (one 4-D output),
    "classifier" (one 2-D output) or "other"."""
    names = getattr(model, "output_names", None) or []
    outputs = model.outputs
    if len(outputs) == 2 and {_strip(n) for n in names} == {"boxes", "classes"}:
        return "detector"
    if len(outputs) == 1:
        rank = len(outputs[0].shape)
        if rank == 4:
            return "segmenter"
        if rank == 2:
            return "classifier"
    return "other"


def _strip(name):
    """An output's name without the QAT wrappers' marks (TFMOT's ``quant_<name>``, the Keras 3
    QAT output quantizer's ``<name>_quant``)."""
    name = name[len("quant_"):] if name.startswith("quant_") else name
    return name[:-len("_quant")] if name.endswith("_quant") else name


def _output_layer(model):
    layer = model.layers[-1]
    return getattr(layer, "layer", layer)  # a QAT wrapper's inner layer


def _activation_name(activation):
    """A layer config's activation as a name: TFMOT's wrapper replaces a Dense's activation by
    a ``QuantizeAwareActivation``, whose config holds the original one."""
    while isinstance(activation, dict):  # (a Keras 3 serialized function: config is its name)
        config = activation.get("config")
        activation = config.get("activation") if isinstance(config, dict) else config
    return activation


def _ends_in_softmax(model):
    layer = _output_layer(model)
    if type(layer).__name__ == "Softmax":
        return True
    return _activation_name(layer.get_config().get("activation")) == "softmax"


def _detector_outputs(outputs, model):
    if isinstance(outputs, dict):
        return outputs["boxes"] if "boxes" in outputs else outputs["quant_boxes"], \
            outputs["classes"] if "classes" in outputs else outputs["quant_classes"]
    names = [_strip(n) for n in model.output_names]
    return outputs[names.index("boxes")], outputs[names.index("classes")]
