"""bitsandbytes' 4-bit state, both ways: a qviz NF4/FP4 result as ``(packed, QuantState)`` and back.

What bitsandbytes keeps of a 4-bit weight (``bitsandbytes.functional.QuantState``,
``Params4bit``), and where it lives in a :class:`~qviz.result.QuantResult`
(:mod:`qviz.formats.bnb4`)::

    packed            uint8 (ceil(numel / 2), 1)  codes, first weight in the high nibble   result.codes
    absmax            float32 (n_blocks,)         or uint8 codes with double quant         scales | stored["absmax"]
    quant_map         float32 (16,)               the table                                codebook
    blocksize, quant_type, shape, dtype                                                    group_size, method, shape
    nested_absmax     float32 (ceil(n_blocks / 256),)                                      stored["absmax2"]
    nested_quant_map  float32 (256,)              the 8-bit dynamic map                    DYNAMIC_MAP | stored["code2"]
    nested_offset     float                                                                stored["offset"]
    nested_blocksize  256, nested_dtype "float32"

:func:`to_bnb` builds a real ``QuantState`` (bitsandbytes and torch are
imported on first use); ``state.as_dict(packed=True)`` is then the form a
state dict holds (``weight.absmax``, ``weight.quant_map``,
``weight.quant_state.bitsandbytes__nf4`` …), which
``Params4bit.from_prequantized`` and transformers read. :func:`from_bnb`
reads a ``QuantState`` or either dict form (the packed item is JSON bytes,
parsed here: nothing is unpickled) and needs neither package for a dict of
numpy arrays.
"""
from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from qviz.formats.bnb4 import (BLOCKSIZES, DQ_BLOCKSIZE, DYNAMIC_MAP, TABLES, dequantize_absmax,
                               pack_4bit, unpack_4bit)
from qviz.result import QuantResult

__all__ = ["to_bnb", "from_bnb", "DTYPES"]

#: the weight dtypes a bitsandbytes 4-bit state may name (its ``dtype``: what it decodes to)
DTYPES = ("float32", "float16", "bfloat16")


def _layout_error(shape, blocksize) -> str:
    return (f"a weight of shape {tuple(shape)} in blocks of {blocksize}: bitsandbytes' blocks run over the "
            f"flattened weight and would cross rows, which a QuantResult's per-row blocks cannot hold")


def to_bnb(result: QuantResult, *, dtype: str = "float32"):
    """A qviz ``"nf4"``/``"fp4"`` result as bitsandbytes' packed weight and ``QuantState``.

    Parameters
    ----------
    result : QuantResult
        From ``qviz.quantize(w, "nf4" | "fp4", ...)`` (or :func:`from_bnb`),
        with a ``group_size`` bitsandbytes accepts (32 … 4096) that divides
        ``n_cols`` (or one row).
    dtype : {"float32", "float16", "bfloat16"}
        The state's ``dtype``: what bitsandbytes decodes to and ``Linear4bit``
        computes in.

    Returns
    -------
    packed : torch.Tensor, shape (ceil(numel / 2), 1), uint8
    state : bitsandbytes.functional.QuantState
        ``dequantize_4bit(packed, state)`` (float32) equals ``result.dequantize()``.

    Raises
    ------
    ValueError
        Another method, a blocksize bitsandbytes refuses, blocks that would
        cross rows, or an unknown ``dtype``.
    ImportError
        Without bitsandbytes.
    """
    import torch

    try:
        from bitsandbytes.functional import QuantState
    except ImportError as e:
        raise ImportError("to_bnb builds a bitsandbytes QuantState: pip install bitsandbytes "
                          "(its CPU backend is enough); from_bnb reads a state without it") from e

    if not isinstance(result, QuantResult) or result.method not in TABLES:
        got = getattr(result, "method", type(result).__name__)
        raise ValueError(f"to_bnb takes an 'nf4' or 'fp4' QuantResult, got {got!r}; quantize with "
                         f"qviz.quantize(w, 'nf4') or 'fp4'")
    n_rows, n_cols = result.shape
    g = result.group_size
    if g not in BLOCKSIZES:
        raise ValueError(f"group_size={g}: bitsandbytes' blocksize is one of "
                         f"{', '.join(map(str, BLOCKSIZES))}; quantize with one of them")
    if n_cols % g and n_rows > 1:
        raise ValueError(_layout_error(result.shape, g) + f"; use a group_size that divides {n_cols}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {', '.join(map(repr, DTYPES))}")
    codes = result.codes.reshape(-1)
    if codes.size % 2:
        codes = np.append(codes, np.uint8(0))
    packed = torch.from_numpy(((codes[0::2] << 4) | codes[1::2]).astype(np.uint8)).unsqueeze(1)
    common = dict(shape=torch.Size(result.shape), dtype=getattr(torch, dtype), blocksize=g,
                  code=torch.from_numpy(TABLES[result.method].copy()), quant_type=result.method)
    stored = result.stored
    if "absmax2" in stored:
        code2 = stored.get("code2", DYNAMIC_MAP)
        state2 = QuantState(absmax=torch.from_numpy(np.array(stored["absmax2"], np.float32)),
                            code=torch.from_numpy(np.array(code2, np.float32)),
                            blocksize=DQ_BLOCKSIZE, dtype=torch.float32)
        state = QuantState(absmax=torch.from_numpy(np.array(stored["absmax"], np.uint8).reshape(-1)),
                           offset=torch.tensor(float(np.asarray(stored["offset"]).reshape(-1)[0]),
                                               dtype=torch.float32),
                           state2=state2, **common)
    else:
        state = QuantState(absmax=torch.from_numpy(np.array(result.scales, np.float32).reshape(-1)),
                           **common)
    return packed, state


def _numpy(value, name: str) -> np.ndarray:
    """A tensor or array as numpy, never through pickle."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a tensor or numpy array, got {type(value).__name__}")
    return value


def _state_dict(state) -> dict:
    """The unpacked fields of a QuantState or of either dict form (prefixes stripped)."""
    if isinstance(state, Mapping):
        fields = {}
        for key, value in state.items():
            short = str(key).split(".")[-1]
            if short.startswith("bitsandbytes__"):  # the packed JSON item
                raw = _numpy(value, key)
                if raw.dtype != np.uint8 or raw.ndim != 1:
                    raise ValueError(f"{key} must be the uint8 bytes of bitsandbytes' JSON item, "
                                     f"got {raw.dtype} of shape {raw.shape}")
                try:
                    extra = json.loads(raw.tobytes().decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise ValueError(f"{key} is not bitsandbytes' JSON item: {e}") from None
                if not isinstance(extra, dict):
                    raise ValueError(f"{key} holds {type(extra).__name__}, not bitsandbytes' dict")
                fields.update(extra)
            elif short != "weight":
                fields[short] = value
        return fields
    fields = {"quant_type": state.quant_type, "absmax": state.absmax, "blocksize": state.blocksize,
              "shape": None if state.shape is None else tuple(state.shape),
              "dtype": str(state.dtype).replace("torch.", "")}
    if getattr(state, "nested", False):
        fields.update(nested_absmax=state.state2.absmax, nested_blocksize=state.state2.blocksize,
                      nested_quant_map=state.state2.code, nested_offset=float(state.offset))
    return fields


def from_bnb(packed, state, *, shape: tuple[int, int] | None = None) -> QuantResult:
    """A bitsandbytes 4-bit weight as a QuantResult (the ``"nf4"``/``"fp4"`` of :mod:`qviz.formats.bnb4`).

    Parameters
    ----------
    packed : torch.Tensor or ndarray, uint8, ceil(numel / 2) bytes
        ``Params4bit.data`` (any shape; other storage dtypes are read as their bytes).
    state : QuantState or Mapping
        A ``QuantState``, ``state.as_dict()``, or ``as_dict(packed=True)`` /
        the ``weight.*`` items of a state dict (tensors or numpy arrays).
    shape : tuple of int, optional
        (n_rows, n_cols) instead of the state's shape: e.g. ``(1, numel)`` to
        read a weight whose blocks cross rows as one row.

    Returns
    -------
    QuantResult
        ``method`` the state's ``quant_type``, ``group_size`` its blocksize;
        ``scales`` the float32 absmax bitsandbytes decodes with (double
        quantization decoded as it does); ``stored`` the 8-bit absmax,
        ``absmax2`` and ``offset`` with double quantization (and ``code2``
        when the state's 8-bit map is not the standard one), else ``packed``
        the per-row bytes; ``info["dtype"]`` the state's dtype.

    Raises
    ------
    ValueError
        A missing or malformed field (named), sizes that do not agree, or
        blocks that cross rows (pass ``shape=(1, numel)``).
    """
    f = _state_dict(state)
    for key in ("quant_type", "absmax", "blocksize", "shape"):
        if key not in f or (key != "shape" and f[key] is None):
            raise ValueError(f"the bitsandbytes state has no {key!r}; it needs quant_type, absmax, "
                             f"blocksize and shape")
    quant_type = f["quant_type"]
    if quant_type not in TABLES:
        raise ValueError(f"quant_type={quant_type!r}: qviz reads bitsandbytes' 'nf4' and 'fp4'")
    g = f["blocksize"]
    if isinstance(g, bool) or not isinstance(g, (int, np.integer)) or int(g) not in BLOCKSIZES:
        raise ValueError(f"blocksize={g!r}: bitsandbytes writes one of {', '.join(map(str, BLOCKSIZES))}")
    g = int(g)
    dims = tuple(f["shape"]) if shape is None else tuple(shape)
    if f["shape"] is None and shape is None:
        raise ValueError("the state has no shape: pass shape=(n_rows, n_cols)")
    if len(dims) == 1:
        dims = (1, dims[0])
    if len(dims) != 2 or any(not isinstance(d, (int, np.integer)) or d <= 0 for d in dims):
        raise ValueError(f"shape={dims}: qviz reads 2-D weights (n_rows, n_cols) of positive sizes")
    n_rows, n_cols = (int(d) for d in dims)
    numel = n_rows * n_cols
    if f["shape"] is not None and int(np.prod(f["shape"])) != numel:
        raise ValueError(f"shape={dims} has {numel} weights, the state's {tuple(f['shape'])} "
                         f"has {int(np.prod(f['shape']))}")
    if n_cols % g and n_rows > 1:
        raise ValueError(_layout_error(dims, g) + f"; pass shape=(1, {numel}) to read it as one row")
    raw = _numpy(packed, "packed")
    raw = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if raw.size != -(-numel // 2):
        raise ValueError(f"packed has {raw.size} bytes; {numel} weights take {-(-numel // 2)}")
    codes = unpack_4bit(raw, numel).reshape(n_rows, n_cols)
    n_blocks = -(-numel // g)
    n_groups = -(-n_cols // g)
    absmax = _numpy(f["absmax"], "absmax").reshape(-1)
    if absmax.size != n_blocks:
        raise ValueError(f"absmax has {absmax.size} values; {numel} weights in blocks of {g} need {n_blocks}")
    table = TABLES[quant_type].copy()
    info = {"dtype": str(f.get("dtype", "float32")), "source": "bitsandbytes",
            "double_quant": "nested_absmax" in f, "absmax": "float32",
            "layout": "bitsandbytes"}
    if "nested_absmax" not in f:
        if absmax.dtype.kind != "f" or not np.isfinite(absmax).all():
            raise ValueError(f"absmax ({absmax.dtype}) must be finite floats without nested_absmax "
                             f"(bitsandbytes writes float32)")
        scales = absmax.astype(np.float32).reshape(n_rows, n_groups)
        return QuantResult(quant_type, (n_rows, n_cols), 4, g, codes, scales, codebook=table,
                           packed=pack_4bit(codes, scales, "float32"), info=info)
    if absmax.dtype != np.uint8:
        raise ValueError(f"absmax has dtype {absmax.dtype}; with nested_absmax it holds uint8 codes")
    if int(f.get("nested_blocksize", DQ_BLOCKSIZE)) != DQ_BLOCKSIZE:
        raise ValueError(f"nested_blocksize={f['nested_blocksize']}: quantize_4bit writes {DQ_BLOCKSIZE}")
    absmax2 = _numpy(f["nested_absmax"], "nested_absmax").reshape(-1)
    if absmax2.dtype != np.float32 or absmax2.size != -(-n_blocks // DQ_BLOCKSIZE):
        raise ValueError(f"nested_absmax is {absmax2.dtype} ({absmax2.size},); {n_blocks} blocks need "
                         f"float32 ({-(-n_blocks // DQ_BLOCKSIZE)},)")
    code2 = _numpy(f.get("nested_quant_map", DYNAMIC_MAP), "nested_quant_map").reshape(-1)
    if code2.dtype != np.float32 or code2.size != 256:
        raise ValueError(f"nested_quant_map is {code2.dtype} ({code2.size},), not float32 (256,)")
    try:
        offset = np.float32(float(f["nested_offset"]))
    except (KeyError, TypeError, ValueError):
        raise ValueError("the nested state needs a number nested_offset") from None
    if not (np.isfinite(offset) and np.isfinite(absmax2).all() and np.isfinite(code2).all()):
        raise ValueError("nested_offset, nested_absmax and nested_quant_map must be finite")
    scales = dequantize_absmax(absmax, absmax2, offset, code2).reshape(n_rows, n_groups)
    stored = {"absmax": absmax.reshape(n_rows, n_groups).copy(), "absmax2": absmax2.copy(),
              "offset": np.array([offset], np.float32)}
    if not np.array_equal(code2.view(np.uint32), DYNAMIC_MAP.view(np.uint32)):
        stored["code2"] = code2.copy()
    return QuantResult(quant_type, (n_rows, n_cols), 4, g, codes, scales, codebook=table,
                       stored=stored, info=info)
