"""Whole models: quantize every layer of a torch model (:func:`quantize_model`), QuantLinear.

Imported on demand (``from qviz.models import quantize_model``); torch loads
when a function runs.
"""
from qviz.models.quantize_model import quantize_model

__all__ = ["quantize_model"]
