"""Fused int4 dequantize-and-matmul for small batches (1-16 rows), in Triton.

``y = x @ W.T`` where ``W[n, k] = (q[k, n] - z[g, n]) * s[g, n]`` is never
written out: each program reads a tile of packed words once, unpacks the eight
nibbles of each word in registers and multiplies them into its accumulator.
At batch 1 the work is a matrix-vector product, so its time is the time to
read the weights: int4 codes are a quarter of fp16's bytes.

Storage, as GPTQ checkpoints (AutoGPTQ / exllama) hold it::

    qweight : int32, (K / 8, N)   word [i, n] holds q[8i .. 8i+7, n], code 8i+j in bits 4j..4j+3
    qzeros  : int32, (G, N / 8)   word [g, i] holds z[g, 8i .. 8i+7], same nibble order
    scales  : fp16/fp32, (G, N)
    g_idx   : int32, (K,) or None group of each input column (act-order); None: k // group_size

The zero points are the stored values themselves (not "zero - 1" as in
AutoGPTQ's old v1 files).

Two paths inside one kernel, chosen by constants at compile time:

* **factored** (no g_idx, ``group_size`` a multiple of ``BLOCK_K``): one group
  per K tile, so ``Σ_k x_k (q_kn - z_n) s_n = s_n Σ_k x_k (q_kn - z_n)``: the
  integers ``q - z`` enter the products exactly and each tile is scaled once;
* **general** (g_idx, small groups): every weight is dequantized, then multiplied.

A nibble becomes a float without an int-to-float conversion (a quarter-rate
instruction): ``q | 0x4B000000`` read as float32 is ``2**23 + q``, and
subtracting ``2**23 + z`` leaves ``q - z`` exactly. ``BLOCK_M == 1``
multiplies and adds on the CUDA cores into a (BLOCK_K/8, BLOCK_N) accumulator
summed once at the end (a GEMV); ``BLOCK_M == 16`` uses ``tl.dot`` (tensor cores). ``SPLIT_K > 1`` splits the K loop over programs
that add their partial sums atomically into a float32 buffer (more programs in
flight for narrow layers).

Triton is imported here at module level but guarded: this module imports
cleanly without Triton (``available()`` is then False), and nothing in
``qviz`` imports it unless a CUDA forward asks for the fused path. On a CPU,
setting ``TRITON_INTERPRET=1`` *before* this module is first imported runs the
same kernel in Triton's interpreter (the tests do that in a subprocess).
"""
from __future__ import annotations

import logging
import os
from typing import NamedTuple

import torch

try:  # Triton ships with CUDA builds of torch; CPU builds usually lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

__all__ = ["Config", "available", "matmul_int4", "matmul_int4_unchecked", "tuned_configs"]

log = logging.getLogger(__name__)

#: rows at most for which the fused kernel is meant (QuantLinear falls back above)
MAX_ROWS = 16


class Config(NamedTuple):
    """One launch configuration of the kernel."""

    block_m: int  # 1: GEMV on CUDA cores; 16: tl.dot
    block_n: int
    block_k: int  # a multiple of 8 (whole words); >= 128 when block_m > 1
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3


#: candidates the tuner times once per (rows bucket, N, K, group, g_idx, dtype)
GEMV_CONFIGS = [
    Config(1, 16, 128, 1, 2), Config(1, 32, 128, 1, 4), Config(1, 64, 128, 1, 4),
    Config(1, 32, 256, 1, 4), Config(1, 32, 128, 2, 4), Config(1, 64, 128, 4, 4),
    Config(1, 128, 128, 8, 4), Config(1, 64, 128, 8, 4),
]
DOT_CONFIGS = [
    Config(16, 32, 128, 1, 4), Config(16, 64, 128, 1, 4), Config(16, 128, 128, 1, 4),
    Config(16, 32, 128, 2, 4), Config(16, 64, 128, 4, 4), Config(16, 128, 128, 4, 4),
]

_TUNED: dict[tuple, Config] = {}


def available() -> bool:
    """True when Triton imports and CUDA is usable (the fused path can run)."""
    return triton is not None and torch.cuda.is_available()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


if triton is not None:
    #: 2**23: a float32 with these exponent bits holds a small integer q as 2**23 + q in its mantissa
    MAGIC = tl.constexpr(8388608.0)

    @triton.jit
    def _int4_matmul_kernel(x_ptr, qw_ptr, s_ptr, qz_ptr, g_ptr, y_ptr,
                            M, N, K, stride_xm, stride_qk, stride_sg, stride_zg, stride_ym,
                            GROUP: tl.constexpr, HAS_G_IDX: tl.constexpr, FACTORED: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            SPLIT_K: tl.constexpr, PRECISION: tl.constexpr):
        """y[M, N] (+)= x[M, K] @ dequant(qweight)[K, N]; see the module docstring.

        WR in the shape comments is BLOCK_K // 8, the word rows of one K tile.
        """
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        pid_m = tl.program_id(2)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
        mask_n = offs_n < N
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,)
        mask_m = offs_m < M
        zshift = (offs_n % 8) * 4  # nibble of column n in its qzeros word
        if BLOCK_M == 1:  # products summed over rows only once, after the K loop
            acc = tl.zeros((BLOCK_K // 8, BLOCK_N), dtype=tl.float32)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(pid_k * BLOCK_K, K, BLOCK_K * SPLIT_K):
            rows = k0 // 8 + tl.arange(0, BLOCK_K // 8)  # (WR,) word rows of this tile
            mask_r = rows < K // 8
            words = tl.load(qw_ptr + rows[:, None] * stride_qk + offs_n[None, :],
                            mask=mask_r[:, None] & mask_n[None, :], other=0)  # (WR, BN) int32
            if FACTORED:  # one group for the whole tile: subtract z per code, scale once per tile
                g = k0 // GROUP
                s = tl.load(s_ptr + g * stride_sg + offs_n, mask=mask_n, other=0).to(tl.float32)
                zw = tl.load(qz_ptr + g * stride_zg + offs_n // 8, mask=mask_n, other=0)
                z_magic = ((zw >> zshift) & 0xF).to(tl.float32) + MAGIC  # (BN,) 2**23 + z
                if BLOCK_M == 1:
                    part = tl.zeros((BLOCK_K // 8, BLOCK_N), dtype=tl.float32)
                else:
                    part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                for j in tl.static_range(8):  # code 8i+j sits in bits 4j..4j+3 of word i
                    # 2**23 + q as float32 bits, minus 2**23 + z: q - z exactly, no int->float convert
                    qz = (((words >> (4 * j)) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) \
                        - z_magic[None, :]  # (WR, BN)
                    kj = rows * 8 + j  # (WR,) input columns
                    if BLOCK_M == 1:
                        xj = tl.load(x_ptr + pid_m * stride_xm + kj, mask=mask_r, other=0).to(tl.float32)
                        part += xj[:, None] * qz
                    else:
                        xj = tl.load(x_ptr + offs_m[:, None] * stride_xm + kj[None, :],
                                     mask=mask_m[:, None] & mask_r[None, :], other=0)  # (BM, WR)
                        part += tl.dot(xj, qz.to(xj.dtype), input_precision=PRECISION)  # q - z exact
                acc += part * s[None, :]
            else:  # every code looks up its own group's scale and zero
                for j in tl.static_range(8):
                    kj = rows * 8 + j
                    if HAS_G_IDX:
                        gj = tl.load(g_ptr + kj, mask=mask_r, other=0)
                    else:
                        gj = kj // GROUP
                    pmask = mask_r[:, None] & mask_n[None, :]
                    s = tl.load(s_ptr + gj[:, None] * stride_sg + offs_n[None, :], mask=pmask, other=0)
                    zw = tl.load(qz_ptr + gj[:, None] * stride_zg + (offs_n // 8)[None, :], mask=pmask, other=0)
                    z_magic = ((zw >> zshift[None, :]) & 0xF).to(tl.float32) + MAGIC
                    qz = (((words >> (4 * j)) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) - z_magic
                    w = qz * s.to(tl.float32)  # (WR, BN) dequantized weights
                    if BLOCK_M == 1:
                        xj = tl.load(x_ptr + pid_m * stride_xm + kj, mask=mask_r, other=0).to(tl.float32)
                        acc += xj[:, None] * w
                    else:
                        xj = tl.load(x_ptr + offs_m[:, None] * stride_xm + kj[None, :],
                                     mask=mask_m[:, None] & mask_r[None, :], other=0)
                        acc += tl.dot(xj, w.to(xj.dtype), input_precision=PRECISION)
        if BLOCK_M == 1:
            out = tl.sum(acc, axis=0)  # (BN,)
        else:
            out = acc
        if BLOCK_M == 1:
            y_ptrs = y_ptr + pid_m * stride_ym + offs_n
            y_mask = mask_n
        else:
            y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
            y_mask = mask_m[:, None] & mask_n[None, :]
        if SPLIT_K == 1:
            tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=y_mask)
        else:
            tl.atomic_add(y_ptrs, out, mask=y_mask)


def _check(x, qweight, scales, qzeros, group_size, g_idx) -> tuple[int, int, int]:
    """Validate the operands; return (M, N, K)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"x must be a 2-D float16/bfloat16/float32 tensor (M, K), got "
                        f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
    M, K = x.shape
    if K % 8:
        raise ValueError(f"x has K={K} columns; int4 words hold 8 codes, so K must be a multiple of 8")
    for name, t, dt in (("qweight", qweight, torch.int32), ("qzeros", qzeros, torch.int32)):
        if not isinstance(t, torch.Tensor) or t.dtype != dt or t.ndim != 2:
            raise TypeError(f"{name} must be a 2-D int32 tensor, got "
                            f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
    if qweight.shape[0] != K // 8:
        raise ValueError(f"qweight has shape {tuple(qweight.shape)}; for K={K} expected ({K // 8}, N)")
    N = qweight.shape[1]
    n_groups = -(-K // group_size) if g_idx is None else int(scales.shape[0])
    if scales.ndim != 2 or tuple(scales.shape) != (n_groups, N) or not scales.dtype.is_floating_point:
        raise ValueError(f"scales has shape {tuple(scales.shape)} dtype {scales.dtype}; "
                         f"expected float ({n_groups}, {N})")
    if tuple(qzeros.shape) != (n_groups, -(-N // 8)) or N % 8:
        raise ValueError(f"qzeros has shape {tuple(qzeros.shape)}; expected ({n_groups}, {N // 8}) "
                         f"and N={N} a multiple of 8")
    if g_idx is not None and (g_idx.dtype != torch.int32 or tuple(g_idx.shape) != (K,)):
        raise ValueError(f"g_idx must be int32 of shape ({K},), got {g_idx.dtype} {tuple(g_idx.shape)}")
    devices = {t.device for t in (x, qweight, scales, qzeros) + (() if g_idx is None else (g_idx,))}
    if len(devices) != 1:
        raise ValueError(f"all operands must be on one device, got {sorted(map(str, devices))}")
    return M, N, K


def _launch(cfg: Config, x, qweight, scales, qzeros, g_idx, group_size, M, N, K) -> torch.Tensor:
    factored = g_idx is None and group_size % cfg.block_k == 0
    split = cfg.split_k > 1
    y = (torch.zeros if split else torch.empty)((M, N), device=x.device,
                                                dtype=torch.float32 if split else x.dtype)
    grid = (triton.cdiv(N, cfg.block_n), cfg.split_k, triton.cdiv(M, cfg.block_m))
    _int4_matmul_kernel[grid](
        x, qweight, scales, qzeros, qweight if g_idx is None else g_idx, y,
        M, N, K, x.stride(0), qweight.stride(0), scales.stride(0), qzeros.stride(0), y.stride(0),
        GROUP=group_size, HAS_G_IDX=g_idx is not None, FACTORED=factored,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SPLIT_K=cfg.split_k,
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return y.to(x.dtype) if split else y


def _bucket(M: int) -> int:
    return 1 if M == 1 else min(16, 1 << (M - 1).bit_length())


def _tune(key, args) -> Config:
    """Time every candidate once (L2 flushed between calls, median) and keep the fastest."""
    candidates = GEMV_CONFIGS if key[0] == 1 else DOT_CONFIGS
    times = {}
    for cfg in candidates:
        try:
            _launch(cfg, *args)  # compile
            times[cfg] = triton.testing.do_bench(lambda: _launch(cfg, *args), warmup=5, rep=25,
                                                 return_mode="median")
        except Exception as exc:  # a config the compiler rejects on this GPU is skipped
            log.info("int4 config %s failed: %s", cfg, exc)
    if not times:
        raise RuntimeError(f"no int4 kernel configuration compiled for {key}")
    best = min(times, key=times.get)
    log.info("int4 kernel %s: best %s (%.1f us)", key, best, times[best] * 1e3)
    return best


def matmul_int4(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor,
                group_size: int, g_idx: torch.Tensor | None = None, *,
                config: Config | None = None) -> torch.Tensor:
    """``x @ W.T`` with ``W`` int4 GPTQ-packed, dequantized on the fly (no bias).

    Parameters
    ----------
    x : torch.Tensor, shape (M, K), float16, bfloat16 or float32
        Meant for M = 1..16; any M works (tiles of 16 rows).
    qweight : torch.Tensor, shape (K // 8, N), int32
        GPTQ order along K (see the module docstring).
    scales : torch.Tensor, shape (n_groups, N), float16 or float32
    qzeros : torch.Tensor, shape (n_groups, N // 8), int32
        GPTQ order along N; stored zero points (0..15).
    group_size : int
        Input columns per group (when ``g_idx`` is None).
    g_idx : torch.Tensor, shape (K,), int32, optional
        Group of every input column (act-order checkpoints).
    config : Config, optional
        A fixed launch configuration; by default the fastest candidate for
        this shape is found once on the GPU (and a fixed default is used in
        the interpreter).

    Returns
    -------
    torch.Tensor, shape (M, N), dtype of ``x``
        Accumulated in float32. For float32 ``x`` the products are IEEE
        float32; for float16/bfloat16, ``x`` enters the tensor cores as is.
    """
    if triton is None:
        raise RuntimeError("the fused int4 kernel needs Triton, which is not installed "
                           "(it ships with CUDA builds of torch); use QuantLinear's torch fallback")
    M, N, K = _check(x, qweight, scales, qzeros, group_size, g_idx)
    if not (x.is_cuda or _interpreting()):
        raise ValueError("the fused int4 kernel runs on CUDA tensors (or on CPU with TRITON_INTERPRET=1 "
                         f"set before import); x is on {x.device}")
    if M == 0:
        return x.new_zeros((0, N))
    return matmul_int4_unchecked(x.contiguous(), qweight.contiguous(), scales.contiguous(),
                                 qzeros.contiguous(), int(group_size),
                                 None if g_idx is None else g_idx.contiguous(), config)


def matmul_int4_unchecked(x, qweight, scales, qzeros, group_size: int, g_idx,
                          config: Config | None = None) -> torch.Tensor:
    """:func:`matmul_int4` without the checks, for callers whose operands are known good.

    The operands are those of :func:`matmul_int4`, already contiguous, shaped
    as documented there, with M >= 1, on CUDA (or under the interpreter):
    QuantLinear's forward, once per call, whose buffers are shaped by its
    constructor.
    """
    M, K = x.shape
    N = qweight.shape[1]
    args = (x, qweight, scales, qzeros, g_idx, group_size, M, N, K)
    if config is None:
        if _interpreting():
            config = Config(1, 32, 128) if M == 1 else Config(16, 32, 128)
        else:
            key = (_bucket(M), N, K, group_size, g_idx is not None, x.dtype, x.device.index)
            config = _TUNED.get(key)
            if config is None:
                config = _TUNED[key] = _tune(key, args)
    return _launch(config, *args)


def tuned_configs() -> dict[tuple, Config]:
    """The configuration the tuner kept for each shape key seen so far (a copy)."""
    return dict(_TUNED)
