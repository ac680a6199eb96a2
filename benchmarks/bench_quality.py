"""Quality of whole quantized models: SmolLM2 perplexity and KL, MiniLM embedding cosine.

SmolLM2-135M-Instruct (the bundled Q4_1 GGUF, decoded to float32: the "base"):
perplexity on the held-out pydoc text (sliding window, ``--ctx`` 512, stride
ctx/2, the first ``--tokens``), KL divergence of the next-token distributions
against the base and top-1 agreement, for

    RTN 4-bit g128 asym, RTN 3-bit g128 asym, GPTQ 4-bit g128 (also with act_order,
    "ao"), AWQ 4-bit g128

(every Linear of the blocks; embeddings and the tied lm_head stay as they are).
The gap of a method is ``ppl - ppl_base``; ``gap/RTN4`` divides it by RTN4's.
Targets: GPTQ's gap <= 40 % of RTN4's, AWQ's <= 60 %.

all-MiniLM-L6-v2: mean cosine of normalized mean-pooled sentence embeddings
against the original, on 256 held-out pydoc paragraphs (target GPTQ >= 0.98),
and per layer the relative output error ``‖(W - Ŵ)Xᵀ‖² / ‖WXᵀ‖²`` of RTN4 and
GPTQ4, with X the layer's inputs in the original model.

GPTQ and AWQ calibrate on the calibration pydoc text (disjoint from the
evaluation text): SmolLM2 on up to ``--calib-seqs`` sequences of ``--seq-len``
(512) tokens (the text gives about 90), MiniLM on up to 128 sequences of 128
tokens (closer to the paragraph lengths it embeds than 512-token windows).

Usage::

    python benchmarks/bench_quality.py [--tokens 50000] [--calib-seqs 128] [--device cpu]
                                       [--skip-smollm2] [--skip-minilm] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS = {  # name -> (method, options)
    "RTN4 g128": ("rtn", dict(bits=4, group_size=128)),
    "RTN3 g128": ("rtn", dict(bits=3, group_size=128)),
    "GPTQ4 g128": ("gptq", dict(bits=4, group_size=128)),
    "GPTQ4 g128 ao": ("gptq", dict(bits=4, group_size=128, act_order=True)),
    "AWQ4 g128": ("awq", dict(bits=4, group_size=128)),
}


def quantize_all(model, batches, args, configs):
    from qviz.models import quantize_model

    out = {}
    for name, (method, options) in configs.items():
        t0 = time.perf_counter()
        results, qmodel = quantize_model(model, method, calib=batches if method in ("gptq", "awq") else None,
                                         progress=args.progress, **options)
        seconds = time.perf_counter() - t0
        bits = sum(r.storage_bits for r in results.values())
        n = sum(r.shape[0] * r.shape[1] for r in results.values())
        out[name] = (qmodel, results, seconds, bits / n)
        print(f"  quantized {name}: {len(results)} layers in {seconds:.0f} s", flush=True)
    return out


def smollm2(args) -> dict:
    from qviz import eval as qeval
    from qviz.io import calib
    from qviz.io.models import load_smollm2

    model, tok = load_smollm2(args.smollm2_gguf)
    model.to(args.device)
    batches = calib.calibration_batches(tok, seq_len=args.seq_len, n_sequences=args.calib_seqs)
    quantized = quantize_all(model, batches, args, CONFIGS)
    t0 = time.perf_counter()
    scores = qeval.compare_lm({"base": model, **{k: v[0] for k, v in quantized.items()}}, model,
                              tokenizer=tok, ctx=args.ctx, max_tokens=args.tokens, progress=args.progress)
    eval_s = time.perf_counter() - t0
    base = scores["base"].perplexity
    rtn_gap = scores["RTN4 g128"].perplexity - base
    print(f"\nSmolLM2-135M-Instruct (Q4_1 GGUF decoded), held-out pydoc text, {scores['base'].n_tokens} tokens "
          f"scored, ctx {args.ctx}, stride {args.ctx // 2}; calibration {len(batches)} batches "
          f"({args.calib_seqs} × {args.seq_len} tokens max); "
          f"device {args.device}; eval {eval_s:.0f} s")
    print(f"{'model':12} {'bpw':>6} {'ppl':>8} {'gap/RTN4':>9} {'KL':>8} {'top-1':>7} {'time s':>7}")
    rows = {}
    for name, s in scores.items():
        bpw, secs = (quantized[name][3], quantized[name][2]) if name in quantized else (float("nan"), 0.0)
        ratio = (s.perplexity - base) / rtn_gap if name != "base" else 0.0
        print(f"{name:12} {bpw:6.3f} {s.perplexity:8.3f} {ratio:9.2f} {s.kl:8.4f} {s.top1:7.3f} {secs:7.0f}")
        rows[name] = dict(s._asdict(), gap_vs_rtn4=ratio, bits_per_weight=bpw, quantize_s=secs)
    return rows


def minilm(args) -> dict:
    import numpy as np

    from qviz import eval as qeval
    from qviz import metrics
    from qviz.io import calib
    from qviz.io.models import load_minilm

    model, tok = load_minilm()
    model.to(args.device)
    batches = calib.calibration_batches(tok, seq_len=args.minilm_seq_len, n_sequences=args.minilm_calib_seqs)
    quantized = quantize_all(model, batches, args, CONFIGS)
    texts = qeval.default_sentences(args.minilm_texts)
    print(f"\nall-MiniLM-L6-v2, mean cosine to the original on {len(texts)} held-out pydoc paragraphs "
          f"(calibration {len(batches)} batches, {args.minilm_calib_seqs} × {args.minilm_seq_len} tokens max)")
    rows = {}
    for name, (qmodel, results, secs, bpw) in quantized.items():
        cos = qeval.embedding_similarity(qmodel, model, tok, texts)
        rows[name] = dict(cosine=cos, bits_per_weight=bpw, quantize_s=secs)
        print(f"{name:12} bpw {bpw:6.3f}  cosine {cos:.4f}  ({secs:.0f} s)")

    stats = calib.capture(model, batches, max_samples=2048, hessian=False, progress=False)
    rtn, gptq = quantized["RTN4 g128"][1], quantized["GPTQ4 g128"][1]
    print(f"\nper layer, relative output error on the original model's inputs (RTN4 vs GPTQ4, g128)")
    print(f"{'layer':42} {'RTN4':>9} {'GPTQ4':>9} {'GPTQ/RTN':>9}")
    layers = {}
    for name, st in stats.items():
        w = model.get_submodule(name).weight.detach().cpu().numpy()
        e_rtn = metrics.relative_output_error(w, rtn[name].dequantize(), st.sample)
        e_gptq = metrics.relative_output_error(w, gptq[name].dequantize(), st.sample)
        layers[name] = dict(rtn4=e_rtn, gptq4=e_gptq)
        print(f"{name:42} {e_rtn:9.2e} {e_gptq:9.2e} {e_gptq / e_rtn:9.2f}")
    ratios = np.array([v["gptq4"] / v["rtn4"] for v in layers.values()])
    print(f"GPTQ/RTN: median {np.median(ratios):.2f}, best {ratios.min():.2f}, worst {ratios.max():.2f}")
    return {"models": rows, "layers": layers}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=50000, help="evaluation tokens (SmolLM2)")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--seq-len", type=int, default=512, help="calibration sequence length (SmolLM2)")
    p.add_argument("--calib-seqs", type=int, default=128, help="calibration sequences (SmolLM2)")
    p.add_argument("--minilm-seq-len", type=int, default=128, help="calibration sequence length (MiniLM)")
    p.add_argument("--minilm-calib-seqs", type=int, default=128, help="calibration sequences (MiniLM)")
    p.add_argument("--minilm-texts", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--smollm2-gguf", type=pathlib.Path, help="default: the bundled SmolLM2 GGUF")
    p.add_argument("--skip-smollm2", action="store_true")
    p.add_argument("--skip-minilm", action="store_true")
    p.add_argument("--progress", action="store_true", help="tqdm bars")
    p.add_argument("--json", type=pathlib.Path, help="write the numbers here")
    args = p.parse_args(argv)

    import torch

    torch.manual_seed(0)
    out = {"args": {k: str(v) for k, v in vars(args).items()}}
    if not args.skip_minilm:
        out["minilm"] = minilm(args)
    if not args.skip_smollm2:
        out["smollm2"] = smollm2(args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
