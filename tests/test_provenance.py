"""benchmark.py runs code-bearing model files (TorchScript, .pt2, FILE.py:FUNCTION) only when the kit wrote them on
this account or --trust says so: an instructor who runs a student's command must not run the student's code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from quantlab import models, provenance
from quantlab.errors import KitError


class _Classifier(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)).repeat(1, 334)[:, :1000]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("QUANTLAB_CACHE", str(folder))
    return folder


def test_files_the_kit_writes_are_remembered_by_their_bytes(tmp_path, cache):
    mine = tmp_path / "mine.pt"
    models.save_torchscript(_Classifier().eval(), mine, {"method": "fp32"})
    assert provenance.made_here(mine)
    provenance.require_trusted(str(mine), trust=False)
    copied = tmp_path / "renamed.pt"
    copied.write_bytes(mine.read_bytes())
    assert provenance.made_here(copied), "the same bytes under another name are the same file"
    changed = tmp_path / "changed.pt"
    changed.write_bytes(mine.read_bytes() + b"\0")
    assert not provenance.made_here(changed)


@pytest.mark.parametrize("kind", ["torchscript", "python"])
def test_code_from_elsewhere_needs_trust(tmp_path, cache, kind):
    if kind == "torchscript":
        path = tmp_path / "student.pt"
        torch.jit.save(torch.jit.script(_Classifier()), str(path))
        spec = str(path)
    else:
        (tmp_path / "net.py").write_text("def build():\n    raise SystemExit('imported')\n")
        spec = f"{tmp_path / 'net.py'}:build"
    assert provenance.carries_code(spec)
    with pytest.raises(KitError, match="did not write it on this account.*--trust"):
        provenance.require_trusted(spec, trust=False)
    provenance.require_trusted(spec, trust=True)


def test_state_dicts_onnx_and_names_need_no_trust(tmp_path, cache, float_weights):
    for spec in (str(float_weights), "mobilenet_v2", str(tmp_path / "missing.pt")):
        assert not provenance.carries_code(spec)
        provenance.require_trusted(spec, trust=False)


def test_benchmark_refuses_a_handed_in_torchscript_in_one_line(tmp_path, cache, run):
    path = tmp_path / "student.pt"
    torch.jit.save(torch.jit.script(_Classifier()), str(path))
    result = run("benchmark.py", "--model", path, "--runs", "1", "--warmup", "0", env={"QUANTLAB_CACHE": str(cache)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and "--trust" in result.stderr
    trusted = run(
        "benchmark.py", "--model", path, "--runs", "1", "--warmup", "0", "--trust", env={"QUANTLAB_CACHE": str(cache)}
    )
    assert trusted.returncode == 0, trusted.stderr
