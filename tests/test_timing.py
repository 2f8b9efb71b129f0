"""quantlab.timing and the measuring around it: instability is flagged (on given numbers; timings are never
asserted), and what is timed is what is scored."""

from __future__ import annotations

import torch

from quantlab import bench, data, loading, models, report, timing


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
