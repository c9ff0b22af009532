"""keras_mnv2: MobileNetV2 for Keras 3, from the classifier to the device."""

from keras_mnv2.blocks import inverted_residual, make_divisible
from keras_mnv2.detection import SSDLite, ssdlite_anchors
from keras_mnv2.imagenet import decode_predictions, preprocess_input
from keras_mnv2.mobilenet_v2 import MobileNetV2, block_plan, feature_extractor
from keras_mnv2.profiler import Profile, count_madds, profile
from keras_mnv2.segmentation import (
    DeepLabV3,
    MeanIoU,
    SegmentationLoss,
    confusion_matrix,
    deeplab_atrous_rates,
    iou_from_confusion,
)
from keras_mnv2.split import split_expansion
from keras_mnv2.weights import copy_weights
from keras_mnv2 import presets  # a module one can call: keras_mnv2.presets() is the table
from keras_mnv2.inference import load_image, predict

# keras-hub's convention: the builders load official models by name (keras_mnv2.presets).
MobileNetV2.from_preset = presets.loader("classifier")
SSDLite.from_preset = presets.loader("ssdlite")
DeepLabV3.from_preset = presets.loader("deeplab")

__version__ = "0.1.0"

__all__ = [
    "DeepLabV3",
    "MeanIoU",
    "MobileNetV2",
    "Profile",
    "SSDLite",
    "SegmentationLoss",
    "block_plan",
    "confusion_matrix",
    "copy_weights",
    "count_madds",
    "decode_predictions",
    "deeplab_atrous_rates",
    "feature_extractor",
    "inverted_residual",
    "iou_from_confusion",
    "load_image",
    "make_divisible",
    "predict",
    "presets",
    "preprocess_input",
    "profile",
    "split_expansion",
    "ssdlite_anchors",
]
