"""quantlab.loading: any model file a student hands in runs on the right engine, at the batch size it takes, or is
refused in one line. The files are made here, the way an older torch traced them."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from conftest import run_script
from quantlab import bench, data, loading, models
from quantlab.errors import KitError


class _OldExport(torch.nn.Module):
    """What older exports did: the classifier's input reshaped to a fixed batch of 1."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.net.features(self.net.quant(x))
        x = torch.nn.functional.adaptive_avg_pool2d(x, (1, 1)).reshape(1, -1)
        return self.net.dequant(self.net.classifier(x))


@pytest.fixture(scope="module")
def old_int8_files(tmp_path_factory, int8_weights) -> dict[str, Path]:
    """int8 MobileNetV2 for qnnpack, traced with batch 1 and saved with no sidecar, as an older torch did."""
    folder = tmp_path_factory.mktemp("old_files")
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "qnnpack"
    try:
        net = models.mobilenet_v2_int8("qnnpack", int8_weights).eval()
        image = torch.randn(1, 3, 224, 224)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the tracer's warnings are the point here
            torch.jit.save(torch.jit.trace(_OldExport(net).eval(), image), str(folder / "batch_one.pt"))
            torch.jit.save(torch.jit.trace(net, image), str(folder / "no_sidecar.pt"))
    finally:
        torch.backends.quantized.engine = previous
    return {"batch_one": folder / "batch_one.pt", "no_sidecar": folder / "no_sidecar.pt"}


def test_int8_file_without_sidecar_runs_on_the_engine_it_was_packed_for(old_int8_files):
    loaded = loading.load_any(str(old_int8_files["no_sidecar"]), engine="auto", threads=2)
    assert loaded.engine == "qnnpack" and not loaded.batch_one
    assert any("no sidecar" in note and "per-tensor" in note for note in loaded.notes)


def test_batch_one_model_is_evaluated_photo_by_photo(old_int8_files, sample_photos):
    evaluation = bench.evaluation_dataset(sample_photos, holdout=968, seed=0)  # 32 photos
    loaded = loading.load_any(str(old_int8_files["batch_one"]), engine="auto", threads=2)
    assert loaded.batch_one and loaded.engine == "qnnpack"
    assert any("one image at a time" in note for note in loaded.notes)
    result = bench.benchmark_model(loaded, data.loader(evaluation, batch_size=16), runs=1, warmup=0, progress=False)
    torch.backends.quantized.engine = "qnnpack"
    by_hand = bench.evaluate(loaded.model, data.loader(evaluation, batch_size=1), progress=False)
    assert result["top1"] == by_hand["top1"] and result["images"] == 32
    assert result["top1"] > 50  # 1.6 % when its batches of 16 were scored as one answer
    with pytest.raises(KitError, match="returned 1 answers for 16 photos"):  # never scored silently
        bench.evaluate(loaded.model, data.loader(evaluation, batch_size=16), progress=False)


class _TenClasses(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)).repeat(1, 4)[:, :10]


class _Fails(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(5, -1)  # 150528 values do not split in 5 rows


@pytest.mark.parametrize(
    "module, message",
    [
        (_TenClasses(), r"returns \[1, 10\] for one image, not the 1000"),
        (_Fails(), "fails when run on one 3x224x224 image"),
    ],
)
def test_a_model_that_is_no_imagenet_classifier_is_one_line(tmp_path, module, message):
    path = tmp_path / "student.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    with pytest.raises(KitError, match=message):
        loading.load_any(str(path), engine="auto", threads=2)
    result = run_script("benchmark.py", "--model", path, "--runs", "1", "--warmup", "0", "--trust")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        line for line in result.stderr.splitlines() if line.startswith("error:") and "student.pt" in line
    ]


class _FastAlone(torch.nn.Module):
    """A cheat: a cheap answer at batch 1 (what latency times), the real network on batches (what is scored)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.cheap = torch.nn.Linear(3, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.size(0) == 1:
            return self.cheap(x.mean((2, 3)))
        return self.net(x)


def test_a_model_that_answers_batches_otherwise_is_scored_as_it_is_timed(tmp_path, float_weights):
    path = tmp_path / "cheat.pt"
    torch.jit.save(torch.jit.script(_FastAlone(models.mobilenet_v2_fp32(float_weights)).eval()), str(path))
    loaded = loading.load_any(str(path), engine="auto", threads=2)
    assert loaded.batch_one and any("differently alone than in a batch" in note for note in loaded.notes)
