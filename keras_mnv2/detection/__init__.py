"""SSDLite (paper section 6.2): the model, anchors, box coding, matching, losses, post-processing."""

from keras_mnv2.detection.ssdlite import SSDLite, detector, ssdlite_anchors

__all__ = ["SSDLite", "detector", "ssdlite_anchors"]
