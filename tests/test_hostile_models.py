"""Issue 12, checkpoints and whole models: AWQ input scales in checkpoints, whole-folder export,
tampered checkpoints, and errors that name the layer and the cause (items 1, 5, 6 and parts of 13)."""
import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

import qviz  # noqa: E402
from qviz.algorithms.gptq import RTNFormat, gptq, hessian  # noqa: E402
from qviz.io import export  # noqa: E402
from qviz.io.export import export_awq, export_gptq, load_awq, load_gptq  # noqa: E402
from qviz.models import quantize_model  # noqa: E402
from qviz.models.qlinear import QuantLinear, to_quantized_modules  # noqa: E402
from test_export import affine, autoawq_dequant, fp16_scales  # noqa: E402


@pytest.fixture(scope="module")
def awq_layer():
    """A real AWQ result of one layer alone: it keeps its input scale s."""
    rng = np.random.default_rng(0)
    w = qviz.demo.layer("encoder.layer.0.attention.self.value")
    x = (rng.standard_normal((128, 384)) * rng.lognormal(0, 1, 384)).astype(np.float32)
    r = qviz.quantize(w, "awq", bits=4, group_size=128, calib=x)
    assert r.input_scale is not None and not np.all(r.input_scale == 1)
    return r, x


# --- item 1: AWQ export keeps the input scale (or refuses) ------------------------------------

def test_awq_export_refuses_an_input_scale_it_cannot_place(tmp_path, awq_layer):
    r, _ = awq_layer
    with pytest.raises(ValueError, match=r"1 layer\(s\) keep an AWQ input scale.*: v\. .*Q\(W·diag\(s\)\)"
                                         r".*scaled_activations"):
        export_awq({"v": r}, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists() and not list(tmp_path.iterdir())


def test_gptq_export_refuses_an_input_scale(tmp_path, awq_layer):
    r, _ = awq_layer
    with pytest.raises(ValueError, match=r"layer 'v' keeps an AWQ input scale.*no place for s"):
        export_gptq({"v": r}, tmp_path / "ckpt", "gptq_v2")
    assert not list(tmp_path.iterdir())


def test_awq_round_trip_gives_the_layer_outputs_of_the_in_memory_result(tmp_path, awq_layer):
    r, x = awq_layer
    folder = export_awq({"v": r}, tmp_path / "ckpt", scaled_activations={"v": "act"})
    tensors = safetensors_numpy.load_file(folder / "model.safetensors")
    assert tensors["act.scales"].dtype == np.float16 and tensors["act.scales"].shape == (384,)
    loaded = load_awq(folder)["v"]
    np.testing.assert_array_equal(loaded.input_scale, r.input_scale.astype(np.float16).astype(np.float32))
    want = fp16_scales(r).dequantize()  # the result with its scales as checkpoints store them (fp16)
    np.testing.assert_array_equal(loaded.dequantize(), want)
    # what an AutoAWQ-style loader computes: dequantize_gemm, then the ScaledActivation's division
    np.testing.assert_allclose(autoawq_dequant(tensors, "v", 128) / tensors["act.scales"].astype(np.float32),
                               want, rtol=1e-6, atol=1e-7)
    y_mem = x @ r.dequantize().T
    y_ckpt = x @ loaded.dequantize().T
    assert np.linalg.norm(y_ckpt - y_mem) / np.linalg.norm(y_mem) < 2e-3  # fp16 rounding only
    # the bug: without s, the checkpoint decodes to Q(W·diag(s)), far from the layer
    y_bug = x @ dataclasses.replace(r, input_scale=None).dequantize().T  # Q(W·diag(s))
    assert np.linalg.norm(y_bug - y_mem) / np.linalg.norm(y_mem) > 0.1


def test_layers_sharing_an_activation_must_share_its_scale(tmp_path, awq_layer):
    r, _ = awq_layer
    other = dataclasses.replace(r, input_scale=r.input_scale * 2)
    folder = export_awq({"a": r, "b": r}, tmp_path / "ok", scaled_activations={"a": "act", "b": "act"})
    loaded = load_awq(folder)
    np.testing.assert_array_equal(loaded["a"].input_scale, loaded["b"].input_scale)
    with pytest.raises(ValueError, match="'b' read activation 'act' but have different input scales"):
        export_awq({"a": r, "b": other}, tmp_path / "bad", scaled_activations={"a": "act", "b": "act"})


def test_unrecorded_activation_scales_warn_on_load(tmp_path, awq_layer):
    r, _ = awq_layer
    folder = export_awq({"v": r}, tmp_path / "ckpt", scaled_activations={"v": "act"})
    t = safetensors_numpy.load_file(folder / "model.safetensors")
    safetensors_numpy.save_file(t, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.warns(UserWarning, match=r"act\.scales.*ScaledActivation.*Q\(W·diag\(s\)\)"):
        loaded = load_awq(folder)
    assert loaded["v"].input_scale is None


@pytest.fixture(scope="module")
def minilm_awq():
    """AWQ over the first block of MiniLM: q, k, v, intermediate.dense keep s; output.dense reads GELU."""
    import copy

    from qviz.io.models import load_minilm

    model, tok = load_minilm()
    small = copy.deepcopy(model)
    small.encoder.layer = small.encoder.layer[:1]
    small.config.num_hidden_layers = 1
    ids = tok(["The quick brown fox jumps over the lazy dog.", "Quantization keeps the large weights."] * 2,
              return_tensors="pt", padding="max_length", max_length=24, truncation=True)["input_ids"]
    results, qmodel = quantize_model(small, "awq", calib=ids, bits=4, group_size=128, progress=False)
    return results, ids


def test_quantize_model_awq_export_names_the_layers_it_cannot_write(tmp_path, minilm_awq):
    results, _ = minilm_awq
    unfolded = sorted(n for n, r in results.items() if r.input_scale is not None)
    out_dense = "encoder.layer.0.output.dense"
    assert out_dense in unfolded
    assert results[out_dense].info["scaled_activation"] == "encoder.layer.0.intermediate.intermediate_act_fn"
    homeless = [n for n in unfolded if results[n].info.get("scaled_activation") is None]
    assert "encoder.layer.0.attention.self.query" in homeless and "pooler.dense" in homeless
    with pytest.raises(ValueError) as err:
        export_awq(results, tmp_path / "ckpt")
    msg = str(err.value)
    assert f"{len(homeless)} layer(s) keep an AWQ input scale" in msg
    assert all(n in msg for n in homeless[:8]) and out_dense + "," not in msg.split("absorbed:")[1][:40]
    assert not (tmp_path / "ckpt").exists()
    # the layers a checkpoint can hold round-trip to the in-memory model's layer outputs
    writable = {n: r for n, r in results.items() if n not in homeless}
    loaded = load_awq(export_awq(writable, tmp_path / "ok"))
    rng = np.random.default_rng(1)
    for name, r in writable.items():
        x = rng.standard_normal((16, r.shape[1])).astype(np.float32)
        y, y_ckpt = x @ r.dequantize().T, x @ loaded[name].dequantize().T
        assert np.linalg.norm(y_ckpt - y) / np.linalg.norm(y) < 2e-3, name
    assert loaded[out_dense].input_scale is not None


# --- item 5: a checkpoint is written as a whole folder ----------------------------------------

def test_exporting_into_a_used_folder_needs_overwrite_and_leaves_no_stale_config(tmp_path):
    folder = tmp_path / "ckpt"
    r4 = affine(np.ones((8, 8)), zeros=np.ones((8, 1)))
    r8 = affine(np.ones((8, 8)), zeros=np.ones((8, 1)), bits=8)
    export_gptq({"fc": r4}, folder, model_config={"model_type": "x"})
    with pytest.raises(FileExistsError, match=r"ckpt is not empty.*overwrite=True"):
        export_gptq({"fc": r8}, folder)
    assert json.loads((folder / "quantize_config.json").read_text())["bits"] == 4  # untouched
    export_gptq({"fc": r8}, folder, overwrite=True)  # no model_config now: no config.json either
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "quantize_config.json"]
    assert json.loads((folder / "quantize_config.json").read_text())["bits"] == 8
    export_gptq({"fc": r4}, folder, overwrite=True, model_config={"model_type": "x"})
    assert json.loads((folder / "config.json").read_text())["quantization_config"]["bits"] == 4
    export_awq({"fc": r4}, folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "quant_config.json"]
    assert load_awq(folder)["fc"].bits == 4
    export_gptq({"fc": r8}, folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "quantize_config.json"]
    assert not [p for p in tmp_path.iterdir() if p.name != "ckpt"]  # no temporary folders left


def test_a_failed_export_leaves_nothing(tmp_path, monkeypatch):
    r = affine(np.ones((8, 8)), zeros=np.ones((8, 1)))

    def broken(tensors, path, metadata=None):
        open(path, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors_numpy, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        export_gptq({"fc": r}, tmp_path / "new")
    assert not list(tmp_path.iterdir())  # neither the target nor a temporary folder


def test_overwrite_refuses_what_is_not_a_checkpoint_folder(tmp_path):
    r = affine(np.ones((8, 8)), zeros=np.ones((8, 1)))
    (tmp_path / "proj" / "src").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"sub-folders \(src\).*nothing was deleted"):
        export_gptq({"fc": r}, tmp_path / "proj", overwrite=True)
    assert (tmp_path / "proj" / "src").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        export_gptq({"fc": r}, tmp_path / "file")
    (tmp_path / "empty").mkdir()
    assert load_gptq(export_gptq({"fc": r}, tmp_path / "empty"))["fc"].bits == 4  # an empty folder is fine


# --- item 6: loaders check every field against the tensors --------------------------------------

@pytest.fixture
def gptq_ckpt(tmp_path):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, (16, 64))
    r = affine(codes, zeros=rng.integers(1, 16, (16, 2)), group_size=32)
    return export_gptq({"fc": r}, tmp_path / "gptq")


def edit_config(folder, file_name, **fields):
    path = folder / file_name
    cfg = json.loads(path.read_text())
    cfg.update(fields)
    path.write_text(json.dumps(cfg))


def edit_tensors(folder, **tensors):
    path = folder / "model.safetensors"
    t = safetensors_numpy.load_file(path)
    t.update(tensors)
    safetensors_numpy.save_file({k: v for k, v in t.items() if v is not None}, str(path),
                                metadata={"format": "pt"})


@pytest.mark.parametrize("fields,match", [
    ({"group_size": 0}, r"quantize_config\.json: group_size=0 is not valid; .*-1 \(per channel\) or a positive"),
    ({"group_size": 7}, r"group_size=7 in quantize_config\.json contradicts layer 'fc': 64 input columns in "
                        r"groups of 7 make 10 group\(s\), but fc\.scales \(in model\.safetensors\) has 2 rows"),
    ({"group_size": 64}, r"group_size=64 .* make 1 group\(s\), but fc\.scales .* has 2 rows"),
    ({"group_size": "32"}, r"group_size='32' is not valid"),
    ({"group_size": True}, r"group_size=True is not valid"),
    ({"bits": 5}, r"quantize_config\.json: bits=5 is not valid; GPTQ checkpoints pack 2, 3, 4, 8-bit"),
    ({"bits": 8}, r"fc\.qweight .* is int32 \(8, 16\), expected int32 \(16, 16\)|fc\.qzeros"),
    ({"bits": None}, r"bits=None is not valid"),
    ({"sym": "yes"}, r"sym='yes' is not valid; it must be true or false"),
    ({"sym": True}, r"sym=true in quantize_config\.json, but fc\.qzeros holds zero point"),
    ({"checkpoint_format": "marlin"}, r"checkpoint_format 'marlin' is not read here"),
])
def test_load_gptq_checks_config_fields(gptq_ckpt, fields, match):
    edit_config(gptq_ckpt, "quantize_config.json", **fields)
    with pytest.raises(ValueError, match=match):
        load_gptq(gptq_ckpt)


def test_load_gptq_checks_tensors(gptq_ckpt):
    t = safetensors_numpy.load_file(gptq_ckpt / "model.safetensors")
    cases = [
        ({"fc.g_idx": np.full(64, 2, np.int32)}, r"fc\.g_idx \(in model\.safetensors\) holds group id 2 at "
                                                r"column 0, outside \[0, 2\)"),
        ({"fc.g_idx": np.full(64, -1, np.int32)}, r"group id -1"),
        ({"fc.g_idx": np.r_[np.zeros(40), np.ones(24)].astype(np.int32)},
         r"fc\.g_idx .* puts 40 columns in group 0; with group_size=32 every group holds 32"),
        ({"fc.g_idx": np.zeros(63, np.int32)}, r"fc\.g_idx .* is int32 \(63,\), expected int32 \(64,\)"),
        ({"fc.scales": t["fc.scales"][:1]}, r"fc\.qzeros .* is int32 \(2, 2\), expected int32 \(1, 2\)"),
        ({"fc.scales": t["fc.scales"].astype(np.float32)}, r"fc\.scales .* is float32 \(2, 16\), expected float16"),
        ({"fc.scales": np.where(np.arange(16) == 3, np.float16(np.nan), t["fc.scales"])},
         r"fc\.scales .* non-finite scale\(s\), the first at \(group, output\) = \(0, 3\)"),
        ({"fc.qzeros": t["fc.qzeros"][:, :1]}, r"fc\.qzeros .* is int32 \(2, 1\), expected int32 \(2, 2\)"),
        ({"fc.qweight": t["fc.qweight"][:, :12]}, r"'fc' has 12 outputs; 4-bit zero points .* multiple of 8"),
        ({"fc.qweight": t["fc.qweight"].astype(np.uint32)}, r"fc\.qweight .* is uint32"),
        ({"fc.qweight": t["fc.qweight"][0]}, r"fc\.qweight .* has shape \(16,\)"),
        ({"fc.qzeros": None}, r"layer 'fc' has a qweight but no fc\.qzeros"),
    ]
    for tensors, match in cases:
        edit_tensors(gptq_ckpt, **{**t, **tensors})
        with pytest.raises(ValueError, match=match):
            load_gptq(gptq_ckpt)
    edit_tensors(gptq_ckpt, **t)
    assert load_gptq(gptq_ckpt)["fc"].group_size == 32


def test_load_gptq_3bit_needs_whole_words(tmp_path):
    r = affine(np.zeros((32, 64)), zeros=np.ones((32, 2)), bits=3, group_size=32)
    folder = export_gptq({"fc": r}, tmp_path / "g3")
    t = safetensors_numpy.load_file(folder / "model.safetensors")
    edit_tensors(folder, **{**t, "fc.qweight": t["fc.qweight"][:5]})
    with pytest.raises(ValueError, match=r"fc\.qweight .* has shape \(5, 32\); 3-bit .* multiple of 3"):
        load_gptq(folder)


@pytest.fixture
def awq_ckpt(tmp_path):
    rng = np.random.default_rng(0)
    r = affine(rng.integers(0, 16, (16, 64)), zeros=rng.integers(0, 16, (16, 2)), group_size=32)
    return export_awq({"fc": r}, tmp_path / "awq")


@pytest.mark.parametrize("fields,match", [
    ({"group_size": 0}, r"quant_config\.json: group_size=0 is not valid"),
    ({"group_size": 7}, r"group_size=7 in quant_config\.json contradicts layer 'fc': 64 input columns"),
    ({"bits": 8}, r"only 4-bit AWQ 'gemm' checkpoints .* bits=8"),
    ({"version": "gemv"}, r"version='gemv'"),
    ({"zero_point": 1}, r"zero_point=1 is not valid"),
])
def test_load_awq_checks_config_fields(awq_ckpt, fields, match):
    edit_config(awq_ckpt, "quant_config.json", **fields)
    with pytest.raises(ValueError, match=match):
        load_awq(awq_ckpt)


def test_load_awq_checks_tensors(awq_ckpt):
    t = safetensors_numpy.load_file(awq_ckpt / "model.safetensors")
    cases = [
        ({"fc.qzeros": t["fc.qzeros"][:1]}, r"fc\.qzeros .* is int32 \(1, 2\), expected int32 \(2, 2\)"),
        ({"fc.scales": t["fc.scales"][:, :8]}, r"fc\.scales .* is float16 \(2, 8\), expected float16 \(2, 16\)"),
        ({"fc.scales": np.full((2, 16), np.inf, np.float16)}, r"non-finite scale"),
        ({"fc.qweight": t["fc.qweight"][:48]}, r"'fc' has 48 input columns .*not a multiple of group_size=32"),
        ({"fc.qweight": t["fc.qweight"][:32]}, r"64 input columns|32 input columns in groups of 32 make 1"),
    ]
    for tensors, match in cases:
        edit_tensors(awq_ckpt, **{**t, **tensors})
        with pytest.raises(ValueError, match=match):
            load_awq(awq_ckpt)


def test_load_awq_checks_activation_scales(tmp_path, awq_layer):
    r, _ = awq_layer
    folder = export_awq({"v": r}, tmp_path / "ckpt", scaled_activations={"v": "act"})
    t = safetensors_numpy.load_file(folder / "model.safetensors")
    meta = {"format": "pt", export.SCALED_ACTIVATIONS_KEY: json.dumps({"act": ["v"]})}
    for scales, match in [(np.ones(10, np.float16), r"act\.scales .* is float16 \(10,\); layer 'v' reads it"),
                          (np.zeros(384, np.float16), r"act\.scales .* not positive and finite")]:
        safetensors_numpy.save_file({**t, "act.scales": scales}, str(folder / "model.safetensors"), metadata=meta)
        with pytest.raises(ValueError, match=match):
            load_awq(folder)
    safetensors_numpy.save_file(t, str(folder / "model.safetensors"),
                                metadata={**meta, export.SCALED_ACTIVATIONS_KEY: json.dumps({"act": ["w"]})})
    with pytest.raises(ValueError, match=r"layer 'w' reads act\.scales, but the checkpoint has no w\.qweight"):
        load_awq(folder)


# --- item 13: errors that name the value, the layer and the fix ---------------------------------

def test_awq_export_of_5_bits_names_5_bits(tmp_path):
    r = qviz.quantize(np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32), "rtn",
                      bits=5, group_size=32)
    with pytest.raises(ValueError) as err:
        export_awq({"fc": r}, tmp_path)
    msg = str(err.value)
    assert "'fc' has 5-bit codes" in msg and "no 5-bit layout" in msg and "4-bit codes only" in msg
    assert "3-bit" not in msg


def tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))


@pytest.mark.parametrize("method,kwargs", [("rtn", {}), ("Q8_0", {}), ("nf4", {})])
def test_nan_in_one_layer_names_the_layer(method, kwargs):
    """Checked before any work, so every method names the layer (not only the (row, col))."""
    net = tiny_net()
    with torch.no_grad():
        net[2].weight[3, 5] = float("nan")
    with pytest.raises(ValueError, match=r"layer '2': weight has 1 NaN/Inf value\(s\), the first nan at "
                                         r"\(row, col\) = \(3, 5\)"):
        quantize_model(net, method, progress=False, **kwargs)
    assert torch.isnan(net[2].weight[3, 5])  # the caller's model is left as it was


def test_nan_in_a_block_layer_names_it_for_gptq():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[7, 2] = float("inf")
    tokens = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(0))
    for method in ("gptq", "awq"):
        with pytest.raises(ValueError, match=r"layer 'model\.layers\.1\.mlp\.down_proj': weight has 1 NaN/Inf"
                                             r".*\(row, col\) = \(7, 2\)"):
            quantize_model(model, method, calib=tokens, bits=4, group_size=32, progress=False)


def test_method_errors_are_raised_with_the_layer_name():
    net = tiny_net()  # layer "0" has 64 columns, layer "2" 32: Q4_K needs rows of 256
    with pytest.raises(ValueError, match=r"^layer '0': .*256"):
        quantize_model(net, "Q4_K", progress=False)


def test_meta_device_models_and_layers_give_a_clear_error():
    with torch.device("meta"):
        net = tiny_net()
    with pytest.raises(ValueError, match=r"meta device and hold no values \(e\.g\. 0\.weight"):
        quantize_model(net, "rtn", progress=False)
    r = qviz.quantize(np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32), "rtn",
                      bits=4, group_size=32)
    with pytest.raises(ValueError, match="bias is on the meta device"):
        QuantLinear.from_result(r, torch.zeros(32, device="meta"))
    with pytest.raises(ValueError, match=r"layer '0' is on the meta device"):
        to_quantized_modules(net, {"0": r}, strict=False)


def test_gptq_calib_that_overflows_the_hessian_says_so_and_the_fix_works():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 64)).astype(np.float32)
    x = (rng.standard_normal((128, 64)) * rng.lognormal(0, 1, 64)).astype(np.float32)
    with pytest.raises(ValueError) as err:
        qviz.quantize(w, "gptq", calib=x * np.float32(1e30), bits=4, group_size=32)
    msg = str(err.value)
    assert "overflows float32" in msg and "activations are finite but far too large" in msg
    k = int(msg.split("x / 2**")[1].split(" ")[0])
    fixed = qviz.quantize(w, "gptq", calib=(x * np.float32(1e30)) / np.float32(2.0**k), bits=4, group_size=32)
    plain = qviz.quantize(w, "gptq", calib=x, bits=4, group_size=32)
    assert np.isfinite(fixed.info["loss"])
    assert (fixed.codes == plain.codes).mean() > 0.99  # same problem up to float rounding of 1e30·x


def test_gptq_non_finite_hessian_tensor_says_why():
    w = torch.zeros(8, 64)
    H = torch.eye(64)
    H[2, 2] = float("inf")
    with pytest.raises(ValueError, match=r"H has 1 NaN/Inf value\(s\).*\(2, 2\).*XᵀX overflowed float32"):
        gptq(w, H, RTNFormat(bits=4, group_size=32))


@pytest.mark.parametrize("scale", [3e38, 2.0**100, 2.0**-100, 1e-44])
def test_gptq_huge_or_tiny_hessians_give_finite_results(scale):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 64)).astype(np.float32)
    x = (rng.standard_normal((256, 64)) * rng.lognormal(0, 1, 64)).astype(np.float32)
    H1 = hessian(x)
    for H in (torch.eye(64), H1):
        base = gptq(w, H, RTNFormat(bits=4, group_size=32))
        Hs = (H.double() * scale).float() if scale >= 1e-40 else torch.eye(64) * scale
        if not bool(torch.isfinite(Hs).all()) or (Hs.diagonal() == 0).all():
            continue
        r = gptq(w, Hs, RTNFormat(bits=4, group_size=32))
        assert np.isfinite(r.info["loss"]) and np.isfinite(r.dequantize()).all()
        if H is H1 and scale in (2.0**100, 2.0**-100):  # a power of four: exactly the same problem
            np.testing.assert_array_equal(r.codes, base.codes)
            assert r.info["loss"] == pytest.approx(base.info["loss"] * scale, rel=1e-6)
        if H is not H1:  # a diagonal H spreads no error: the codes are RTN's whatever its size
            np.testing.assert_array_equal(r.codes, base.codes)
