"""A model on photos, with the class names it carries: ``load_image`` and ``predict``.

    model = keras_mnv2.SSDLite.from_preset("ssdlite_mobilenet_v2_coco")
    image = keras_mnv2.load_image("street.jpg")
    keras_mnv2.predict(model, image)  # {"detections": [{"box", "index", "name", "score"}, ...]}

Images are resized to the model's input (a bilinear stretch) and scaled to [-1, 1], as the
official models were trained. Names come from ``model.labels`` (``keras_mnv2.labels``); a
detector decodes with its own anchors (``model.anchors``, or its builder record's).
"""

import numpy as np

from keras_mnv2.errors import InputError, MissingFileError
from keras_mnv2.labels import model_labels, name


def load_image(path):
    """RGB uint8 [H, W, 3] of an image file; an error naming the file it cannot read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), np.uint8)
    except FileNotFoundError:
        raise MissingFileError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"cannot read the image {path}: {err}") from None


def model_input(pixels, size):
    """Pixels resized (bilinear stretch) to ``size`` (H, W), scaled to [-1, 1]: [1, H, W, 3]."""
    from PIL import Image

    resized = Image.fromarray(pixels).resize((int(size[1]), int(size[0])), Image.BILINEAR)
    return (np.asarray(resized, np.float32)[None] - 127.5) / 127.5


def softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def top(scores, labels, k=5):
    """The ``k`` best classes: [{"index", "name", "score"}], best first."""
    order = np.argsort(-scores)[:k]
    return [{"index": int(i), "name": name(labels, int(i)), "score": float(scores[i])}
            for i in order]


def task(model):
    """What ``model`` outputs: "classifier", "detector" or "segmenter"."""
    from keras_mnv2.deploy.outputs import model_kind

    kind = model_kind(model)
    if kind == "other":
        raise InputError(f"{model.name!r} is not a classifier, an SSDLite or a segmenter")
    return kind


def predict(model, images, min_score=0.3, labels=None):
    """``model`` on one image (uint8 RGB [H, W, 3] or a file path) or a list of them: a result
    per image, with class names from ``labels`` (default ``model.labels``).

    Classifier: ``{"top5": [{"index", "name", "score"}]}`` (softmax scores). Detector:
    ``{"detections": [{"box": [xmin, ymin, xmax, ymax] in the image's pixels, "index" (0-based
    object class), "name", "score"}]}``, score >= ``min_score``, decoded with the model's own
    anchors. Segmenter: ``{"mask": uint8 [H, W] class map at the image's size, "classes":
    {name: fraction of the pixels}}``.
    """
    import keras

    single = isinstance(images, (str, np.ndarray)) or hasattr(images, "__fspath__")
    batch = [images] if single else list(images)
    kind = task(model)
    shape = model.input_shape[1:3]
    if None in shape:
        raise InputError(f"{model.name!r} has no static input size {tuple(shape)}")
    labels = model_labels(model) if labels is None else tuple(labels)
    anchors = None
    if kind == "detector":
        from keras_mnv2.detection.ssdlite import model_anchors

        anchors = model_anchors(model)
        if anchors is None:
            raise InputError(f"{model.name!r} carries no anchors to decode its boxes with")
    results = []
    for image in batch:
        pixels = load_image(image) if not isinstance(image, np.ndarray) else image
        x = keras.tree.pack_sequence_as(model.input, [model_input(pixels, shape)])
        outputs = model(x, training=False)  # (x in the input's structure: a list or not)
        results.append(_result(model, kind, outputs, pixels.shape[:2], labels, anchors,
                               min_score))
    return results[0] if single else results


def _result(model, kind, outputs, size, labels, anchors, min_score):
    import keras

    h, w = size
    if kind == "classifier":
        from keras_mnv2.deploy.outputs import _ends_in_softmax

        scores = keras.ops.convert_to_numpy(outputs)[0]
        return {"top5": top(scores if _ends_in_softmax(model) else softmax(scores), labels)}
    if kind == "detector":
        from keras_mnv2.detection.postprocess import decode_detections

        found = {k: keras.ops.convert_to_numpy(v) for k, v in decode_detections(
            outputs["boxes"], outputs["classes"], anchors, score_threshold=min_score).items()}
        n = int(found["num_detections"][0])
        return {"detections": [
            {"box": [float(xmin * w), float(ymin * h), float(xmax * w), float(ymax * h)],
             "index": int(label) - 1, "name": name(labels, int(label)), "score": float(score)}
            for (ymin, xmin, ymax, xmax), score, label in zip(
                found["boxes"][0, :n], found["scores"][0, :n], found["classes"][0, :n])]}
    from PIL import Image

    mask = keras.ops.convert_to_numpy(outputs)[0].argmax(-1).astype(np.uint8)
    mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST))
    return {"mask": mask, "classes": {name(labels, int(c)): round(float(np.mean(mask == c)), 4)
                                      for c in np.unique(mask)}}
