"""The ``classify`` task: one label per image (NEU-CLS, casting, TIG weld pools).

Training half (PyTorch): ``task`` (data, objectives, calibration, report figures), ``objectives`` (cross-entropy,
logit distillation), ``ensemble`` (mean / focal ensembles, pseudo-labels), ``temperature`` (folding the calibration
temperature into the model), ``explain`` (Grad-CAM figures of the report). Inference half (NumPy only): ``runtime``
(softmax, labels, the reject threshold, scoring), ``metrics``, ``calibration``, ``report``. Recipes: ``recipes/``.
"""
