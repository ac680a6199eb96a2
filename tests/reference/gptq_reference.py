"""An independent oracle of GPTQ: IST-DASLab/gptq ``GPTQ.add_batch`` and ``GPTQ.fasterquant``.

A plain torch transcription of the reference loop, written for the tests and
sharing nothing with ``qviz.algorithms``: the quantizer is the torch oracle in
``gptq_quantizer.py`` (``find_params``), its state is two local variables, and
every step keeps the reference's order of operations (the same float32 ops on
the same shapes), so that qviz must agree bit for bit on CPU.

What the reference does, in order:

* the per-channel quantizer is fitted on the whole W before anything else;
* dead inputs: H[i, i] = 1, W[:, i] = 0;
* static groups are fitted on W (dead columns zeroed, original order);
* act order: perm = argsort(diag(H), descending), W and H permuted;
* damping percdamp * mean(diag(H)); Hinv = chol(chol_inverse(chol(H)), upper);
* blocks of ``blocksize`` columns: column-wise updates inside the block copy W1,
  a dynamic group refits on W (not W1) at ``(i1 + i) % groupsize == 0``,
  then the lazy update W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:];
* losses (w - q)^2 / d^2, halved per block; Q un-permuted at the end.
"""
import math

import torch

from reference.gptq_quantizer import find_params


def add_batches(batches):
    """H from batches as ``add_batch`` accumulates it; each batch is (rows, in), one sample per row."""
    H, nsamples = None, 0
    for x in batches:
        x = torch.as_tensor(x, dtype=torch.float32)
        if H is None:
            H = torch.zeros((x.shape[1], x.shape[1]))
        tmp = x.shape[0]
        H *= nsamples / (nsamples + tmp)
        nsamples += tmp
        inp = math.sqrt(2 / nsamples) * x.t()  # (in, rows)
        H += inp.matmul(inp.t())
    return H


def fasterquant(W, H, bits, sym, groupsize=-1, blocksize=128, percdamp=0.01,
                actorder=False, static_groups=False):
    """Run the reference loop; returns a dict of torch tensors.

    Q (rows, cols) the dequantized weight and codes (rows, cols) in the original
    order; scales, zeros (rows, n_groups) by group id; g_idx (cols,) the group of
    each original column; losses (rows, cols) in the original order.
    """
    W = W.clone().float()
    H = H.clone().float()
    rows, columns = W.shape
    maxq = 2**bits - 1

    scale, zero = find_params(W, bits, sym)  # the quantizer is "not ready": per channel
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    groups = []
    if static_groups and groupsize != -1:
        for s in range(0, columns, groupsize):
            groups.append(find_params(W[:, s:s + groupsize], bits, sym))

    perm = torch.arange(columns)
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]

    damp = percdamp * torch.mean(torch.diag(H))
    idx = torch.arange(columns)
    H[idx, idx] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True)

    Q = torch.zeros_like(W)
    C = torch.zeros_like(W)
    Losses = torch.zeros_like(W)
    fitted = {}  # group id -> (scale, zero), dynamic groups
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Losses1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hinv1[i, i]
            if groupsize != -1:
                if not static_groups:
                    if (i1 + i) % groupsize == 0:
                        scale, zero = find_params(W[:, (i1 + i):(i1 + i + groupsize)], bits, sym)
                        fitted[(i1 + i) // groupsize] = (scale, zero)
                else:
                    scale, zero = groups[int(perm[i1 + i]) // groupsize]
            code = torch.clamp(torch.round(w.unsqueeze(1) / scale) + zero, 0, maxq)
            q = (scale * (code - zero)).flatten()
            Q1[:, i] = q
            C[:, i1 + i] = code.flatten()
            Losses1[:, i] = (w - q) ** 2 / d ** 2
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        Losses[:, i1:i2] = Losses1 / 2
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

    invperm = torch.argsort(perm)
    if groupsize == -1:
        params = [(scale, zero)]
        g_idx = torch.zeros(columns, dtype=torch.int32)
    elif static_groups:
        params = groups
        g_idx = torch.arange(columns, dtype=torch.int32) // groupsize
    else:
        params = [fitted[k] for k in range(len(fitted))]
        g_idx = (torch.arange(columns, dtype=torch.int32) // groupsize)[invperm]
    return {
        "Q": Q[:, invperm], "codes": C[:, invperm].to(torch.uint8),
        "scales": torch.cat([p[0] for p in params], 1), "zeros": torch.cat([p[1] for p in params], 1),
        "g_idx": g_idx, "losses": Losses[:, invperm],
    }
