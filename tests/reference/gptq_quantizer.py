"""An independent torch oracle of the GPTQ reference's round-to-nearest quantizer.

Written from the conventions of IST-DASLab/gptq ``quant.py`` (``Quantizer.find_params``
and ``quantize``) with torch ops, one row of parameters per output row: the range
includes zero, an all-zero row uses [-1, 1], asym zero = round(-xmin/scale), sym
zero = (maxq+1)/2 and range ±max|x|.
"""
import torch


def find_params(x: torch.Tensor, bits: int, sym: bool):
    """x: (rows, cols) float32 -> scale, zero: (rows, 1) float32."""
    maxq = torch.tensor(2**bits - 1, dtype=torch.float32)
    zero_t = torch.zeros(x.shape[0])
    xmin = torch.minimum(x.min(1).values, zero_t)
    xmax = torch.maximum(x.max(1).values, zero_t)
    if sym:
        xmax = torch.maximum(torch.abs(xmin), xmax)
        neg = xmin < 0
        if torch.any(neg):
            xmin[neg] = -xmax[neg]
    both_zero = (xmin == 0) & (xmax == 0)
    xmin[both_zero] = -1
    xmax[both_zero] = +1
    scale = (xmax - xmin) / maxq
    if sym:
        zero = torch.full_like(scale, float((maxq + 1) / 2))
    else:
        zero = torch.round(-xmin / scale)
    return scale.unsqueeze(1), zero.unsqueeze(1)


def quantize_groups(w: torch.Tensor, bits: int, sym: bool, group_size: int):
    """Group by group, as GPTQ's loop does: codes (rows, cols) and scale/zero (rows, n_groups)."""
    maxq = 2**bits - 1
    codes, scales, zeros = [], [], []
    for start in range(0, w.shape[1], group_size):
        g = w[:, start:start + group_size]
        s, z = find_params(g, bits, sym)
        codes.append(torch.clamp(torch.round(g / s) + z, 0, maxq))
        scales.append(s)
        zeros.append(z)
    return torch.cat(codes, 1), torch.cat(scales, 1), torch.cat(zeros, 1)
