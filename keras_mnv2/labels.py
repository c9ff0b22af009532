"""Class names that travel with a model: one name per class column of its output.

A model carries them as ``model.labels`` (a tuple; the detector's starts with "background", as
its class logits do), kept in its ``.keras`` record (``keras_mnv2.record``) and read by
``keras_mnv2.predict``, ``decode_predictions(..., labels=model)``, ``keras-mnv2 predict`` and
the TFLite metadata of ``export_tflite``. The official models' sets are here: the Object
Detection API's COCO ids, PASCAL VOC's 21 classes and ImageNet's 1000 (1001 with TF-slim's
background first).
"""

# COCO category ids 1..90 of the Object Detection API label map (mscoco_label_map): 80 named,
# 10 unused ids. ssdlite_mobilenet_v2_coco predicts 91 scores: 0 is background, k is COCO id k.
COCO_LABELS = dict(enumerate((
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", None, "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", None, "backpack",
    "umbrella", None, None, "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", None, "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", None, "dining table", None, None, "toilet",
    None, "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", None, "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush"), start=1))
# PASCAL VOC 2012 segmentation classes, as the official DeepLab models number them.
VOC_LABELS = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
              "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
              "pottedplant", "sheep", "sofa", "train", "tvmonitor")
# What an unused COCO id is called where a name is required (the TFLite examples' label map).
UNUSED = "???"


def coco_label(index):
    """The name of class ``index`` of an official COCO detector's 91 scores ("background" for
    0, None for the 10 ids COCO leaves unused)."""
    if not 0 <= int(index) <= 90:
        raise ValueError(f"COCO class index must be in [0, 90], got {index}")
    return "background" if int(index) == 0 else COCO_LABELS[int(index)]


def voc_label(index):
    """The name of class ``index`` (0..20) of an official PASCAL VOC DeepLab model."""
    if not 0 <= int(index) < len(VOC_LABELS):
        raise ValueError(f"VOC class index must be in [0, 20], got {index}")
    return VOC_LABELS[int(index)]


def coco_labels():
    """The 91 class columns of an official COCO detector: background, then COCO ids 1..90."""
    return tuple(coco_label(i) for i in range(91))


def voc_labels():
    """The 21 classes of an official PASCAL VOC DeepLab model."""
    return VOC_LABELS


def imagenet_labels(background=False):
    """The 1000 ImageNet class names in keras.applications order (``imagenet.class_index``),
    with TF-slim's "background" first for ``background=True`` (1001 columns)."""
    from keras_mnv2.imagenet import class_index

    index = class_index()
    names = tuple(index[i][1] for i in range(1000))
    return ("background",) + names if background else names


def official_labels(dataset, columns):
    """The names of ``dataset`` ("imagenet", "coco", "voc") for a model with ``columns`` class
    columns, or None where they do not fit."""
    if dataset == "imagenet" and columns in (1000, 1001):
        return imagenet_labels(background=columns == 1001)
    if dataset == "coco" and columns == 91:
        return coco_labels()
    if dataset == "voc" and columns == len(VOC_LABELS):
        return voc_labels()
    return None


def dataset_for(kind, columns):
    """The official dataset a model of ``kind`` ("classifier", "ssdlite", "deeplab") with
    ``columns`` class columns was trained on, judged by its class count alone, or None."""
    return {("classifier", 1000): "imagenet", ("classifier", 1001): "imagenet",
            ("ssdlite", 91): "coco", ("deeplab", 21): "voc"}.get((kind, int(columns)))


def class_columns(model):
    """The number of class columns of a keras_mnv2 model's output (the detector's logits
    include background)."""
    outputs = model.output
    if isinstance(outputs, dict):
        return int(outputs["classes"].shape[-1])
    return int(outputs.shape[-1])


def model_labels(model):
    """``model.labels`` as a tuple, or None."""
    found = getattr(model, "labels", None)
    return None if found is None else tuple(found)


def name(labels, index):
    """The name of class column ``index`` (``class <index>`` without one)."""
    if labels is not None and 0 <= index < len(labels) and labels[index] is not None:
        return labels[index]
    return f"class {index}"


def for_metadata(labels):
    """``labels`` as the non-empty strings a TFLite label file needs (unused ids: "???")."""
    return None if labels is None else [UNUSED if n is None else str(n) for n in labels]
