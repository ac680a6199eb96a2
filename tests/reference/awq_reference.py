"""An independent oracle of AWQ for one linear layer: llm-awq's auto_scale and auto_clip searches.

Written for the tests and sharing nothing with ``qviz.algorithms``. It retells,
in plain torch, what mit-han-lab/llm-awq (``awq/quantize/auto_scale.py``,
``auto_clip.py``, ``quantizer.py``) and AutoAWQ (``AwqQuantizer``) do for a
linear whose ``module2inspect`` is the linear itself:

* the grid (``pseudo_quantize_tensor``): per group of columns, with a zero
  point ``scale = max(max - min, 1e-5) / maxq``, ``zero = clamp(-round(min /
  scale), 0, maxq)``, ``w_q = (clamp(round(w / scale) + zero, 0, maxq) - zero)
  · scale``; without one ``scale = max(absmax, 1e-5) / (2^(b-1) - 1)`` and the
  integers run from ``-2^(b-1)``. Here a Python loop walks the groups one by one,
  so a shorter last group needs no special case;
* the scale search: an ``nn.Linear`` holds the weight; for ratio ``k / 20`` the
  scales ``mean|x|^ratio`` (or the duo variant) are clamped, normalized by
  ``sqrt(max · min)``, the layer's weight is multiplied by them, fake-quantized
  and divided back, the layer runs, the MSE against the float output is
  recorded and the weight restored from a saved state dict;
* the clip search: for each group, weights laid out (rows, 1, 1, k) and the
  sampled inputs (1, tokens, 1, k); shrink ``1 - i/20`` for ``i < 10``; a
  candidate replaces the best where its error is strictly smaller; rows in
  batches of 256 when they divide by 256, else 64.
"""
import torch


def pseudo_quantize(w, n_bit, zero_point, group_size):
    """Fake-quantized copy of w (rows, cols), one group of ``group_size`` columns at a time."""
    out = torch.empty_like(w)
    for c in range(0, w.shape[-1], group_size):
        grp = w[..., c:c + group_size]
        if zero_point:
            hi_int, lo_int = 2 ** n_bit - 1, 0
            top = grp.amax(dim=-1, keepdim=True)
            bottom = grp.amin(dim=-1, keepdim=True)
            step = (top - bottom).clamp(min=1e-5) / hi_int
            zp = (-torch.round(bottom / step)).clamp_(lo_int, hi_int)
            out[..., c:c + group_size] = (torch.clamp(torch.round(grp / step) + zp, lo_int, hi_int) - zp) * step
        else:
            hi_int, lo_int = 2 ** (n_bit - 1) - 1, -(2 ** (n_bit - 1))
            step = grp.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5) / hi_int
            out[..., c:c + group_size] = torch.clamp(torch.round(grp / step), lo_int, hi_int) * step
    return out


def codes_scales_zeros(w, n_bit, zero_point, group_size):
    """Unsigned codes (shifted by 2^(b-1) when symmetric), scales and zeros per group."""
    codes, scales, zeros = [], [], []
    for c in range(0, w.shape[1], group_size):
        grp = w[:, c:c + group_size]
        if zero_point:
            maxq = 2 ** n_bit - 1
            step = (grp.amax(1, keepdim=True) - grp.amin(1, keepdim=True)).clamp(min=1e-5) / maxq
            zp = (-torch.round(grp.amin(1, keepdim=True) / step)).clamp_(0, maxq)
            codes.append(torch.clamp(torch.round(grp / step) + zp, 0, maxq))
            zeros.append(zp)
        else:
            half = 2 ** (n_bit - 1)
            step = grp.abs().amax(1, keepdim=True).clamp(min=1e-5) / (half - 1)
            codes.append(torch.clamp(torch.round(grp / step), -half, half - 1) + half)
        scales.append(step)
    return (torch.cat(codes, 1).to(torch.uint8), torch.cat(scales, 1),
            torch.cat(zeros, 1) if zero_point else None)


def auto_scale(w, x, n_bit=4, group_size=128, zero_point=True, duo_scaling=False, n_grid=20):
    """The scale search of one linear (no bias). Returns dict(scales, ratio, history)."""
    fc = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    fc.weight.data = w.clone()
    with torch.no_grad():
        org_out = fc(x)
        x_max = x.abs().view(-1, x.shape[-1]).mean(0)
        w_rel = []
        for c in range(0, w.shape[1], group_size):
            a = w[:, c:c + group_size].abs()
            w_rel.append(a / (a.amax(dim=1, keepdim=True) + 1e-6))
        w_max = torch.cat(w_rel, 1).mean(0)

        saved = {k: v.clone() for k, v in fc.state_dict().items()}
        history, best_error, best_ratio, best_scales = [], float("inf"), -1, None
        for r in range(n_grid):
            ratio = r / n_grid
            if duo_scaling:
                scales = (x_max.pow(ratio) / (w_max.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
            else:
                scales = x_max.pow(ratio).clamp(min=1e-4).view(-1)
            scales = scales / (scales.max() * scales.min()).sqrt()
            scales[torch.isinf(scales)] = 1
            scales[torch.isnan(scales)] = 1
            fc.weight.mul_(scales.view(1, -1))
            fc.weight.data = pseudo_quantize(fc.weight.data, n_bit, zero_point, group_size) / scales.view(1, -1)
            loss = (org_out - fc(x)).float().pow(2).mean().item()
            history.append(loss)
            if loss < best_error:
                best_error, best_ratio, best_scales = loss, ratio, scales.clone()
            fc.load_state_dict(saved)
    return {"scales": best_scales, "ratio": best_ratio, "history": history}


def auto_clip(w, x, n_bit=4, group_size=128, zero_point=True, n_grid=20, max_shrink=0.5,
              n_sample_token=512):
    """The clip search of one (already scaled) weight; x already divided by the scales.

    Returns max_val, shape (rows, n_groups).
    """
    x = x.view(-1, x.shape[-1])
    x = x[0::max(1, x.shape[0] // n_sample_token)]
    rows = w.shape[0]
    batch = 256 if rows % 256 == 0 else 64
    per_group = []
    for c in range(0, w.shape[1], group_size):
        k = min(group_size, w.shape[1] - c)
        feat = x[:, c:c + k].reshape(1, x.shape[0], 1, k)
        wg_all = w[:, c:c + k].reshape(rows, 1, 1, k)
        found = []
        for b in range(0, rows, batch):
            wg = wg_all[b:b + batch]
            org_max = wg.abs().amax(dim=-1, keepdim=True)
            best_max = org_max.clone()
            min_errs = torch.ones_like(org_max) * 1e9
            org_out = (feat * wg).sum(dim=-1)
            for i_s in range(int(max_shrink * n_grid)):
                max_val = org_max * (1 - i_s / n_grid)
                cur = torch.clamp(wg, -max_val, max_val)
                q = pseudo_quantize(cur, n_bit, zero_point, k)
                err = ((feat * q).sum(dim=-1) - org_out).pow(2).mean(dim=1).view(min_errs.shape)
                idx = err < min_errs
                min_errs[idx] = err[idx]
                best_max[idx] = max_val[idx]
            found.append(best_max)
        per_group.append(torch.cat(found, 0).reshape(rows, 1))
    return torch.cat(per_group, 1)


def awq_layer(w, x, n_bit=4, group_size=128, zero_point=True, duo_scaling=False, clip=True):
    """Scale search, scale, clip search, clamp, quantize: the whole per-layer pass."""
    sc = auto_scale(w, x, n_bit, group_size, zero_point, duo_scaling)
    s = sc["scales"].view(1, -1)
    ws = w.clone()
    ws.mul_(s)
    max_val = None
    if clip:
        max_val = auto_clip(ws, x / s, n_bit, group_size, zero_point)
        m = torch.cat([max_val[:, [j]].expand(-1, min(group_size, w.shape[1] - c))
                       for j, c in enumerate(range(0, w.shape[1], group_size))], 1)
        ws = torch.clamp(ws, -m, m)
    codes, scales, zeros = codes_scales_zeros(ws, n_bit, zero_point, group_size)
    return dict(sc, max_val=max_val, codes=codes, scales_q=scales, zeros=zeros,
                w_q=pseudo_quantize(ws, n_bit, zero_point, group_size))
