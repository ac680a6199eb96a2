"""Whole models: quantize every layer of a torch model (:func:`quantize_model`), QuantLinear.

Imported on demand (``from qviz.models import quantize_model``); torch loads
when a function runs. :mod:`~qviz.models.runner` runs a model block by block,
:mod:`~qviz.models.gptq_model` and :mod:`~qviz.models.awq_model` are the
calibrated methods' drivers, :mod:`~qviz.models.architectures` says which op
feeds which Linears.
"""
from qviz.models.quantize_model import quantize_model

__all__ = ["quantize_model"]
