"""Input pipelines that read the real on-disk formats: COCO, PASCAL VOC, ImageNet."""
