"""Object detection app: COCO/VOC/CSV data, box geometry (models to come)."""
