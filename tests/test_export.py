"""GPTQ / AWQ checkpoint export: hand-made words, independent decoders, round trips, bad inputs.

Oracles: (1) int32 words written by hand from the layouts (AutoGPTQ ``QuantLinear.pack``,
AutoAWQ ``WQLinear_GEMM.from_linear``); (2) plain-loop packers written from the same
description; (3) decoders that do what AutoGPTQ's torch fallback and AutoAWQ's
``unpack_awq`` + ``reverse_awq_order`` do (shift, mask, +1 for v1 zeros).
"""
import json

import numpy as np
import pytest

import qviz
from qviz.io import export
from qviz.io.export import export_awq, export_gptq, load_awq, load_gptq
from qviz.result import QuantResult


def u32(a):
    return np.asarray(a).view(np.uint32)


def affine(codes, zeros=None, bits=4, group_size=None, scales=None, g_idx=None, method="rtn", info=None):
    codes = np.asarray(codes, np.uint8)
    n_rows, n_cols = codes.shape
    g = n_cols if group_size is None else group_size
    n_groups = -(-n_cols // g) if g_idx is None else int(np.max(g_idx)) + 1
    if scales is None:
        scales = np.full((n_rows, n_groups), 0.5, np.float32)
    z = None if zeros is None else np.asarray(zeros, np.float32)
    return QuantResult(method, (n_rows, n_cols), bits, g, codes, np.asarray(scales, np.float32), z,
                       g_idx=g_idx, info=info or {})


# --- plain-loop packers written from the layout description --------------------------------

def loop_pack_stream(codes_1d, bits):
    """GPTQ order: code k at stream bits [k·bits, (k+1)·bits), LSB first, cut into 32-bit words."""
    n_words = len(codes_1d) * bits // 32
    words = [0] * n_words
    for k, c in enumerate(codes_1d):
        for b in range(bits):
            pos = k * bits + b
            words[pos // 32] |= ((int(c) >> b) & 1) << (pos % 32)
    return words


def loop_pack_awq(codes_1d):
    """AWQ order: slot i of word w holds code w·8 + [0, 2, 4, 6, 1, 3, 5, 7][i] at bits 4i."""
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    return [sum(int(codes_1d[w * 8 + order[i]]) << (4 * i) for i in range(8))
            for w in range(len(codes_1d) // 8)]


# --- decoders doing what AutoGPTQ / AutoAWQ do -------------------------------------------------

def autogptq_v1_dequant_4bit(t, name):
    """qlinear_cuda_old's torch path: shift by [0, 4, …, 28], mask 0xF, zeros + 1, scale·(w − z)."""
    wf = np.arange(0, 32, 4, dtype=np.uint32)
    qweight, qzeros = u32(t[f"{name}.qweight"]), u32(t[f"{name}.qzeros"])
    scales = t[f"{name}.scales"].astype(np.float32)
    g_idx = t[f"{name}.g_idx"]
    weight = ((qweight[:, None, :] >> wf[None, :, None]) & 0xF).reshape(-1, qweight.shape[1])  # (in, out)
    zeros = (((qzeros[:, :, None] >> wf[None, None, :]) & 0xF) + 1).reshape(qzeros.shape[0], -1)  # (G, out)
    w = scales[g_idx] * (weight.astype(np.float32) - zeros[g_idx].astype(np.float32))
    return w.T  # (out, in)


def autoawq_dequant(t, name, group_size):
    """unpack_awq + reverse_awq_order + scale·(w − z)."""
    shifts = np.arange(0, 32, 4, dtype=np.uint32)
    reverse = np.array([0, 4, 1, 5, 2, 6, 3, 7])

    def unpack(words):
        vals = ((u32(words)[:, :, None] >> shifts) & 0xF).reshape(words.shape[0], -1)
        idx = np.arange(vals.shape[1]).reshape(-1, 8)[:, reverse].reshape(-1)
        return vals[:, idx]

    iweight = unpack(t[f"{name}.qweight"]).astype(np.float32)  # (in, out)
    izeros = unpack(t[f"{name}.qzeros"]).astype(np.float32)    # (G, out)
    scales = t[f"{name}.scales"].astype(np.float32)
    g = np.arange(iweight.shape[0]) // group_size
    return (scales[g] * (iweight - izeros[g])).T


def fp16_scales(r):
    """``r`` with its scales (and input scale) rounded to fp16, as checkpoints store them."""
    s_in = None if r.input_scale is None else r.input_scale.astype(np.float16).astype(np.float32)
    return QuantResult(r.method, r.shape, r.bits, r.group_size, r.codes,
                       r.scales.astype(np.float16).astype(np.float32), r.zeros, g_idx=r.g_idx,
                       input_scale=s_in)


# --- hand-made vectors ------------------------------------------------------------------------

def test_gptq_qweight_words_by_hand():
    codes = (np.arange(8)[:, None] + np.arange(16)[None, :]) % 16  # codes[o, i] = (o + i) % 16
    t = export.gptq_tensors("fc", affine(codes, zeros=np.full((8, 2), 3), group_size=8))
    q = u32(t["fc.qweight"])
    assert q.shape == (2, 8) and t["fc.qweight"].dtype == np.int32  # (in·4/32, out)
    assert q[0, 0] == 0x76543210 and q[1, 0] == 0xFEDCBA98  # output 0: inputs 0..7, then 8..15
    assert q[0, 1] == 0x87654321 and q[1, 1] == 0x0FEDCBA9  # output 1: inputs 1..8, then 9..15, 0
    assert t["fc.qweight"][0, 1] == np.int32(-0x789ABCDF)  # 0x87654321 read as a signed int32
    np.testing.assert_array_equal(t["fc.g_idx"], np.arange(16) // 8)
    assert t["fc.g_idx"].dtype == np.int32
    assert t["fc.scales"].dtype == np.float16 and t["fc.scales"].shape == (2, 8)


def test_gptq_qzeros_v1_stores_zero_minus_one_v2_the_zero():
    zeros = np.stack([np.arange(1, 9), np.arange(15, 7, -1)], axis=1)  # (out 8, G 2)
    r = affine(np.zeros((8, 16)), zeros=zeros, group_size=8)
    v1 = u32(export.gptq_tensors("fc", r, "gptq")["fc.qzeros"])
    v2 = u32(export.gptq_tensors("fc", r, "gptq_v2")["fc.qzeros"])
    assert v1.shape == v2.shape == (2, 1)  # (G, out·4/32)
    assert v2[0, 0] == 0x87654321 and v1[0, 0] == 0x76543210
    assert v2[1, 0] == 0x89ABCDEF and v1[1, 0] == 0x789ABCDE


@pytest.mark.parametrize("bits,v1,v2", [(4, 0x77777777, 0x88888888), (8, 0x7F7F7F7F, 0x80808080),
                                        (2, 0x55555555, 0xAAAAAAAA)])
def test_symmetric_results_store_the_implied_zero(bits, v1, v2):
    r = affine(np.zeros((32, 32)), zeros=None, bits=bits)
    assert (u32(export.gptq_tensors("fc", r, "gptq")["fc.qzeros"]) == v1).all()
    assert (u32(export.gptq_tensors("fc", r, "gptq_v2")["fc.qzeros"]) == v2).all()


def test_gptq_3bit_and_8bit_words():
    codes = np.zeros((32, 32), np.uint8)
    codes[:, 10] = 0b111  # code 10 straddles words 0 and 1
    q = u32(export.gptq_tensors("fc", affine(codes, zeros=np.ones((32, 1)), bits=3))["fc.qweight"])
    assert q.shape == (3, 32)
    assert (q[0] == 0b11 << 30).all() and (q[1] == 1).all() and (q[2] == 0).all()
    c8 = np.tile(np.array([1, 2, 3, 4], np.uint8), (4, 1))
    q8 = u32(export.gptq_tensors("fc", affine(c8, zeros=np.ones((4, 1)), bits=8))["fc.qweight"])
    assert q8.shape == (1, 4) and (q8 == 0x04030201).all()


def test_awq_nibble_order_by_hand():
    codes = np.tile(np.arange(8, dtype=np.uint8)[:, None], (1, 16))  # codes[o, i] = o
    zeros = np.tile(np.arange(8)[:, None], (1, 2))                   # zeros[o, g] = o, no −1
    t = export.awq_tensors("fc", affine(codes, zeros=zeros, group_size=8))
    assert t["fc.qweight"].shape == (16, 1) and t["fc.qzeros"].shape == (2, 1)  # (in, out/8), (G, out/8)
    assert (u32(t["fc.qweight"]) == 0x75316420).all()  # slots hold outputs [0, 2, 4, 6, 1, 3, 5, 7]
    assert (u32(t["fc.qzeros"]) == 0x75316420).all()
    assert t["fc.scales"].shape == (2, 8) and "fc.g_idx" not in t


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_gptq_words_equal_plain_loops(rng, bits):
    n_rows, n_cols = 32, 64
    codes = rng.integers(0, 2**bits, (n_rows, n_cols), dtype=np.uint8)
    zeros = rng.integers(1, 2**bits, (n_rows, 4))
    t = export.gptq_tensors("fc", affine(codes, zeros=zeros, bits=bits, group_size=16), "gptq")
    want_w = np.array([loop_pack_stream(codes[o], bits) for o in range(n_rows)], np.uint32).T
    want_z = np.array([loop_pack_stream(zeros[:, g] - 1, bits) for g in range(4)], np.uint32)
    np.testing.assert_array_equal(u32(t["fc.qweight"]), want_w)
    np.testing.assert_array_equal(u32(t["fc.qzeros"]), want_z)


def test_awq_words_equal_plain_loops(rng):
    codes = rng.integers(0, 16, (24, 32), dtype=np.uint8)
    zeros = rng.integers(0, 16, (24, 2))
    t = export.awq_tensors("fc", affine(codes, zeros=zeros, group_size=16))
    np.testing.assert_array_equal(u32(t["fc.qweight"]),
                                  np.array([loop_pack_awq(codes[:, i]) for i in range(32)], np.uint32))
    np.testing.assert_array_equal(u32(t["fc.qzeros"]),
                                  np.array([loop_pack_awq(zeros[:, g]) for g in range(2)], np.uint32))


# --- what AutoGPTQ / AutoAWQ would decode from the files ----------------------------------------

def test_autogptq_decoder_reads_our_v1_tensors(minilm_layer):
    r = qviz.quantize(minilm_layer, "rtn", bits=4, group_size=128)
    t = export.gptq_tensors("fc", r, "gptq")
    np.testing.assert_array_equal(autogptq_v1_dequant_4bit(t, "fc"), fp16_scales(r).dequantize())


def test_autoawq_decoder_reads_our_tensors(minilm_layer):
    r = qviz.quantize(minilm_layer, "rtn", bits=4, group_size=64)
    t = export.awq_tensors("fc", r)
    np.testing.assert_array_equal(autoawq_dequant(t, "fc", 64), fp16_scales(r).dequantize())


# --- round trips ------------------------------------------------------------------------------

def assert_same(loaded, r):
    assert loaded.shape == r.shape and loaded.bits == r.bits and loaded.group_size == r.group_size
    np.testing.assert_array_equal(loaded.codes, r.codes)
    np.testing.assert_array_equal(loaded.scales, r.scales.astype(np.float16).astype(np.float32))
    if r.input_scale is None:
        assert loaded.input_scale is None
    else:
        np.testing.assert_array_equal(loaded.input_scale, r.input_scale.astype(np.float16).astype(np.float32))
    if r.zeros is None:
        assert loaded.zeros is None
    else:
        np.testing.assert_array_equal(loaded.zeros, r.zeros)
    if r.g_idx is None:
        assert loaded.g_idx is None
    else:
        np.testing.assert_array_equal(loaded.g_idx, r.g_idx)
    np.testing.assert_array_equal(loaded.dequantize(), fp16_scales(r).dequantize())


@pytest.fixture(scope="module")
def gptq_results():
    """Real MiniLM layers: GPTQ (calibrated, act_order and not), RTN sym and asym."""
    rng = np.random.default_rng(0)
    q = qviz.demo.layer("encoder.layer.0.attention.self.query")
    k = qviz.demo.layer("encoder.layer.0.attention.self.key")
    x = rng.standard_normal((256, 384)).astype(np.float32) * rng.lognormal(0, 1, 384).astype(np.float32)
    return {
        "asym": {"q": qviz.quantize(q, "gptq", bits=4, group_size=128, calib=x),
                 "k.weight": qviz.quantize(k, "rtn", bits=4, group_size=128)},
        "act_order": {"q": qviz.quantize(q, "gptq", bits=4, group_size=128, calib=x, act_order=True)},
        "sym3": {"q": qviz.quantize(q, "rtn", bits=3, group_size=128, sym=True)},
    }


@pytest.mark.parametrize("fmt", export.GPTQ_FORMATS)
@pytest.mark.parametrize("case", ["asym", "act_order", "sym3"])
def test_gptq_round_trip(tmp_path, gptq_results, fmt, case):
    results = gptq_results[case]
    folder = export_gptq(results, tmp_path / "ckpt", fmt)
    loaded = load_gptq(folder)
    assert sorted(loaded) == sorted(k.removesuffix(".weight") for k in results)
    for name, r in results.items():
        got = loaded[name.removesuffix(".weight")]
        assert got.method == "gptq" and got.info["checkpoint_format"] == fmt
        assert_same(got, r)
    assert not list(folder.glob(".*.part"))


def test_gptq_config(tmp_path, gptq_results):
    folder = export_gptq(gptq_results["act_order"], tmp_path, "gptq_v2", true_sequential=False,
                         model_config={"model_type": "bert", "hidden_size": 384})
    cfg = json.loads((folder / "quantize_config.json").read_text())
    assert cfg == {"bits": 4, "group_size": 128, "damp_percent": 0.01, "desc_act": True,
                   "static_groups": False, "sym": False, "true_sequential": False,
                   "model_name_or_path": None, "model_file_base_name": "model",
                   "quant_method": "gptq", "checkpoint_format": "gptq_v2"}
    model_cfg = json.loads((folder / "config.json").read_text())
    assert model_cfg["hidden_size"] == 384 and model_cfg["quantization_config"] == cfg
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "numpy") as f:
        assert f.metadata() == {"format": "pt"}
        assert sorted(f.keys()) == ["q.g_idx", "q.qweight", "q.qzeros", "q.scales"]
    sym = json.loads((export_gptq(gptq_results["sym3"], tmp_path / "s") / "quantize_config.json").read_text())
    assert sym["sym"] is True and sym["bits"] == 3 and sym["desc_act"] is False


def test_awq_round_trip_and_config(tmp_path, minilm_layer):
    r = qviz.quantize(minilm_layer, "rtn", bits=4, group_size=128)
    bias = np.arange(1536, dtype=np.float32)
    folder = export_awq({"fc": r}, tmp_path, extra={"fc.bias": bias})
    cfg = json.loads((folder / "quant_config.json").read_text())
    assert cfg == {"quant_method": "awq", "zero_point": True, "group_size": 128, "bits": 4,
                   "version": "gemm", "modules_to_not_convert": None}
    loaded = load_awq(folder)
    assert list(loaded) == ["fc"] and loaded["fc"].method == "awq"
    assert_same(loaded["fc"], r)
    from safetensors.numpy import load_file

    np.testing.assert_array_equal(load_file(folder / "model.safetensors")["fc.bias"], bias)


def test_awq_round_trip_of_a_real_awq_result(tmp_path):
    if "awq" not in qviz.method_names():
        pytest.skip("method 'awq' is not registered in qviz.api yet")
    rng = np.random.default_rng(0)
    w = qviz.demo.layer("encoder.layer.0.attention.self.value")
    x = rng.standard_normal((128, 384)).astype(np.float32)
    r = qviz.quantize(w, "awq", bits=4, group_size=128, calib=x)
    assert r.input_scale is not None  # alone, the layer keeps s
    folder = export_awq({"v": r}, tmp_path, scaled_activations={"v": "act"})
    got = load_awq(folder)["v"]
    assert_same(got, r)  # input scales compared as stored (fp16)
    np.testing.assert_allclose(got.dequantize(), r.dequantize(), rtol=2e-3, atol=1e-6)


def test_sym_awq_is_written_with_zero_8(tmp_path, minilm_layer):
    r = qviz.quantize(minilm_layer, "rtn", bits=4, group_size=128, sym=True)
    t = export.awq_tensors("fc", r)
    assert (u32(t["fc.qzeros"]) == 0x88888888).all()
    got = load_awq(export_awq({"fc": r}, tmp_path))["fc"]
    assert (got.zeros == 8).all()  # AWQ checkpoints always carry zeros
    np.testing.assert_array_equal(got.dequantize(), fp16_scales(r).dequantize())


def test_zero_point_zero_needs_v2_on_a_real_layer(tmp_path):
    w = qviz.demo.layer("encoder.layer.0.output.dense")  # one group has zero point 0
    r = qviz.quantize(w, "rtn", bits=4, group_size=128)
    assert (r.zeros == 0).any()
    with pytest.raises(ValueError, match=r"'fc'.*outside \[1, 16\].*gptq_v2"):
        export_gptq({"fc": r}, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written
    assert_same(load_gptq(export_gptq({"fc": r}, tmp_path, "gptq_v2"))["fc"], r)


def test_rewrite_replaces_and_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    r1 = affine(np.ones((8, 8)), zeros=np.ones((8, 1)))
    r2 = affine(np.full((8, 8), 2), zeros=np.ones((8, 1)))
    export_gptq({"fc": r1}, tmp_path)
    export_gptq({"fc": r2}, tmp_path, overwrite=True)
    assert (load_gptq(tmp_path)["fc"].codes == 2).all()
    import safetensors.numpy

    def broken(tensors, path, metadata=None):
        open(path, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        export_gptq({"fc": r1}, tmp_path, overwrite=True)
    assert (load_gptq(tmp_path)["fc"].codes == 2).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "quantize_config.json"]
    assert sorted(p.name for p in tmp_path.parent.iterdir() if p.name.startswith(f".{tmp_path.name}.")) == []


# --- bad inputs -------------------------------------------------------------------------------

@pytest.mark.parametrize("bits,match", [(3, "no 3-bit layout"), (8, "only 4-bit")])
def test_awq_needs_4_bits(tmp_path, bits, match):
    with pytest.raises(ValueError, match=match):
        export_awq({"fc": affine(np.zeros((32, 32)), zeros=np.ones((32, 1)), bits=bits)}, tmp_path)


def test_awq_refuses_act_order(tmp_path, gptq_results):
    with pytest.raises(ValueError, match="act_order"):
        export_awq(gptq_results["act_order"], tmp_path)


@pytest.mark.parametrize("shape,bits,group,match", [
    ((8, 12), 4, 12, r"'fc' has 12 input columns; 4-bit .* multiple of 8"),
    ((12, 8), 4, 8, r"'fc' has 12 output rows; 4-bit .* multiple of 8"),
    ((32, 40), 3, 40, r"'fc' has 40 input columns; 3-bit .* multiple of 32"),
    ((8, 96), 4, 64, r"'fc' has 96 input columns, not a multiple of its group size 64"),
])
def test_gptq_width_errors_name_layer_and_multiple(tmp_path, shape, bits, group, match):
    r = affine(np.zeros(shape), zeros=np.ones((shape[0], -(-shape[1] // group))), bits=bits,
               group_size=group)
    with pytest.raises(ValueError, match=match):
        export_gptq({"fc": r}, tmp_path)


def test_awq_width_error(tmp_path):
    with pytest.raises(ValueError, match=r"'fc' has 12 output rows.*multiple of 8"):
        export_awq({"fc": affine(np.zeros((12, 8)), zeros=np.ones((12, 1)))}, tmp_path)


def test_the_records_say_which_methods_export():
    from qviz import registry

    for fmt in ("gptq", "awq"):
        assert export.exporters(fmt) == [n for n, m in registry.methods().items() if fmt in m.exports]
        assert {"rtn", "gptq", "awq"} <= set(export.exporters(fmt))


def test_gguf_and_other_results_are_refused(tmp_path, rng):
    w = rng.standard_normal((8, 256)).astype(np.float32)
    with pytest.raises(ValueError, match=r"'Q4_K' result \(with mins\).*GGUF"):
        export_gptq({"fc": qviz.quantize(w, "Q4_K")}, tmp_path)
    with pytest.raises(ValueError, match="'Q8_0' result.*AWQ checkpoints.*one of rtn, gptq, awq"):
        export_awq({"fc": qviz.quantize(w, "Q8_0")}, tmp_path)
    with pytest.raises(ValueError, match="'nf4' result \\(with a codebook\\)"):
        export_gptq({"fc": qviz.quantize(w, "nf4")}, tmp_path)
    with pytest.raises(TypeError, match="not a QuantResult"):
        export_gptq({"fc": w}, tmp_path)
    with pytest.raises(TypeError, match="non-empty dict"):
        export_gptq({}, tmp_path)


def test_inconsistent_or_invalid_settings(tmp_path):
    r4 = affine(np.zeros((8, 16)), zeros=np.ones((8, 2)), group_size=8)
    r4b = affine(np.zeros((8, 32)), zeros=np.ones((8, 2)), group_size=16)
    per_channel = affine(np.zeros((8, 16)), zeros=np.ones((8, 1)), group_size=16)
    r8 = affine(np.zeros((8, 16)), zeros=np.ones((8, 2)), bits=8, group_size=8)
    with pytest.raises(ValueError, match="different group sizes"):
        export_gptq({"a": r4, "b": r4b}, tmp_path)
    with pytest.raises(ValueError, match="'b' is per channel .* groups of 8"):
        export_gptq({"a": r4, "b": per_channel}, tmp_path)
    with pytest.raises(ValueError, match="disagree on bits"):
        export_gptq({"a": r4, "b": r8}, tmp_path)
    with pytest.raises(ValueError, match="bits=8 contradicts"):
        export_gptq({"a": r4}, tmp_path, bits=8)
    with pytest.raises(ValueError, match="valid formats: gptq, gptq_v2"):
        export_gptq({"a": r4}, tmp_path, "marlin")
    with pytest.raises(ValueError, match="not whole numbers"):
        export_gptq({"a": affine(np.zeros((8, 8)), zeros=np.full((8, 1), 1.5))}, tmp_path)
    with pytest.raises(ValueError, match="fp16"):
        export_gptq({"a": affine(np.zeros((8, 8)), zeros=np.ones((8, 1)),
                                 scales=np.full((8, 1), 1e6))}, tmp_path)
    with pytest.raises(ValueError, match="name of a quantized tensor"):
        export_gptq({"a": r4}, tmp_path, extra={"a.qweight": np.zeros(3)})
    assert not any(tmp_path.iterdir())


def test_loading_the_wrong_kind(tmp_path):
    r = affine(np.zeros((8, 8)), zeros=np.ones((8, 1)))
    export_awq({"fc": r}, tmp_path / "awq")
    export_gptq({"fc": r}, tmp_path / "gptq")
    with pytest.raises(ValueError, match="'awq' checkpoint.*load_awq"):
        load_gptq(tmp_path / "awq")
    with pytest.raises(ValueError, match="'gptq' checkpoint.*load_gptq"):
        load_awq(tmp_path / "gptq")
    with pytest.raises(FileNotFoundError, match="neither"):
        load_gptq(tmp_path)
