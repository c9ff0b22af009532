"""SSDLite (paper section 6.2): the model, anchors, box coding, matching, losses, post-processing."""

from keras_mnv2.detection.losses import SSDBoxLoss, SSDClassLoss  # registered for .keras loading
from keras_mnv2.detection.ssdlite import SSDLite, detector, ssdlite_anchors

__all__ = ["SSDBoxLoss", "SSDClassLoss", "SSDLite", "detector", "ssdlite_anchors"]
