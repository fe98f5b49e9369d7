"""The ``detect`` task: boxes and classes of the defects in an image (NEU-DET; YOLOv4 pruning paper).

Training half (PyTorch): ``task``, ``dataset`` (decoded images and boxes), ``augment`` (box-moving augmentation,
mosaic), ``anchors`` (K-means++ with 1 - IoU), ``loss`` (YOLOv5-style loss and its distillation). Inference half
(NumPy only): ``runtime``, ``decode`` (anchors, NMS), ``metrics`` (COCO mAP), ``report``, ``readers`` and ``layouts``
(Pascal VOC, YOLO txt, COCO JSON). The detector families stay in :mod:`defectlite.models` (``yolo``, ``yolov4``).
Recipes: ``recipes/``.
"""
