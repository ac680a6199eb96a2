"""The bundled real models as torch modules, loaded offline.

* :func:`load_minilm`: all-MiniLM-L6-v2 (a BERT sentence encoder, FP32) through
  transformers' ``AutoModel`` from :func:`qviz.demo.minilm_dir`;
* :func:`load_smollm2`: SmolLM2-135M-Instruct, built as a transformers
  ``LlamaForCausalLM`` straight from the bundled GGUF with qviz's own reader
  (:func:`qviz.io.gguf.read`), in about two seconds. transformers' own
  ``gguf_file=`` path parses the file's metadata twice and takes 25–90 s here.

Nothing is unpickled: weights come from safetensors and GGUF bytes only.
transformers and torch are imported inside the functions.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from qviz.io import demo
from qviz.io import gguf

#: GGUF tensor name (per block ``blk.{i}.``) -> transformers LLaMA parameter name
LLAMA_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
LLAMA_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
#: llama.cpp's token_type for control tokens (``<|im_start|>`` …)
CONTROL_TOKEN = 3


def load_minilm():
    """all-MiniLM-L6-v2 and its tokenizer, FP32, in eval mode.

    Returns
    -------
    model : transformers.BertModel
        6 blocks (``model.encoder.layer``), hidden size 384; its sentence
        embedding is the mean of ``last_hidden_state`` over the real tokens,
        normalized (:func:`qviz.eval.embed`).
    tokenizer : transformers.PreTrainedTokenizerBase

    Examples
    --------
    >>> model, tokenizer = load_minilm()
    >>> len(model.encoder.layer), model.config.hidden_size
    (6, 384)
    """
    from transformers import AutoModel, AutoTokenizer

    path = str(demo.minilm_dir())
    model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's row permutation of a q or k projection.

    llama.cpp's ``convert_hf_to_gguf.py`` reorders the rows of each head of
    ``q_proj``/``k_proj`` from the two-halves rotary layout transformers uses
    to interleaved pairs (``LlamaModel.permute``); this is transformers'
    ``LlamaTensorProcessor._reverse_permute_weights``.

    Parameters
    ----------
    w : ndarray, shape (n_head * head_dim, n_cols)
        As stored in the GGUF file (rows in llama.cpp's order).
    n_head : int
        Heads of this projection: attention heads for q, KV heads for k.

    Returns
    -------
    ndarray, shape like ``w``
        Rows in transformers' order (a new array).

    Examples
    --------
    >>> w = np.arange(8, dtype=np.float32)[:, None]   # one head, head_dim 8
    >>> unpermute_qk(w, 1)[:, 0]                       # pairs (0,1),(2,3).. back to halves
    array([0., 2., 4., 6., 1., 3., 5., 7.], dtype=float32)
    """
    n_rows = w.shape[0]
    if n_rows % (2 * n_head):
        raise ValueError(f"{n_rows} rows do not split into {n_head} heads of pairs")
    half = n_rows // n_head // 2
    # (n_head, half, 2, n_cols) -> (n_head, 2, half, n_cols)
    return np.ascontiguousarray(w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def _llama_config(meta: dict, n_vocab: int, tied: bool):
    from transformers import LlamaConfig

    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"this GGUF's architecture is {arch!r}; load_smollm2 builds llama models only")
    p = "llama."
    n_embd = int(meta[p + "embedding_length"])
    n_head = int(meta[p + "attention.head_count"])
    return LlamaConfig(
        vocab_size=n_vocab,
        hidden_size=n_embd,
        intermediate_size=int(meta[p + "feed_forward_length"]),
        num_hidden_layers=int(meta[p + "block_count"]),
        num_attention_heads=n_head,
        num_key_value_heads=int(meta.get(p + "attention.head_count_kv", n_head)),
        head_dim=int(meta.get(p + "rope.dimension_count", n_embd // n_head)),
        max_position_embeddings=int(meta.get(p + "context_length", 2048)),
        rms_norm_eps=float(meta[p + "attention.layer_norm_rms_epsilon"]),
        rope_theta=float(meta.get(p + "rope.freq_base", 10000.0)),
        tie_word_embeddings=tied,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
    )


def llama_state_dict(f: gguf.GGUFFile, n_head: int, n_head_kv: int) -> dict[str, np.ndarray]:
    """transformers LLaMA parameters from a llama GGUF, decoded to float32.

    Parameters
    ----------
    f : GGUFFile
        An open llama-architecture GGUF.
    n_head, n_head_kv : int
        Attention and key/value heads (to undo the q/k row permutation).

    Returns
    -------
    dict
        transformers name -> ndarray float32 in transformers' shape. Without
        ``output.weight`` in the file, ``lm_head`` is tied to the embedding.
    """
    out = {}
    for info in f.tensors:
        name = info.name
        if name in LLAMA_TOP_NAMES:
            out[LLAMA_TOP_NAMES[name]] = f.decode(name)
            continue
        parts = name.split(".")  # blk.{i}.{kind}.weight
        if parts[0] != "blk" or parts[2] not in LLAMA_BLOCK_NAMES:
            raise ValueError(f"GGUF tensor {name!r} has no place in a transformers LLaMA")
        w = f.decode(name)
        if parts[2] == "attn_q":
            w = unpermute_qk(w, n_head)
        elif parts[2] == "attn_k":
            w = unpermute_qk(w, n_head_kv)
        out[f"model.layers.{parts[1]}.{LLAMA_BLOCK_NAMES[parts[2]]}.weight"] = w
    return out


def gguf_tokenizer(meta: dict):
    """A transformers fast tokenizer from a GGUF's byte-level BPE vocabulary.

    llama.cpp's ``gpt2`` tokenizer model: the vocabulary and merges from the
    file, GPT-2's byte-level alphabet, and the ``smollm`` pre-tokenizer
    (digits split one by one, then GPT-2's regex), as SmolLM2's own
    ``tokenizer.json``. Control tokens (``<|im_start|>`` …) stay whole. No
    BOS is added (``tokenizer.ggml.add_bos_token`` is False for SmolLM2).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    kind = meta.get("tokenizer.ggml.model")
    pre = meta.get("tokenizer.ggml.pre")
    if kind != "gpt2" or pre not in ("smollm", "default", None):
        raise ValueError(f"this GGUF's tokenizer is {kind!r} with pre-tokenizer {pre!r}; "
                         f"qviz builds the byte-level BPE of SmolLM2 ('gpt2', 'smollm') only")
    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                               fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    types = meta.get("tokenizer.ggml.token_type", [])
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i, t in enumerate(types) if t == CONTROL_TOKEN])

    def token(key):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return None if i is None else tokens[i]

    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=token("bos"), eos_token=token("eos"),
                                   unk_token=token("unknown"), pad_token=token("padding"),
                                   chat_template=meta.get("tokenizer.chat_template"))


def load_smollm2(path: str | Path | None = None):
    """SmolLM2-135M-Instruct as a transformers ``LlamaForCausalLM``, and its tokenizer.

    The weights are the bundled ``SmolLM2-135M-Instruct.Q4_1.gguf`` decoded
    to float32: every Linear of the blocks lies exactly on a **Q4_1 grid**
    (blocks of 32 with an fp16 scale and min), the token embedding (tied to
    ``lm_head``) on a Q8_0 grid, the norms are F32. This is therefore already
    a 4-bit model; re-quantizing it shows the *extra* error of a method.

    Parameters
    ----------
    path : str or Path, optional
        A llama-architecture GGUF with a byte-level BPE (``gpt2``) tokenizer;
        default the bundled SmolLM2 (:func:`qviz.demo.smollm2_gguf`).

    Returns
    -------
    model : transformers.LlamaForCausalLM
        float32, eval mode; blocks in ``model.model.layers``.
    tokenizer : transformers.PreTrainedTokenizerFast

    Notes
    -----
    Built with :func:`qviz.io.gguf.read` and ``.decode``; llama.cpp's q/k row
    permutation is undone as transformers' GGUF loader does
    (:func:`unpermute_qk`); without ``output.weight`` the embeddings are tied.

    Examples
    --------
    >>> model, tokenizer = load_smollm2()
    >>> len(model.model.layers), model.config.hidden_size
    (30, 576)
    """
    import torch
    from transformers import LlamaForCausalLM

    path = demo.smollm2_gguf() if path is None else Path(path)
    with gguf.read(path) as f:
        meta = f.metadata
        names = {t.name for t in f.tensors}
        n_vocab = f.tensor("token_embd.weight").shape[0]
        config = _llama_config(meta, n_vocab, tied="output.weight" not in names)
        weights = llama_state_dict(f, config.num_attention_heads, config.num_key_value_heads)
        tokenizer = gguf_tokenizer(meta)
    model = LlamaForCausalLM(config)  # random init, about 2 s; then every weight is replaced
    state = {k: torch.from_numpy(v) for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if config.tie_word_embeddings:
        missing = [m for m in missing if m != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(f"{path.name}: missing {missing}, unexpected {unexpected}")
    return model.eval(), tokenizer

