"""Mobile DeepLabv3 (paper section 6.3): the model, its loss and its metrics."""

from keras_mnv2.segmentation.deeplab import DeepLabV3, deeplab_atrous_rates
from keras_mnv2.segmentation.loss import IGNORE_LABEL, SegmentationLoss
from keras_mnv2.segmentation.metrics import MeanIoU, confusion_matrix, iou_from_confusion

__all__ = ["IGNORE_LABEL", "DeepLabV3", "MeanIoU", "SegmentationLoss", "confusion_matrix",
           "deeplab_atrous_rates", "iou_from_confusion"]
