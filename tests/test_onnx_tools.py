"""The ONNX Runtime path: export, dynamic and static ONNX quantization, and Codes/mobile_net.py running ONNX files.

Small on purpose: MobileNetV2 is exported once for the module, static quantization
calibrates on 4 photos, the demo runs 3 frames. Accuracy on 800 photos is the
notebook's and the lab's job (notebooks/06_onnx_runtime.ipynb), not this file's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from conftest import X86, run_in_process, run_python
from quantlab import cpu, data, models, onnx_tools, quantize
from quantlab.errors import KitError

# two easy photos of the offline sample (labels read from their WordNet ids)
EASY_PHOTOS = ("n01443537_goldfish.JPEG", "n04146614_school_bus.JPEG")


@pytest.fixture(scope="module")
def fp32(float_weights: Path) -> nn.Module:
    return models.mobilenet_v2_fp32(float_weights)


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory, fp32: nn.Module) -> Path:
    return onnx_tools.export_onnx(fp32, tmp_path_factory.mktemp("onnx") / "mnv2.onnx")


@pytest.fixture(scope="module")
def photos(sample_photos: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The easy photos as a batch, and their labels."""
    dataset = data.image_dataset(sample_photos)
    names = [path.name for path, _ in dataset.items]
    images, labels = data.drop_unreadable([dataset[names.index(name)] for name in EASY_PHOTOS])
    return images, labels


@pytest.fixture(scope="module")
def static_onnx(fp32_onnx: Path, sample_photos: Path) -> Path:
    calibration, _ = data.split(data.image_dataset(sample_photos), first_n=4, seed=0)
    output = fp32_onnx.with_name("mnv2_qdq.onnx")
    return onnx_tools.quantize_onnx_static(fp32_onnx, output, data.loader(calibration, batch_size=4), progress=False)


def assert_close_to_fp32(int8_onnx: Path, fp32_onnx: Path, photos) -> None:
    """int8 logits point the same way as fp32's and keep the right class near the top.

    (Top-1 itself can tie on 4 calibration photos: the notebook measures accuracy on 800.)
    """
    images, labels = photos
    int8_logits = models.OnnxModel(int8_onnx, threads=1)(images)
    fp32_logits = models.OnnxModel(fp32_onnx, threads=1)(images)
    assert torch.nn.functional.cosine_similarity(int8_logits, fp32_logits).min() > 0.98
    assert all(label in top for label, top in zip(labels.tolist(), int8_logits.topk(5).indices.tolist()))


def test_export_names_input_output_and_a_dynamic_batch_axis(fp32_onnx: Path) -> None:
    graph = onnx.load(str(fp32_onnx)).graph
    (model_input,), (model_output,) = graph.input, graph.output
    dims = [d.dim_param or d.dim_value for d in model_input.type.tensor_type.shape.dim]
    assert (model_input.name, model_output.name) == (onnx_tools.INPUT_NAME, onnx_tools.OUTPUT_NAME)
    assert dims == [onnx_tools.BATCH_AXIS, 3, 224, 224], dims
    assert onnx_tools.sidecar_fields(fp32_onnx)["opset"] == onnx_tools.OPSET
    assert onnx_tools.sidecar_fields(fp32_onnx)["method"] == "fp32"
    assert not list(fp32_onnx.parent.glob("*.partial")) and not list(fp32_onnx.parent.glob("*.data"))


def test_onnx_fp32_logits_match_pytorch(fp32: nn.Module, fp32_onnx: Path, photos) -> None:
    images, labels = photos
    assert onnx_tools.max_abs_diff(fp32, fp32_onnx, images) < 1e-4
    single = models.OnnxModel(fp32_onnx, threads=1)(images[:1])  # batch 1 as well as batch 2
    assert single.shape == (1, 1000) and int(single.argmax()) == int(labels[0])


def test_static_qdq_is_per_channel_small_and_still_right(fp32_onnx: Path, static_onnx: Path, photos) -> None:
    graph = onnx.load(str(static_onnx)).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, ops
    initializers = {init.name: init for init in graph.initializer}
    conv_weight_scales = [
        initializers[node.input[1]]
        for node in graph.node
        if node.op_type == "DequantizeLinear"
        and node.input[0] in initializers
        and len(initializers[node.input[0]].dims) == 4
    ]
    assert conv_weight_scales and all(len(scale.dims) == 1 and scale.dims[0] > 1 for scale in conv_weight_scales)
    assert static_onnx.stat().st_size <= 0.3 * fp32_onnx.stat().st_size
    facts = onnx_tools.sidecar_fields(static_onnx)
    assert facts["method"] == "static" and facts["calibration_images"] == 4 and facts["granularity"] == "per_channel"
    assert facts["input_shape"] == [onnx_tools.BATCH_AXIS, 3, 224, 224] and facts["opset"] == onnx_tools.OPSET
    # the number format was picked for this CPU, by measuring whether ONNX Runtime's U8S8 sums saturate here
    saturates = cpu.onnxruntime_u8s8_error() > onnx_tools.PROBE_MAX_ERROR
    assert facts["quant_format"] == "QDQ" and facts["activation_type"] == "uint8"
    assert facts["reduce_range"] is saturates and facts["target_int8_isa"] == cpu.int8_isa().name
    assert ("U8S8 saturates" if saturates else "U8S8 is exact") in facts["format_reason"]
    assert_close_to_fp32(static_onnx, fp32_onnx, photos)


def test_static_qdq_with_7_bit_weights_is_still_right(fp32_onnx: Path, sample_photos: Path, photos) -> None:
    """What the kit writes for CPUs without VNNI (reduce_range). Its kernels do not saturate on any CPU, so
    this machine measures it as one without VNNI would (tests/test_cpu.py runs it on an emulated AVX2 CPU)."""
    calibration, _ = data.split(data.image_dataset(sample_photos), first_n=4, seed=0)
    output = onnx_tools.quantize_onnx_static(
        fp32_onnx,
        fp32_onnx.with_name("mnv2_qdq_7bit.onnx"),
        data.loader(calibration, batch_size=4),
        progress=False,
        reduce_range=True,
    )
    facts = onnx_tools.read_metadata(output)
    assert facts["reduce_range"] is True and facts["weight_type"] == "int8 (7-bit range)"
    assert "chosen by the caller" in facts["format_reason"]
    assert_close_to_fp32(output, fp32_onnx, photos)


def test_dynamic_quantizes_weights_without_calibration(fp32_onnx: Path, photos) -> None:
    output = onnx_tools.quantize_onnx_dynamic(fp32_onnx, fp32_onnx.with_name("mnv2_dynamic.onnx"))
    assert "DynamicQuantizeLinear" in {node.op_type for node in onnx.load(str(output)).graph.node}
    assert onnx_tools.read_metadata(output)["method"] == "dynamic"
    assert_close_to_fp32(output, fp32_onnx, photos)


def test_static_without_readable_calibration_images_writes_nothing(fp32_onnx: Path) -> None:
    output = fp32_onnx.with_name("never.onnx")
    with pytest.raises(KitError, match="no calibration image could be read"):
        onnx_tools.quantize_onnx_static(fp32_onnx, output, [None, None], progress=False)
    assert not output.exists() and not list(output.parent.glob("*.partial"))


def test_quantizing_a_file_that_is_not_onnx_is_one_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "notes.onnx"
    fake.write_text("not a model\n")
    with pytest.raises(KitError, match="is not a valid ONNX model"):
        onnx_tools.quantize_onnx_dynamic(fake, tmp_path / "out.onnx")


class DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum() > 0 else x  # the branch depends on the values: torch.export cannot trace it


class NoOnnxOperator(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigvals(x[..., :4, :4]).real.flatten(1)  # no ONNX translation for eig


@pytest.mark.parametrize(
    "layer, message", [(DataDependent(), "torch.export failed"), (NoOnnxOperator(), "cannot translate")]
)
def test_export_failure_names_the_layer_and_leaves_no_file(tmp_path: Path, layer: nn.Module, message: str) -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Sequential(nn.ReLU(), layer))
    output = tmp_path / "broken.onnx"
    with pytest.raises(KitError, match=message) as caught:
        onnx_tools.export_onnx(model, output, input_size=8)
    assert f"'1.1' ({type(layer).__name__})" in str(caught.value) and "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []
    assert model.training  # export switched it to eval mode and back


def test_export_refuses_a_pytorch_int8_model(tmp_path: Path) -> None:
    int8 = quantize.quantize_dynamic(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)))
    with pytest.raises(KitError, match=r"layer '1' \(Linear\): it is already PyTorch int8"):
        onnx_tools.export_onnx(int8, tmp_path / "int8.onnx", input_size=2)


def test_mobile_net_runs_an_onnx_model_end_to_end(run, fp32_onnx: Path) -> None:
    result = run("mobile_net.py", "--model", fp32_onnx, "--source", "samples", "--frames", "3", "--threads", "2")
    assert result.returncode == 0, result.stderr
    assert f"model: {fp32_onnx}" in result.stdout and "frame 3, last" in result.stdout
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr


@pytest.mark.parametrize("case", ["not-a-model", "wrong-size"])
def test_mobile_net_bad_onnx_exits_2_with_one_line(tmp_path: Path, static_onnx: Path, case: str) -> None:
    if case == "not-a-model":
        model = tmp_path / "photo.onnx"
        model.write_bytes(b"\xff\xd8\xff\xe0 a JPEG renamed to .onnx")
        arguments, expected = ["--model", model], "cannot load"
    else:
        arguments, expected = ["--model", static_onnx, "--size", "160"], "expects input ['batch', 3, 224, 224]"
    result = run_in_process("mobile_net.py", *arguments, "--source", "samples", "--frames", "2")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr


def _quantization_parameters(path: Path) -> dict[str, torch.Tensor]:
    """Every scale and zero point of a QDQ file, by name."""
    graph = onnx.load(str(path)).graph
    return {
        init.name: torch.from_numpy(onnx.numpy_helper.to_array(init).astype("float64")).clone()
        for init in graph.initializer
        if init.name.endswith(("_scale", "_zero_point"))
    }


def _small_cnn_onnx(folder: Path) -> Path:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 1000),
    ).eval()
    return onnx_tools.export_onnx(net, folder / "small.onnx", input_size=32)


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_calibration_in_chunks_gives_the_single_pass_ranges(tmp_path, method):
    """Chunks keep memory flat (13.8 GB for 200 MobileNetV2 photos at once); the model must not change."""
    fp32_file = _small_cnn_onnx(tmp_path)
    images = torch.randn(37, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # 37: no chunk size divides it
    batches = list(images.split(5))
    at_once = onnx_tools.quantize_onnx_static(
        fp32_file, tmp_path / "once.onnx", batches, calibrate_method=method, progress=False, chunk_images=None
    )
    chunked = onnx_tools.quantize_onnx_static(
        fp32_file, tmp_path / "chunked.onnx", batches, calibrate_method=method, progress=False, chunk_images=8
    )
    assert onnx_tools.read_metadata(chunked)["calibration_chunk_images"] == 8
    assert onnx_tools.read_metadata(at_once)["calibration_chunk_images"] is None
    assert onnx_tools.read_metadata(chunked)["calibration_images"] == 37
    once, parts = _quantization_parameters(at_once), _quantization_parameters(chunked)
    assert once.keys() == parts.keys() and once
    for name in once:
        if method == "minmax":  # min and max of the chunks' min and max: exactly the same
            assert torch.equal(once[name], parts[name]), name
        else:  # histograms merged chunk by chunk: the 99.999th percentile moves a little
            assert torch.allclose(once[name], parts[name], rtol=0.01, atol=1.0), name  # measured: 0.04 % at most


@pytest.fixture(scope="session")
def qemu_haswell() -> tuple[str, ...]:
    """The command prefix that runs a program on an emulated AVX2 CPU without VNNI (qemu-user, installed when
    missing as root with apt-get, as tools/pi_check does)."""
    if not X86:
        pytest.skip("qemu-x86_64 emulates an x86 CPU: this check runs on x86 hosts")
    qemu = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
    if qemu is None and os.geteuid() == 0 and shutil.which("apt-get"):
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "qemu-user-static"]):
            subprocess.run(
                command, capture_output=True, timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            )
        qemu = shutil.which("qemu-x86_64-static")
    if qemu is None:
        pytest.skip("qemu-x86_64-static not found (apt-get install qemu-user-static, as root)")
    return (qemu, "-cpu", "Haswell")


def test_onnx_runtime_format_is_exact_on_an_avx2_cpu(qemu_haswell, tmp_path, float_weights, sample_photos):
    """What the kit picks for an AVX2 CPU (U8S8 with 7-bit weights) matches fp32 there; full-range U8S8 does not.

    Quantized here, run there: the number format, not the CPU that quantized, decides. Under the emulator
    only numpy and onnxruntime run (importing torch there takes minutes).
    """
    import numpy as np

    from quantlab import data, models, onnx_tools

    fp32_onnx = onnx_tools.export_onnx(models.mobilenet_v2_fp32(float_weights), tmp_path / "fp32.onnx")
    calibration, check = data.split(data.image_dataset(sample_photos), first_n=8, seed=0)
    for reduce_range in (False, True):
        onnx_tools.quantize_onnx_static(
            fp32_onnx,
            tmp_path / f"reduce_range_{reduce_range}.onnx",
            data.loader(calibration, batch_size=8),
            progress=False,
            reduce_range=reduce_range,
        )
    np.save(tmp_path / "images.npy", next(iter(data.loader(check, batch_size=4)))[0].numpy())
    code = f"""
        import json, numpy as np, onnxruntime
        from quantlab import cpu
        folder = {str(tmp_path)!r}
        images = np.load(folder + "/images.npy")
        def run(name):
            session = onnxruntime.InferenceSession(folder + "/" + name, providers=["CPUExecutionProvider"])
            return np.concatenate([session.run(None, {{"input": image[None]}})[0] for image in images])
        def cosine(a, b):
            return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())
        reference = run("fp32.onnx")
        found = {{"isa": cpu.int8_isa().name, "probe": cpu.onnxruntime_u8s8_error(),
                  "probe_reduce_range": cpu.onnxruntime_u8s8_error(reduce_range=True)}}
        for reduce_range in (False, True):
            found[str(reduce_range)] = cosine(run(f"reduce_range_{{reduce_range}}.onnx"), reference)
        print(json.dumps(found))
    """
    found = run_python(code, {}, prefix=qemu_haswell, timeout=600)
    assert found["isa"] == "avx2", found
    assert found["probe"] > 0.4 and found["probe_reduce_range"] < 0.01, found  # what choose_static_format reads
    assert found["True"] > 0.96, found  # the kit's choice for this CPU agrees with fp32
    assert found["False"] < found["True"] - 0.02, found  # full-range U8S8 saturates here


@pytest.mark.parametrize(
    ("errors", "reduce_range", "words"),
    [
        ({False: 0.0}, False, "U8S8 is exact on this CPU"),
        ({False: 0.49, True: 0.0}, True, "U8S8 saturates on this CPU"),
    ],
)
def test_static_format_follows_the_measurement(monkeypatch, errors, reduce_range, words):
    from quantlab import onnx_tools

    monkeypatch.setattr(cpu, "onnxruntime_u8s8_error", lambda reduce_range=False: errors[reduce_range])
    chosen = onnx_tools.choose_static_format()
    assert chosen["reduce_range"] is reduce_range and words in chosen["format_reason"]
    assert chosen["activation_type"] == "uint8" and chosen["target_int8_isa"] == cpu.int8_isa().name
    assert onnx_tools.choose_static_format(reduce_range=True)["weight_type"] == "int8 (7-bit range)"
