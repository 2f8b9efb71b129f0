"""quantlab.bench: what is timed is what is scored, and every report records the machine."""

from __future__ import annotations

import torch

from quantlab import bench, cpu, data, loading


def test_every_report_records_the_int8_level():
    from quantlab import bench

    machine = bench.machine_info(threads=1, engine="x86")
    assert machine["int8_isa"] == cpu.int8_isa().name and machine["int8_isa_note"] == cpu.describe()
    assert set(machine["int8_isa_engines"]) == {"x86", "onednn", "qnnpack"}


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
