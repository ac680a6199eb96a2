"""compressed-tensors checkpoints: qviz writes what compressed-tensors' own decompressors decode to
``dequantize()``, and reads what compressed-tensors' own compressors write.

Oracles (test-only): compressed-tensors 0.20 (``pack_to_int32``, ``pack_fp4_to_uint8``,
``pack_fp6_to_uint8``, the format compressors' ``compress``/``decompress`` and the model-free
``CompressedTensorsDequantizer``), torch's float8 casts. The float results are built here from
torch casts (the "fp8"/MX/NVFP4 methods' own tests check their quantizers); where those methods
are registered, their real results are exported too.
"""
import json

import numpy as np
import pytest

import qviz
from qviz import registry
from qviz.formats.minifloat import E8M0_VALUES
from qviz.io import compressed_tensors as ct
from qviz.io.compressed_tensors import export_compressed_tensors, load_compressed_tensors
from qviz.result import QuantResult

torch = pytest.importorskip("torch")
pytest.importorskip("compressed_tensors")

from compressed_tensors.compressors import BaseCompressor  # noqa: E402
from compressed_tensors.compressors.model_compressors.model_compressor import ModelCompressor  # noqa: E402
from compressed_tensors.compressors.mxfp6.helpers import (  # noqa: E402
    pack_fp6_to_uint8, unpack_fp6_from_uint8)
from compressed_tensors.compressors.nvfp4.helpers import (  # noqa: E402
    kE2M1ToFloat, pack_fp4_to_uint8, unpack_fp4_from_uint8)
from compressed_tensors.compressors.pack_quantized.helpers import (  # noqa: E402
    pack_to_int32, unpack_from_int32)
from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import (  # noqa: E402
    CompressedTensorsDequantizer)
from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus  # noqa: E402
from compressed_tensors.quantization.quant_scheme import preset_name_to_scheme  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

REPRESENTATIVE = ["encoder.layer.0.attention.self.query", "encoder.layer.3.intermediate.dense",
                  "encoder.layer.5.output.dense"]


def minilm_layers():
    return [n for n in qviz.demo.layers() if "embeddings" not in n]


# ------------------------------------------------------------------ helpers

def ct_decode(folder) -> dict[str, np.ndarray]:
    """compressed-tensors' model-free dequantizer on the folder: layer -> float32 weight."""
    tensors = load_file(str(folder / ct.WEIGHTS_FILE))
    out = CompressedTensorsDequantizer(str(folder), dtype=torch.float32).process(dict(tensors))
    return {k[: -len(".weight")]: v.numpy() for k, v in out.items() if k.endswith(".weight")}


def bf16(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(torch.bfloat16).float().numpy()


def codes_of(values: np.ndarray, fmt: str) -> np.ndarray:
    """The element code of each representable value (sign of -0.0 kept)."""
    table = ct.element_values(fmt)
    half = table.size // 2
    pos = table[:half] if fmt != "e4m3" else table[:half - 1]  # ascending magnitudes (E4M3: no NaN)
    v = np.asarray(values, np.float32)
    mag = np.searchsorted(pos, np.abs(v))
    assert np.array_equal(pos[np.minimum(mag, pos.size - 1)], np.abs(v)), "not a representable value"
    return (mag | (np.signbit(v).astype(np.int64) * half)).astype(np.uint8)


def fp8_result(w, granularity="channel", block=(128, 128)):
    """FP8 E4M3 as compressed-tensors computes it: scale = amax/448, code = fp8(w / scale)."""
    n_rows, n_cols = w.shape
    t = torch.from_numpy(w)
    if granularity == "tensor":
        block_scale = (t.abs().amax() / 448).reshape(1, 1)
        full = block_scale
        tiled = full
    elif granularity == "channel":
        block_scale = t.abs().amax(dim=1, keepdim=True) / 448
        full = tiled = block_scale
    else:
        br, bc = block
        rb, cb = -(-n_rows // br), -(-n_cols // bc)
        pad = torch.nn.functional.pad(t, (0, cb * bc - n_cols, 0, rb * br - n_rows))
        block_scale = pad.reshape(rb, br, cb, bc).abs().amax(dim=(1, 3)) / 448
        full = block_scale.repeat_interleave(br, 0)[:n_rows]
        tiled = full.repeat_interleave(bc, 1)[:, :n_cols]
    block_scale = torch.where(block_scale == 0, torch.finfo(torch.float32).eps, block_scale)
    full = torch.where(full == 0, torch.finfo(torch.float32).eps, full)
    tiled = torch.where(tiled == 0, torch.finfo(torch.float32).eps, tiled)
    codes = (t / tiled).clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    g = block[1] if granularity == "block" else n_cols
    scales = full.numpy().astype(np.float32)
    stored = block_scale.numpy().astype(np.float32).reshape((1,) if granularity == "tensor" else -1,
                                                           *(() if granularity == "tensor" else
                                                             (block_scale.shape[1],)))
    info = {"fmt": "e4m3", "granularity": granularity}
    if granularity == "block":
        info["block"] = block
    return QuantResult("fp8", w.shape, 8, g, codes, scales, codebook=ct.element_values("e4m3"),
                       stored={"weight_scale": stored}, info=info)


def mx_result(w, method):
    """OCP MX: E8M0 scale 2**(floor(log2 amax) − emax_elem), elements cast as compressed-tensors casts."""
    from compressed_tensors.quantization.quant_args import FP4_E2M1_DATA, FP6_E2M3_DATA

    elem = {"mxfp4": "e2m1", "mxfp6_e2m3": "e2m3", "mxfp8": "e4m3"}[method]
    emax, vmax = {"e2m1": (2, 6.0), "e2m3": (2, 7.5), "e4m3": (8, 448.0)}[elem]
    n_rows, n_cols = w.shape
    blocks = w.reshape(n_rows, n_cols // 32, 32)
    amax = np.abs(blocks).max(axis=2)
    with np.errstate(divide="ignore"):
        k = np.where(amax > 0, np.floor(np.log2(np.where(amax > 0, amax, 1))) - emax, -127)
    e = np.clip(k + 127, 0, 254).astype(np.uint8)
    scales = E8M0_VALUES[e]
    x = torch.from_numpy((blocks / scales[:, :, None]).astype(np.float32)).clamp(-vmax, vmax)
    if elem == "e2m1":
        vals = FP4_E2M1_DATA.cast_to_fp4(x.clone())
    elif elem == "e2m3":
        vals = FP6_E2M3_DATA.cast_to_fp6(x.clone())
    else:
        vals = x.to(torch.float8_e4m3fn).float()
    vals = vals.numpy().reshape(n_rows, n_cols)
    vals = np.where(vals == 0, np.float32(0), vals)  # compressed-tensors' casts keep no -0 sign we need
    codes = codes_of(vals, elem)
    return QuantResult(method, w.shape, {"e2m1": 4, "e2m3": 6, "e4m3": 8}[elem], 32, codes, scales,
                       codebook=ct.element_values(elem), stored={"scale": e},
                       info={"fmt": elem, "granularity": "block"})


def nvfp4_result(w, names="ct"):
    """NVFP4 as compressed-tensors computes it: global g = 448·6/amax, block scale e4m3(amax_b/6·g)."""
    from compressed_tensors.quantization.quant_args import FP4_E2M1_DATA

    n_rows, n_cols = w.shape
    t = torch.from_numpy(w)
    amax = t.abs().amax()
    amax = torch.where(amax == 0, torch.tensor(1.0), amax)  # an all-zero matrix: any global scale
    g = (448.0 * 6.0 / amax).to(torch.float32).reshape(1)
    blocks = t.reshape(n_rows, n_cols // 16, 16)
    s = (blocks.abs().amax(dim=2) / 6.0 * g).clamp(max=448).to(torch.float8_e4m3fn)
    s_bytes = s.view(torch.uint8).numpy()
    factor = (s.float() / g).numpy().astype(np.float32)
    safe = np.where(factor == 0, np.float32(1), factor)
    x = torch.from_numpy((blocks.numpy() / safe[:, :, None]).astype(np.float32)).clamp(-6, 6)
    vals = FP4_E2M1_DATA.cast_to_fp4(x.clone()).numpy().reshape(n_rows, n_cols)
    vals = np.where(vals == 0, np.float32(0), vals)
    codes = codes_of(vals, "e2m1")
    if names == "ct":
        stored = {"block_scale": s_bytes, "weight_global_scale": np.array(g.item(), np.float32)}
        scales = factor
    else:  # torchao's convention: a per-tensor scale p that multiplies
        p = np.float32(amax.item() / (448.0 * 6.0))
        stored = {"block_scale": s_bytes, "per_tensor_scale": np.array(p, np.float32)}
        scales = (ct.element_values("e4m3")[s_bytes] * p).astype(np.float32)
    return QuantResult("nvfp4", w.shape, 4, 16, codes, scales, codebook=ct.element_values("e2m1"),
                       stored=stored, info={"fmt": "e2m1", "granularity": "block"})


def assert_same_result(back: QuantResult, r: QuantResult):
    assert back.shape == r.shape and back.bits == r.bits
    assert np.array_equal(back.codes, r.codes)
    assert np.array_equal(np.broadcast_to(back.scales, (r.shape[0], r.n_groups)),
                          np.broadcast_to(r.scales, (r.shape[0], r.n_groups)))
    assert (back.zeros is None) == (r.zeros is None)
    if r.zeros is not None:
        assert np.array_equal(np.broadcast_to(back.zeros, (r.shape[0], r.n_groups)),
                              np.broadcast_to(r.zeros, (r.shape[0], r.n_groups)))
    assert np.array_equal(back.dequantize(), r.dequantize())


AFFINE = {
    "w4_g128_sym": dict(bits=4, group_size=128, sym=True),
    "w4_g128_asym": dict(bits=4, group_size=128),
    "w8_channel_sym": dict(bits=8, group_size=-1, sym=True),
    "w8_g64_asym": dict(bits=8, group_size=64),
    "w3_g32_asym": dict(bits=3, group_size=32),
    "w2_channel_asym": dict(bits=2, group_size=-1),
    "w4_tensor_asym": dict(bits=4, per_tensor=True),
}

FLOATS = {
    "fp8_tensor": lambda w: fp8_result(w, "tensor"),
    "fp8_channel": lambda w: fp8_result(w, "channel"),
    "fp8_block": lambda w: fp8_result(w, "block"),
    "fp8_block_ragged": lambda w: fp8_result(w, "block", (96, 80)),
    "mxfp4": lambda w: mx_result(w, "mxfp4"),
    "mxfp6_e2m3": lambda w: mx_result(w, "mxfp6_e2m3"),
    "mxfp8": lambda w: mx_result(w, "mxfp8"),
    "nvfp4": nvfp4_result,
}
#: formats compressed-tensors decodes in bfloat16
BF16_DECODED = {"mxfp4", "mxfp6_e2m3", "mxfp8", "nvfp4"}


# ------------------------------------------------------------------ layouts against the owner's code

@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [7, 32, 100, 128, 129])
def test_int32_stream_is_compressed_tensors_pack(rng, bits, n):
    v = rng.integers(0, 1 << bits, (5, n)).astype(np.uint8)
    signed = torch.from_numpy(v.astype(np.int16) - (1 << (bits - 1))).to(torch.int8)
    ours = ct.pack_int32(v, bits)
    assert ours.dtype == np.int32
    assert np.array_equal(ours, pack_to_int32(signed, bits).numpy())
    assert np.array_equal(np.ascontiguousarray(ours.T), pack_to_int32(signed.T.contiguous(), bits, 0).numpy())
    assert np.array_equal(ct.unpack_int32(ours, bits, n), v)
    theirs = unpack_from_int32(torch.from_numpy(ours), bits, torch.Size([5, n])).numpy()
    assert np.array_equal(theirs.astype(np.int16) + (1 << (bits - 1)), v)


def test_4bit_word_by_hand():
    words = ct.pack_int32(np.arange(16, dtype=np.uint8)[None] % 16, 4).view(np.uint32)
    assert [hex(int(x)) for x in words[0]] == ["0x76543210", "0xfedcba98"]


def test_element_tables_are_the_owners():
    e4m3 = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float().numpy()
    assert np.array_equal(ct.element_values("e4m3"), e4m3, equal_nan=True)
    assert np.array_equal(ct.element_values("e2m1")[:8], kE2M1ToFloat.numpy())
    assert np.array_equal(ct.element_values("e2m1")[8:], -kE2M1ToFloat.numpy())
    from compressed_tensors.compressors.mxfp6.helpers import kE2M3ToFloat
    assert np.array_equal(ct.element_values("e2m3")[:32], kE2M3ToFloat.numpy().astype(np.float32))


def test_fp4_fp6_packing_is_the_owners(rng):
    c4 = rng.integers(0, 16, (6, 64)).astype(np.uint8)
    vals = torch.from_numpy(ct.element_values("e2m1")[c4])
    assert np.array_equal(ct.pack_fp4(c4), pack_fp4_to_uint8(vals).numpy())  # -0.0 (code 8) included
    assert np.array_equal(ct.element_values("e2m1")[ct.unpack_fp4(ct.pack_fp4(c4))],
                          unpack_fp4_from_uint8(torch.from_numpy(ct.pack_fp4(c4)), 6, 64,
                                                torch.float32).numpy())
    c6 = rng.integers(0, 64, (6, 64)).astype(np.uint8)
    vals6 = torch.from_numpy(ct.element_values("e2m3")[c6])
    assert np.array_equal(ct.pack_fp6(c6), pack_fp6_to_uint8(vals6).numpy())
    assert np.array_equal(ct.unpack_fp6(ct.pack_fp6(c6)), c6)
    assert np.array_equal(ct.element_values("e2m3")[c6],
                          unpack_fp6_from_uint8(torch.from_numpy(ct.pack_fp6(c6)), 6, 64,
                                                torch.float32).numpy())


# ------------------------------------------------------------------ qviz writes, compressed-tensors decodes

def export_and_decode(tmp_path, results, **kw):
    folder = export_compressed_tensors(results, tmp_path / "ck", **kw)
    return folder, ct_decode(folder), load_compressed_tensors(folder)


@pytest.mark.parametrize("layer", REPRESENTATIVE)
@pytest.mark.parametrize("case", list(AFFINE))
def test_affine_minilm_decodes_bit_for_bit(tmp_path, layer, case):
    r = qviz.quantize(qviz.demo.layer(layer), "rtn", **AFFINE[case])
    folder, decoded, back = export_and_decode(tmp_path, {layer: r})
    assert np.array_equal(decoded[layer], r.dequantize())
    assert_same_result(back[layer], r)
    assert back[layer].method == "rtn"


@pytest.mark.parametrize("layer", REPRESENTATIVE)
@pytest.mark.parametrize("case", list(FLOATS))
def test_float_minilm_decodes_to_dequantize(tmp_path, layer, case):
    r = FLOATS[case](np.array(qviz.demo.layer(layer)))
    folder, decoded, back = export_and_decode(tmp_path, {layer: r})
    want = r.dequantize()
    assert np.array_equal(decoded[layer], bf16(want) if r.method in BF16_DECODED else want)
    if r.method in BF16_DECODED and r.method != "nvfp4":
        assert np.array_equal(bf16(want), want)  # MX products are exact in bfloat16 here
    assert_same_result(back[layer], r)
    assert back[layer].method == r.method
    assert back[layer].info["fmt"] == r.info["fmt"]


@pytest.mark.slow
@pytest.mark.parametrize("layer", minilm_layers())
def test_every_minilm_layer(tmp_path, layer):
    w = np.array(qviz.demo.layer(layer))
    results = {f"{case}.{layer}": qviz.quantize(w, "rtn", **kw) for case, kw in AFFINE.items()}
    results.update({f"{case}.{layer}": make(w) for case, make in FLOATS.items()})
    folder, decoded, back = export_and_decode(tmp_path, results)
    for name, r in results.items():
        want = r.dequantize()
        assert np.array_equal(decoded[name], bf16(want) if r.method in BF16_DECODED else want), name
        assert_same_result(back[name], r)


def test_mixed_checkpoint_config(tmp_path):
    w = np.array(qviz.demo.layer(REPRESENTATIVE[0]))
    results = {"a": qviz.quantize(w, "rtn", bits=4, group_size=128, sym=True),
               "b": qviz.quantize(w, "rtn", bits=4, group_size=128, sym=True),
               "c": fp8_result(w, "block"), "d": nvfp4_result(w), "e.weight": mx_result(w, "mxfp8")}
    folder, decoded, back = export_and_decode(tmp_path, results, model_config={"model_type": "bert"})
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "bert"
    qc = cfg["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "mixed-precision"
    groups = {tuple(g["targets"]): g for g in qc["config_groups"].values()}
    assert groups[("a", "b")]["weights"] == {"num_bits": 4, "type": "int", "symmetric": True,
                                            "group_size": 128, "strategy": "group", "dynamic": False}
    assert groups[("a", "b")]["format"] == "pack-quantized"
    assert groups[("c",)]["weights"]["block_structure"] == [128, 128]
    assert groups[("d",)]["format"] == "nvfp4-pack-quantized"
    assert groups[("e",)]["format"] == "mxfp8-quantized"
    # compressed-tensors' own model of the config accepts it and serializes the same weights args
    parsed = QuantizationConfig.model_validate(qc)
    for name, g in qc["config_groups"].items():
        assert parsed.config_groups[name].weights.model_dump() == g["weights"]
    assert sorted(back) == ["a", "b", "c", "d", "e"]


def test_the_preset_schemes_serialize_as_ours(tmp_path):
    w = np.array(qviz.demo.layer(REPRESENTATIVE[0]))
    cases = {"W4A16": qviz.quantize(w, "rtn", bits=4, group_size=128, sym=True),
             "W4A16_ASYM": qviz.quantize(w, "rtn", bits=4, group_size=128),
             "NVFP4A16": nvfp4_result(w), "MXFP4A16": mx_result(w, "mxfp4"),
             "MXFP6A16": mx_result(w, "mxfp6_e2m3"), "MXFP8A16": mx_result(w, "mxfp8"),
             "FP8_BLOCK": fp8_result(w, "block")}
    for preset, r in cases.items():
        _, args, _ = ct.layer_tensors("fc", r)
        assert args == preset_name_to_scheme(preset, ["fc"]).weights.model_dump(), preset


def test_scale_dtype_rule(tmp_path):
    """float16/bfloat16 scales: compressed-tensors decodes in that dtype = the loaded result rounded to it."""
    w = np.array(qviz.demo.layer(REPRESENTATIVE[1]))
    for dtype, tdtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        r = qviz.quantize(w, "rtn", bits=4, group_size=128)
        f = fp8_result(w, "channel")
        folder = export_compressed_tensors({"q": r, "f": f}, tmp_path / dtype, scale_dtype=dtype)
        decoded, back = ct_decode(folder), load_compressed_tensors(folder)
        for name in ("q", "f"):
            want = torch.from_numpy(back[name].dequantize()).to(tdtype).float().numpy()
            assert np.array_equal(decoded[name], want)
            assert np.array_equal(back[name].codes, {"q": r, "f": f}[name].codes)


def test_nvfp4_with_a_multiplying_per_tensor_scale(tmp_path):
    """torchao's convention (scale × p): the writer finds the global scale that reproduces the factors."""
    w = np.array(qviz.demo.layer(REPRESENTATIVE[2]))
    r = nvfp4_result(w, names="torchao")
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folder, decoded, back = export_and_decode(tmp_path, {"fc": r})
    if not caught:
        assert np.array_equal(back["fc"].scales, r.scales)
        assert np.array_equal(decoded["fc"], bf16(r.dequantize()))
    assert np.array_equal(back["fc"].codes, r.codes)


# ------------------------------------------------------------------ compressed-tensors writes, qviz reads

def ct_checkpoint(tmp_path, preset, w, scale, zero_point=None, global_scale=None):
    """Compress one layer with compressed-tensors' own compressor; save as it saves."""
    scheme = preset_name_to_scheme(preset, ["fc"])
    scheme.input_activations = None
    fmt = {"W4A16": "pack-quantized", "W4A16_ASYM": "pack-quantized", "W8A16": "pack-quantized",
           "FP8_BLOCK": "float-quantized", "NVFP4A16": "nvfp4-pack-quantized",
           "MXFP4A16": "mxfp4-pack-quantized", "MXFP6A16": "mxfp6-pack-quantized",
           "MXFP8A16": "mxfp8-quantized", "FP8_CHANNEL": "float-quantized"}[preset]
    scheme.format = fmt
    state = {"weight": torch.from_numpy(w), "weight_scale": scale}
    if zero_point is not None:
        state["weight_zero_point"] = zero_point
    if global_scale is not None:
        state["weight_global_scale"] = global_scale
    compressed = BaseCompressor.get_value_from_registry(fmt).compress(state, scheme)
    folder = tmp_path / preset
    folder.mkdir()
    save_file({f"fc.{k}": v.contiguous() for k, v in compressed.items()}, str(folder / "model.safetensors"))
    qc = QuantizationConfig(config_groups={"group_0": scheme}, format=fmt,
                            quantization_status=QuantizationStatus.COMPRESSED)
    ModelCompressor(quantization_config=qc).update_config(str(folder))
    decoded = BaseCompressor.get_value_from_registry(fmt).decompress(dict(compressed), scheme)["weight"]
    return folder, compressed, decoded.float().numpy()


@pytest.mark.parametrize("preset", ["W4A16", "W4A16_ASYM", "W8A16"])
def test_reads_compressed_tensors_pack_quantized(tmp_path, preset):
    w = np.array(qviz.demo.layer(REPRESENTATIVE[1]))
    bits = 8 if preset == "W8A16" else 4
    r = qviz.quantize(w, "rtn", bits=bits, group_size=128, sym=preset != "W4A16_ASYM")
    zp = None
    if r.zeros is not None:
        zp = torch.from_numpy((r.zeros - (1 << (bits - 1))).astype(np.int8))
    folder, compressed, decoded = ct_checkpoint(tmp_path, preset, w, torch.from_numpy(r.scales), zp)
    back = load_compressed_tensors(folder)["fc"]
    q = unpack_from_int32(compressed["weight_packed"], bits, torch.Size(w.shape)).numpy()
    assert np.array_equal(back.codes, q.astype(np.int16) + (1 << (bits - 1)))
    assert np.array_equal(back.scales, r.scales)
    assert np.array_equal(back.dequantize(), decoded)
    assert np.array_equal(back.codes, r.codes)  # compressed-tensors' rounding = qviz RTN's on these scales


def test_reads_compressed_tensors_fp8(tmp_path):
    w = np.array(qviz.demo.layer(REPRESENTATIVE[0]))
    r = fp8_result(w, "block")
    folder, compressed, decoded = ct_checkpoint(tmp_path, "FP8_BLOCK", w,
                                                torch.from_numpy(r.stored["weight_scale"]))
    back = load_compressed_tensors(folder)["fc"]
    assert np.array_equal(back.codes, compressed["weight"].view(torch.uint8).numpy())
    assert np.array_equal(back.codes, r.codes)
    assert np.array_equal(back.stored["weight_scale"], r.stored["weight_scale"])
    assert np.array_equal(back.dequantize(), decoded)
    assert back.info["block"] == (128, 128)


@pytest.mark.parametrize("method,preset", [("mxfp4", "MXFP4A16"), ("mxfp6_e2m3", "MXFP6A16"),
                                           ("mxfp8", "MXFP8A16")])
def test_reads_compressed_tensors_mx(tmp_path, method, preset):
    w = np.array(qviz.demo.layer(REPRESENTATIVE[2]))
    r = mx_result(w, method)
    folder, compressed, decoded = ct_checkpoint(tmp_path, preset, w, torch.from_numpy(r.scales))
    back = load_compressed_tensors(folder)["fc"]
    assert np.array_equal(back.stored["scale"], compressed["weight_scale"].numpy())
    assert np.array_equal(back.stored["scale"], r.stored["scale"])
    assert np.array_equal(back.scales, r.scales)
    assert np.array_equal(bf16(back.dequantize()), decoded)
    assert np.array_equal(back.dequantize(), r.dequantize())


def test_reads_compressed_tensors_nvfp4(tmp_path):
    w = np.array(qviz.demo.layer(REPRESENTATIVE[2]))
    r = nvfp4_result(w)
    block = torch.from_numpy(r.stored["block_scale"]).view(torch.float8_e4m3fn).float()
    folder, compressed, decoded = ct_checkpoint(
        tmp_path, "NVFP4A16", w, block, global_scale=torch.from_numpy(r.stored["weight_global_scale"]).reshape(1))
    back = load_compressed_tensors(folder)["fc"]
    assert np.array_equal(back.stored["weight_scale"], r.stored["block_scale"])
    assert np.array_equal(back.scales, r.scales)
    assert np.array_equal(bf16(back.dequantize()), decoded)
    assert np.array_equal(back.codes, ct.unpack_fp4(compressed["weight_packed"].numpy()))


# ------------------------------------------------------------------ edge rows

def edge_matrix(case, rng, n_rows=16, n_cols=256):
    # 16 rows: compressed-tensors 0.20 cannot unpack its own 4-bit zero points of a layer with <= 8
    # outputs (one int32 row: unpack_from_int32 views a (G, 1) transpose as bytes and raises)
    w = rng.standard_normal((n_rows, n_cols)).astype(np.float32)
    if case == "zeros":
        w[:] = 0
    elif case == "constant":
        w[:] = 0.37
    elif case == "outlier":
        w[:, 5] = 1e3
    elif case == "subnormal":
        w *= np.float32(1e-39)
    elif case == "fp8_max":
        w[:, ::2] = 448.0
        w[:, 1::2] = -448.0
    elif case == "fp4_max":
        w = np.sign(w) * np.float32(6.0)
    elif case == "mixed_zero_rows":
        w[::2] = 0
    return w


EDGE = ["zeros", "constant", "outlier", "subnormal", "fp8_max", "fp4_max", "mixed_zero_rows"]


@pytest.mark.parametrize("case", EDGE)
def test_edge_rows(tmp_path, rng, case):
    w = edge_matrix(case, rng)
    results = {f"rtn{i}": qviz.quantize(w, "rtn", **kw) for i, kw in enumerate(AFFINE.values())}
    results.update({name: make(w) for name, make in FLOATS.items() if name != "fp8_block_ragged"})
    if case == "subnormal":  # 448·6 / amax overflows float32: no finite NVFP4 global scale
        with pytest.raises(ValueError, match="no finite global scale"):
            export_compressed_tensors({"nvfp4": results.pop("nvfp4")}, tmp_path / "nv")
    folder, decoded, back = export_and_decode(tmp_path, results)
    for name, r in results.items():
        want = r.dequantize()
        assert np.isfinite(decoded[name]).all()
        assert np.array_equal(decoded[name], bf16(want) if r.method in BF16_DECODED else want), name
        assert_same_result(back[name], r)


# ------------------------------------------------------------------ the formats' own results, once registered

@pytest.mark.parametrize("method,options", [
    ("fp8", {}), ("fp8", {"granularity": "tensor"}), ("fp8", {"granularity": "block"}),
    ("mxfp4", {}), ("mxfp6_e2m3", {}), ("mxfp8", {}), ("nvfp4", {"convention": "compressed-tensors"})])
@pytest.mark.parametrize("layer", REPRESENTATIVE)
def test_registered_float_methods(tmp_path, method, options, layer):
    if method not in registry.methods():
        pytest.skip(f"{method!r} is not registered in this checkout")
    r = qviz.quantize(qviz.demo.layer(layer), method, **options)
    folder, decoded, back = export_and_decode(tmp_path, {"fc": r})
    want = r.dequantize()
    assert np.array_equal(decoded["fc"], bf16(want) if method in BF16_DECODED else want)
    assert_same_result(back["fc"], r)


def test_registered_nvfp4_torchao_convention(tmp_path):
    """torchao multiplies by its per-tensor scale, compressed-tensors divides by a global one: same codes
    and block bytes, factors within float32 rounding, and a warning naming the exact convention."""
    if "nvfp4" not in registry.methods():
        pytest.skip("'nvfp4' is not registered in this checkout")
    r = qviz.quantize(qviz.demo.layer(REPRESENTATIVE[1]), "nvfp4", convention="torchao")
    with pytest.warns(UserWarning, match="convention='compressed-tensors'"):
        folder, decoded, back = export_and_decode(tmp_path, {"fc": r})
    assert np.array_equal(back["fc"].codes, r.codes)
    assert np.array_equal(back["fc"].stored["weight_scale"], r.stored["block_scale"])
    assert np.array_equal(decoded["fc"], bf16(back["fc"].dequantize()))
    assert np.abs(back["fc"].scales - r.scales).max() <= np.spacing(r.scales).max()


@pytest.mark.parametrize("method,options,match", [
    ("fp8", {"fmt": "e5m2"}, "E4M3 only"), ("mxfp8", {"fmt": "e5m2"}, "E4M3 only"),
    ("mxfp6_e3m2", {}, "E2M3 only")])
def test_registered_formats_compressed_tensors_lacks(tmp_path, method, options, match):
    if method not in registry.methods():
        pytest.skip(f"{method!r} is not registered in this checkout")
    r = qviz.quantize(qviz.demo.layer(REPRESENTATIVE[0]), method, **options)
    with pytest.raises(ValueError, match=match):
        export_compressed_tensors({"fc": r}, tmp_path / "x")


# ------------------------------------------------------------------ what cannot be written, and damage

def test_refusals(tmp_path, rng):
    w = rng.standard_normal((32, 256)).astype(np.float32)
    f8 = fp8_result(w)
    mx6 = mx_result(w, "mxfp6_e2m3")
    cases = [
        (f8.__class__(**{**f8.__dict__, "info": {**f8.info, "fmt": "e5m2"}}), "E4M3 only"),
        (mx6.__class__(**{**mx6.__dict__, "method": "mxfp6_e3m2"}), "E2M3 only"),
        (qviz.quantize(w, "rtn", bits=4, group_size=96), "whole groups"),
        (qviz.quantize(w, "kmeans") if "kmeans" in registry.methods() else None, "affine"),
        (qviz.quantize(w, "Q4_K"), "affine"),
    ]
    r = qviz.quantize(w, "rtn", bits=4, group_size=64)
    import dataclasses
    cases.append((dataclasses.replace(r, g_idx=np.argsort(rng.random(256)).astype(np.int32) // 64),
                  "actorder='weight'"))
    cases.append((dataclasses.replace(r, input_scale=np.ones(256, np.float32)), "input scale"))
    cases.append((dataclasses.replace(mx6, scales=mx6.scales * np.float32(1.5)), "powers of two"))
    nv = nvfp4_result(w)
    cases.append((dataclasses.replace(nv, stored={}), "block_scale"))
    for bad, match in cases:
        if bad is None:
            continue
        with pytest.raises(ValueError, match=match):
            export_compressed_tensors({"fc": bad}, tmp_path / "x")
        assert not (tmp_path / "x").exists()
    with pytest.raises(TypeError):
        export_compressed_tensors({}, tmp_path / "x")
    with pytest.raises(ValueError, match="scale_dtype"):
        export_compressed_tensors({"fc": r}, tmp_path / "x", scale_dtype="int8")


def test_folder_is_written_whole_and_results_untouched(tmp_path, rng):
    w = rng.standard_normal((32, 256)).astype(np.float32)
    r = qviz.quantize(w, "rtn", bits=4, group_size=64)
    f = fp8_result(w, "block")
    before = {k: np.copy(v) for k, v in (("codes", r.codes), ("scales", r.scales), ("fc", f.codes))}
    folder = export_compressed_tensors({"a": r, "b": f}, tmp_path / "ck")
    with pytest.raises(FileExistsError):
        export_compressed_tensors({"a": r}, folder)
    export_compressed_tensors({"a": r}, folder, overwrite=True)
    assert sorted(load_compressed_tensors(folder)) == ["a"]
    assert np.array_equal(before["codes"], r.codes) and np.array_equal(before["scales"], r.scales)
    assert np.array_equal(before["fc"], f.codes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary folder left


def damaged(tmp_path, edit_config=None, edit_tensors=None):
    w = np.random.default_rng(1).standard_normal((32, 256)).astype(np.float32)
    folder = export_compressed_tensors({"fc": qviz.quantize(w, "rtn", bits=4, group_size=64),
                                        "ff": mx_result(w, "mxfp4")}, tmp_path / "ck")
    if edit_config:
        cfg = json.loads((folder / "config.json").read_text())
        edit_config(cfg["quantization_config"])
        (folder / "config.json").write_text(json.dumps(cfg))
    if edit_tensors:
        t = load_file(str(folder / "model.safetensors"))
        edit_tensors(t)
        save_file(t, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("config,tensors,match", [
    (lambda c: c.update(quant_method="gptq"), None, "load_gptq"),
    (lambda c: c["config_groups"]["group_0"]["weights"].update(group_size=32), None, r"fc\.weight_scale"),
    (lambda c: c["config_groups"]["group_0"]["weights"].update(num_bits=8), None, r"fc\.weight_packed"),
    (lambda c: c["config_groups"]["group_0"]["weights"].update(num_bits="4"), None, "num_bits"),
    (lambda c: c["config_groups"]["group_0"].update(format="sparse-bitmask"), None, "not read here"),
    (lambda c: c["config_groups"]["group_1"]["weights"].update(group_size=16), None, "group_size 32"),
    (lambda c: c["config_groups"]["group_0"]["weights"].update(dynamic=True), None, "dynamic"),
    (None, lambda t: t.pop("fc.weight_zero_point"), r"no fc\.weight_zero_point"),
    (None, lambda t: t.__setitem__("fc.weight_scale", torch.full((32, 4), float("nan"))), "non-finite"),
    (None, lambda t: t.__setitem__("ff.weight_scale", torch.full((32, 8), 255, dtype=torch.uint8)), "NaN"),
    (None, lambda t: t.__setitem__("fc.weight_shape", torch.tensor([32, 512])), r"fc\.weight_packed"),
    (None, lambda t: t.__setitem__("ff.weight_scale", torch.zeros((32, 7), dtype=torch.uint8)),
     r"ff\.weight_scale .* expected uint8 \(32, 8\)"),
])
def test_damaged_checkpoints_name_the_tensor(tmp_path, config, tensors, match):
    folder = damaged(tmp_path, config, tensors)
    with pytest.raises(ValueError, match=match):
        load_compressed_tensors(folder)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_compressed_tensors(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "compressed-tensors", "config_groups": {"g": {"targets": ["Linear"], "weights": {
            "num_bits": 4, "type": "int", "strategy": "group", "group_size": 128}}}}}))
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_compressed_tensors(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_compressed_tensors(tmp_path)
