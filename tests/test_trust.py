"""Numbers the kit prints are right or refused: labels from names, any model file, honest timing (issue #12).

Each case here printed a wrong number without a word before: a subset of the
sample photos scored 0 %, a batch-1 trace scored 1.6 %, a no-sidecar qnnpack
file crashed. The model files are made here, the way an older torch traced
them. Timings are never asserted; ``timing.instability`` is tested on given
numbers.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from conftest import run_script
from quantlab import bench, data, loading, models, report, timing
from quantlab.errors import KitError

# ---- labels from names ------------------------------------------------------------


def _link_photos(photos: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for photo in photos:
        os.symlink(photo, folder / photo.name)
    return folder


def test_any_subset_of_the_sample_keeps_each_photos_label(tmp_path, sample_photos):
    full = data.image_dataset(sample_photos)
    label_by_name = {path.name: label for path, label in full.items}
    assert sorted(label_by_name.values()) == list(range(1000))  # one photo per class, every class
    # the last 800 in sorted order: by position they were labelled 0..799, i.e. all wrong
    subset = data.image_dataset(_link_photos(sorted(sample_photos.iterdir())[200:], tmp_path / "subset"))
    assert {path.name: label for path, label in subset.items} == {
        name: label_by_name[name] for name in sorted(label_by_name)[200:]
    }
    assert subset.items[0][1] == 200


def test_a_subset_folder_scores_what_the_same_photos_score_in_the_full_folder(tmp_path, sample_photos):
    fp32 = loading.load_any("mobilenet_v2", engine="auto", threads=2)
    held_out = bench.evaluation_dataset(sample_photos, holdout=976, seed=0)  # the last 24 of the seeded shuffle
    names = [data.image_dataset(sample_photos).items[index][0] for index in held_out.indices]
    folder = data.image_dataset(_link_photos(names, tmp_path / "held_out"))
    in_full = bench.evaluate(fp32.model, data.loader(held_out), progress=False)
    alone = bench.evaluate(fp32.model, data.loader(folder), progress=False)
    assert alone == in_full and alone["top1"] > 50  # on 24 photos MobileNetV2 gets most right


def test_class_folders_by_wordnet_id_and_by_class_name(tmp_path, sample_photos):
    wanted = {"n01440764": 0, "goldfish": 1, "great_white_shark": 2, "Tiger Shark": 3, "n09999999_empty": None}
    photos = sorted(sample_photos.iterdir())
    for (folder, label), photo in zip(wanted.items(), photos):
        (tmp_path / folder).mkdir()
        if label is not None:
            shutil.copy(photos[10 + label], tmp_path / folder / photo.name)  # names that say nothing
    dataset = data.image_dataset(tmp_path)
    assert sorted(label for _, label in dataset.items) == [0, 1, 2, 3]


def test_a_partial_imagenet_tree_is_labelled_by_synset(tmp_path, sample_photos):
    photos = sorted(sample_photos.iterdir())
    for index in (5, 250, 999):  # ten synset folders out of 1000 would be labelled 0..9 by position
        folder = tmp_path / photos[index].name[:9]
        folder.mkdir()
        shutil.copy(photos[index], folder / f"ILSVRC2012_val_{index:08d}.JPEG")
    assert sorted(label for _, label in data.image_dataset(tmp_path).items) == [5, 250, 999]


def test_unknown_labels_are_refused_for_accuracy_but_fine_for_calibration(tmp_path, sample_photos):
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(next(sample_photos.iterdir()), flat / "holiday.jpg")
    shutil.copy(next(sample_photos.iterdir()), flat / "n01440764_tench.jpg")
    with pytest.raises(KitError, match="1 of the 2 photos .*'holiday.jpg'.*WordNet id"):
        data.image_dataset(flat)
    calibration = data.image_dataset(flat, need_labels=False)
    assert sorted(label for _, label in calibration.items) == [data.UNLABELLED, 0]
    with pytest.raises(KitError, match="needs labelled photos"):
        data.require_labels(calibration, "QAT")
    with pytest.raises(KitError, match="cannot tell the class"):
        bench.evaluate(lambda images: torch.zeros(len(images), 1000), data.loader(calibration), progress=False)
    classes = tmp_path / "classes"
    (classes / "cats").mkdir(parents=True)
    shutil.copy(next(sample_photos.iterdir()), classes / "cats" / "a.jpg")
    with pytest.raises(
        KitError, match=r"'cats/'\) are named neither by ImageNet WordNet id nor by ImageNet class name"
    ):
        data.image_dataset(classes)


def test_benchmark_refuses_an_unlabelled_folder_in_one_line_and_offers_timing_only(tmp_path, sample_photos):
    shutil.copy(next(sample_photos.iterdir()), tmp_path / "photo.jpg")
    result = run_script("benchmark.py", "--model", "mobilenet_v2", "--data", tmp_path, "--runs", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "cannot tell the labels" in result.stderr and "timing only" in result.stderr


# ---- any model file a student hands in -----------------------------------------------


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


# ---- honest timing ------------------------------------------------------------------------


def test_instability_is_flagged_from_the_spread_or_the_reference_workload():
    steady = [10.0] * 20
    assert timing.instability(steady, 5.0, 5.4) is None
    assert "p90 is 4.0x the median" in timing.instability([10.0] * 11 + [40.0] * 9, 5.0, 5.0)
    assert "reference workload took 5.00 ms before and 9.00 ms after" in timing.instability(steady, 5.0, 9.0)


def test_unstable_results_are_marked_in_the_table_and_the_json():
    result = {
        "name": "busy.pt",
        "format": "torchscript",
        "method": "static",
        "engine": "x86",
        "size_mb": 3.9,
        "parameters": None,
        "latency_ms": {"median": 440.0, "p90": 1200.0, "mean": 600.0},
        "fps": 2.27,
        "top1": None,
        "top5": None,
        "images": None,
        "skipped": None,
        "unstable": timing.instability([440.0] * 11 + [1200.0] * 9, 5.0, 5.0),
    }
    settings = {
        "runs": 20,
        "warmup": 1,
        "batch_size": 1,
        "input_size": 224,
        "data": None,
        "holdout": None,
        "seed": 0,
        "threads": 2,
        "engine": "x86",
    }
    table = report.format_table(report.make_report([result], settings, bench.machine_info(2, "x86")))
    assert "!440.00" in table and "! UNSTABLE latency of busy.pt: p90 is 2.7x the median" in table
    measured = bench.measure_latency(torch.nn.Identity(), input_size=8, runs=3, warmup=0)
    assert "unstable" in measured  # None or a reason, measured on this machine


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


def test_mixed_layouts_and_ambiguous_class_names_are_refused(tmp_path, sample_photos):
    photo = next(sample_photos.iterdir())
    (tmp_path / "mixed" / "n01440764").mkdir(parents=True)
    shutil.copy(photo, tmp_path / "mixed" / "cover.jpg")  # would hide the class folder, calibration included
    shutil.copy(photo, tmp_path / "mixed" / "n01440764" / "a.jpg")
    with pytest.raises(KitError, match="photos .* and class folders .* side by side"):
        data.image_dataset(tmp_path / "mixed", need_labels=False)
    (tmp_path / "classes" / "Cardigan").mkdir(parents=True)  # the corgi (264) or the sweater (474)?
    shutil.copy(photo, tmp_path / "classes" / "Cardigan" / "a.jpg")
    with pytest.raises(KitError, match="'Cardigan/'"):
        data.image_dataset(tmp_path / "classes")
    assert data.label_of_folder("n02113186") == 264 and data.label_of_folder("n02963159") == 474  # by WordNet id


def test_latency_is_timed_on_a_photo_that_is_scored(sample_photos):
    """A model that answers random noise cheaply would look fast; it is timed on the first scored photo instead."""
    seen: list[torch.Tensor] = []

    def recording_model(images: torch.Tensor) -> torch.Tensor:
        seen.append(images.clone())
        return torch.zeros(len(images), 1000)

    loaded = loading.LoadedModel(
        name="recorder",
        model=recording_model,
        runtime="pytorch",
        format="torchscript",
        engine=None,
        path=None,
        size_mb=1.0,
        parameters=None,
        sha256=None,
        method="fp32",
    )
    evaluation = bench.evaluation_dataset(sample_photos, images=3, seed=0)
    bench.benchmark_model(loaded, data.loader(evaluation, batch_size=3), runs=2, warmup=1, progress=False)
    first_photo = evaluation[0][0].unsqueeze(0)
    assert all(torch.equal(timed, first_photo) for timed in seen[:3])  # warm-up and timed runs
    assert torch.equal(seen[-1][:1], first_photo) and len(seen[-1]) == 3  # then scored with the others
