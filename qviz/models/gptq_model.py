"""GPTQ over a whole model, block by block, as the reference's ``llama_sequential``.

IST-DASLab/gptq ``llama.py``: the calibration batches run up to the first
transformer block; then block after block, the block's Linears are quantized
from the Hessians of their inputs and the block's *quantized* output becomes
the next block's input. With ``true_sequential`` (default, AutoGPTQ's default)
the Linears of a block go in stages of layers that read the same input
(q,k,v → o → gate,up → down, :func:`qviz.models.runner.stages`), each stage
calibrated after the ones before it are quantized.

The GPTQ method record names :func:`quantize_blocks` as its driver;
:func:`qviz.models.quantize_model.quantize_model` calls it.
"""
from __future__ import annotations

from qviz.io import calib as calibration
from qviz.models.runner import Block, driver_options, quantize_layer, run_blocks, stages
from qviz.registry import Method
from qviz.result import QuantResult

__all__ = ["quantize_blocks"]


def quantize_blocks(model, method: Method, batches, targets: dict, options: dict, *,
                    progress: bool = True) -> dict[str, QuantResult]:
    """GPTQ block by block, a :class:`~qviz.models.runner.Driver` (parameters and return value there).

    ``method`` is the ``"gptq"`` record: its ``hessian`` option receives each
    layer's Hessian. ``options`` are GPTQ's own (``bits``, ``group_size``,
    ``act_order`` …, not ``calib`` or ``hessian``) and ``true_sequential``
    (default True).
    """
    opts, extra = driver_options(method, options, supplied=(method.role("calibration"), "hessian"),
                                 true_sequential=True)
    results: dict[str, QuantResult] = {}

    def quantize_block(block: Block, linears: dict):
        for stage in stages(block, linears, extra["true_sequential"]):
            acc = {n: calibration.Accumulator(linears[n].in_features, 0, None) for n in stage}
            block.run(hooks={linears[n]: acc[n].add for n in stage})
            for n in stage:
                results[n] = quantize_layer(linears[n], method, dict(opts, hessian=acc[n].stats(n).hessian), n)
        return block.run()  # the quantized block's output feeds the next block

    def quantize_outside(name, module, stats):
        results[name] = quantize_layer(module, method, dict(opts, hessian=stats.hessian), name)

    run_blocks(model, batches, targets, quantize_block, quantize_outside,
               desc=f"{method.label} blocks", progress=progress)
    return results
