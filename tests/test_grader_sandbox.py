"""Grading untrusted submissions (issue #13): every attack a hostile student tried, built here, and its outcome.

The hostile files are tiny scripted TorchScript modules (not MobileNetV2): what is
under test is the grader's isolation, checks and outputs, not the model. The class
is graded once per isolation (bubblewrap when it works here, and the rlimits
fallback, forced), in quick mode with a short time limit.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import time
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import run_script

SECRET = "s3cr3t-token-of-the-instructor"
# scored_model best: these students hand in tiny models, no recipe (test_grader_recipes.py tests that rule)
TEST_RUBRIC = (
    "scored_model: best\nweights: {speedup: 0}\npi: {min_frames: 3}\ntolerance: {speedup_factor: 1000000000}\n"
)
TIMEOUT = "25"


class Tiny(nn.Module):
    """A 1000-class 'classifier' that loads and runs in milliseconds."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(3, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Writer(Tiny):
    """Zeroes the first bytes of ``victim`` (another student's model) through a shared file mapping."""

    def __init__(self, victim: str) -> None:
        super().__init__()
        self.victim = victim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        written = torch.from_file(self.victim, shared=True, size=16, dtype=torch.uint8)
        written.zero_()
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1)) + written.sum()


class Reader(Tiny):
    """Returns the secret file's bytes as the output's shape, for the grader to print."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        data = torch.from_file(self.secret, shared=False, size=8, dtype=torch.uint8)
        return torch.zeros([int(data[0]), int(data[1]), int(data[2]), int(data[3])])


class Endless(Tiny):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        while True:
            x = x + 1
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Slow(Tiny):
    """One loop of fixed length that would run for hours: refused, its trips x operators are over the cap."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = x.flatten()[:1].expand(1500, 1500).contiguous()
        for _ in range(10000):  # 7 GFLOP a turn
            big = torch.mm(big, big) * 0.0 + 1.0
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1)) + big.sum()


class LoopedNet(nn.Module):
    """A small conv/ReLU/pool/linear classifier run 10,000 times by a constant loop (the trip cap allows it)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1), 1))
        for _ in range(10000):
            features = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1)
            out = self.fc(torch.flatten(features, 1))
        return out


class FewTurns(Tiny):
    """A short loop (100 turns of one operator): under the cap, allowed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(100):
            x = x + 1.0
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Unrolled(Tiny):
    """No loop at all, and minutes of work (four 1-TFLOP products): only the time limit stops it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = x.flatten()[:1].expand(8000, 8000).contiguous()
        big = torch.mm(big, big)
        big = torch.mm(big, big)
        big = torch.mm(big, big)
        big = torch.mm(big, big)
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1)) + big.sum()


class Nested(Tiny):
    """Three loops of 10,000: each under the limit, 10^12 turns together."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(10000):
            for _ in range(10000):
                for _ in range(10000):
                    x = x + 1
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Wrapped(nn.Module):
    """The same weights in another module, with other code: copying that a byte comparison misses."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x * 1.0)


class Hog(Tiny):
    """Asks for 6.4 GB: only the memory cap stops it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = x.flatten()[:1].expand(40000, 40000).contiguous()
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1)) + big.sum()


class SetState(Tiny):
    """Code that runs while loading (here harmless; it could call anything forward can)."""

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.fc.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        self.training = state[1]


def torchscript_bytes(module: nn.Module, folder: Path, name: str) -> bytes:
    path = folder / name
    torch.jit.save(torch.jit.script(module.eval()), str(path))
    content = path.read_bytes()
    path.unlink()
    return content


def onnx_bytes(module: nn.Module, folder: Path, name: str) -> bytes:
    path = folder / name
    torch.onnx.export(module.eval(), torch.rand(1, 3, 224, 224), str(path), dynamo=False)
    content = path.read_bytes()
    path.unlink()
    return content


def int8_tiny_bytes(seed: int, folder: Path, name: str, engine: str = "x86") -> bytes:
    """An honest student's tiny model: int8 (dynamic quantization of its Linear), as its sidecar says."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine  # int8 weights are packed for the engine the sidecar names
    try:
        quantized = torch.ao.quantization.quantize_dynamic(Tiny(seed).eval(), {nn.Linear}, dtype=torch.qint8)
        return torchscript_bytes(quantized, folder, name)
    finally:
        torch.backends.quantized.engine = previous


def zip_bomb(path: Path, megabytes: int = 400) -> None:
    """A .pt that looks like a torch archive and inflates to ``megabytes`` of zeros (about 400 kB on disk)."""
    block = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("archive/data/0", "w", force_zip64=True) as entry:
            for _ in range(megabytes):
                entry.write(block)
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")


def row(file: str | None, method: str, content: bytes | None, latency: float = 2.0, top1: float = 70.0) -> dict:
    return {
        "name": file or "mobilenet_v2",
        "file": file,
        "path": file,
        "format": "torchscript" if file else "torchvision",
        "runtime": "pytorch",
        "method": method,
        "engine": "x86" if file else None,
        "sha256": hashlib.sha256(content).hexdigest() if content is not None else None,
        "size_mb": len(content) / 1e6 if content is not None else 14.0,
        "parameters": 3003,
        "latency_ms": {"median": latency, "p90": latency * 1.1, "mean": latency},
        "fps": round(1e3 / latency, 2),
        "top1": top1,
        "top5": 90.0,
        "images": 16,
        "skipped": 0,
    }


def report(rows: list[dict]) -> dict:
    return {
        "schema": "quantlab.benchmark/1",
        "created": "2026-11-26T01:30:00Z",
        "machine": {
            "cpu": "x",
            "arch": "x86_64",
            "os": "Linux",
            "python": "3.11",
            "torch": "2",
            "torchvision": "0",
            "onnxruntime": None,
            "threads": 2,
            "physical_cores": 2,
            "engine": "x86",
        },
        "settings": {
            "runs": 2,
            "warmup": 1,
            "batch_size": 1,
            "input_size": 224,
            "data": "photos",
            "holdout": 8,
            "seed": 0,
            "threads": 2,
            "engine": "x86",
        },
        "results": [row(None, "fp32", None, latency=10.0, top1=71.0), *rows],
    }


def pi_run(model: bytes, **changes) -> dict:
    run = {
        "frames": 300,
        "inferences": 300,
        "seconds": 10.0,
        "mean_fps": 30.0,
        "source": "0",
        "engine": "qnnpack",
        "model": "mnv2_qnnpack.pt (0.0 MB)",
        "model_sha256": hashlib.sha256(model).hexdigest(),
        "arch": "aarch64",
        "cpu": "Raspberry Pi 4 Model B Rev 1.4",
        "threads": 4,
    }
    return {**run, **changes}


def hand_in(
    folder: Path,
    files: dict[str, tuple[bytes, str]],
    extra_rows: list[dict] | None = None,
    pi: dict | None = None,
    sidecars: dict[str, str] | None = None,
    edit=None,
) -> None:
    """A student folder: each model file with its sidecar and report row, and an optional Pi run."""
    folder.mkdir()
    rows = []
    for name, (content, method, *engine) in files.items():
        (folder / name).write_bytes(content)
        sidecar = {
            "method": method,
            "engine": engine[0] if engine else "x86",
            "sha256": hashlib.sha256(content).hexdigest(),
        }
        text = (sidecars or {}).get(name, json.dumps(sidecar))
        (folder / name).with_suffix(".json").write_text(text)
        rows.append(row(name, method, content, latency=2.5))
    document = report(rows + (extra_rows or []))
    if edit:
        edit(document)
    (folder / "benchmark.json").write_text(json.dumps(document))
    if pi is not None:
        (folder / "pi_run.json").write_text(json.dumps(pi))


@pytest.fixture(scope="module")
def hostile_class(tmp_path_factory) -> dict:
    """Honest tiny students and one student per attack, built once."""
    root = tmp_path_factory.mktemp("class")
    work = tmp_path_factory.mktemp("work")
    secret = work / "secret.txt"
    secret.write_text(SECRET + "\n")
    tiny = int8_tiny_bytes(0, work, "tiny.pt")
    other = int8_tiny_bytes(1, work, "other.pt")
    for_pi = int8_tiny_bytes(5, work, "pi.pt", engine="qnnpack")  # what the Pi runs: int8 for qnnpack
    hand_in(root / "ada", {"tiny.pt": (tiny, "static"), "pi.pt": (for_pi, "dynamic", "qnnpack")}, pi=pi_run(for_pi))
    victim = root / "ada" / "tiny.pt"
    hand_in(root / "bo", {"other.pt": (other, "static")})
    hand_in(root / "cat_writer", {"m.pt": (torchscript_bytes(Writer(str(victim)), work, "m.pt"), "static")})
    hand_in(root / "dee_reader", {"m.pt": (torchscript_bytes(Reader(str(secret)), work, "m.pt"), "static")})
    hand_in(root / "eli_endless", {"m.pt": (torchscript_bytes(Endless(), work, "m.pt"), "static")})
    hand_in(root / "fox_slow", {"m.pt": (torchscript_bytes(Unrolled(), work, "m.pt"), "static")})
    hand_in(root / "fay_looped", {"m.pt": (torchscript_bytes(LoopedNet(), work, "m.pt"), "static")})
    hand_in(root / "gil_hog", {"m.pt": (torchscript_bytes(Hog(), work, "m.pt"), "static")})
    zip_bomb(work / "bomb.pt")
    hand_in(root / "hoa_bomb", {"m.pt": ((work / "bomb.pt").read_bytes(), "static")})
    for name in (
        "=1+2",
        '=HYPERLINK("evil.example","x")',
        "<img src=x onerror=alert(1)>",
        "[click](javascript:alert(1))",
        "nl\n| forged | 100 |",
    ):
        hand_in(root / name, {"tiny.pt": (tiny, "static")})
    (root / "ivy_linked").symlink_to(root / "bo", target_is_directory=True)
    hand_in(root / "jan_linked_pi", {"other.pt": (other, "static")})
    (root / "jan_linked_pi" / "pi_run.json").symlink_to(root / "ada" / "pi_run.json")
    hand_in(
        root / "kai_x86",
        {"other.pt": (other, "static")},
        pi=pi_run(other, arch="x86_64", cpu="AMD EPYC 7B13", source="samples"),
    )
    hand_in(
        root / "lou_10000fps",
        {"other.pt": (other, "static")},
        pi=pi_run(other, frames=100000, seconds=10.0, mean_fps=10000.0),
    )
    hand_in(root / "max_copy", {"tiny.pt": (tiny, "static")}, pi=pi_run(tiny))
    (root / "max_copy" / "benchmark.json").write_bytes((root / "ada" / "benchmark.json").read_bytes())
    (root / "max_copy" / "pi_run.json").write_bytes((root / "ada" / "pi_run.json").read_bytes())
    hand_in(root / "ned_triple", {"s.pt": (other, "static"), "d.pt": (other, "dynamic"), "q.pt": (other, "qat")})
    # the same weights in another wrapper, and a float model whose sidecar claims QAT
    hand_in(root / "oli_float_claims_qat", {"f.pt": (torchscript_bytes(Tiny(2), work, "f.pt"), "qat")})
    hand_in(root / "pia_float_onnx_claims_static", {"f.onnx": (onnx_bytes(Tiny(3), work, "f.onnx"), "static")})
    numbers = {
        "nan_size": lambda r: r["results"][1].update(size_mb=math.nan),
        "inf_latency": lambda r: r["results"][1]["latency_ms"].update(median=math.inf),
        "huge_latency": lambda r: r["results"][1].update(
            latency_ms={"median": 1e300, "p90": 1e300, "mean": 1e300}, fps=1e-297
        ),
        "zero_fps": lambda r: r["results"][1].update(fps=0),
        "rows_120000": lambda r: r["results"].extend([r["results"][1]] * 120000),
    }
    for name, edit in numbers.items():
        hand_in(root / f"oz_{name}", {"other.pt": (other, "static")}, edit=edit)
    hand_in(
        root / "pat_broken_sidecar",
        {"tiny.pt": (tiny, "static"), "other.pt": (other, "dynamic")},
        sidecars={"other.pt": "{not json"},
    )
    (root / "pat_broken_sidecar" / "pi_run.json").write_text("[1, 2")
    rubric = work / "rubric.yaml"
    rubric.write_text(TEST_RUBRIC)
    return {"root": root, "rubric": rubric, "victim": victim, "victim_bytes": victim.read_bytes(), "secret": secret}


def isolations() -> list:
    from quantlab.grader import sandbox

    works = sandbox.isolation("auto") == sandbox.BWRAP
    return [
        pytest.param("bwrap", marks=pytest.mark.skipif(not works, reason="bubblewrap is not usable here")),
        "rlimits",
    ]


@pytest.fixture(scope="module", params=isolations())
def graded(request, hostile_class, tmp_path_factory) -> dict:
    output = tmp_path_factory.mktemp(f"board_{request.param}")
    result = run_script(
        "grade.py",
        hostile_class["root"],
        "--rubric",
        hostile_class["rubric"],
        "--output",
        output,
        "--threads",
        "2",
        "--timeout",
        TIMEOUT,
        "--isolation",
        request.param,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    with open(output / "leaderboard.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    return {
        **hostile_class,
        "isolation": request.param,
        "output": output,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "rows": rows,
        "board": {row["student"]: row for row in rows},
        "markdown": (output / "leaderboard.md").read_text(encoding="utf-8"),
    }


def test_isolation_is_named(graded):
    expected = "bubblewrap sandbox" if graded["isolation"] == "bwrap" else "bubblewrap not available"
    assert expected in graded["stdout"]
    assert expected in graded["markdown"]


def test_model_code_cannot_write_or_read_files(graded):
    board = graded["board"]
    assert graded["victim"].read_bytes() == graded["victim_bytes"]  # the classmate's model is untouched
    assert "refused" in board["cat_writer"]["reasons"] and "from_file" in board["cat_writer"]["reasons"]
    assert "refused" in board["dee_reader"]["reasons"] and "from_file" in board["dee_reader"]["reasons"]
    assert board["ada"]["status"] == "ok", board["ada"]
    outputs = [graded["stdout"], graded["stderr"]] + [
        path.read_bytes().decode("utf-8", "replace") for path in graded["output"].iterdir()
    ]
    assert not any(SECRET in text for text in outputs)
    assert not any("115, 51, 99" in text for text in outputs)  # the secret's first bytes as a shape


def test_endless_slow_and_greedy_models_cost_only_themselves(graded):
    board = graded["board"]
    assert "never ends" in board["eli_endless"]["reasons"] and "prim::Loop" in board["eli_endless"]["reasons"]
    assert f"did not finish within {TIMEOUT} s" in board["fox_slow"]["reasons"]
    assert "ran out of memory" in board["gil_hog"]["reasons"]
    # a small classifier in a 10,000-trip loop: refused before it runs, it costs the class no time limit
    assert "its loops run over 1000 operators in all" in board["fay_looped"]["reasons"]
    for name in ("eli_endless", "fox_slow", "gil_hog", "fay_looped"):
        assert board[name]["status"] == "problems" and board[name]["best_model"] == ""
    assert int(board["ada"]["rank"]) <= 3


def test_zip_bomb_is_refused_unopened(graded):
    reasons = graded["board"]["hoa_bomb"]["reasons"]
    assert "refused unopened" in reasons and "expands to 419 MB" in reasons


def test_leaderboard_injection_is_neutralised(graded):
    rows, markdown = graded["rows"], graded["markdown"]
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "@", "\t", "\r")), row
            assert not (value.startswith("-") and value != "-" and not value.lstrip("-").replace(".", "").isdigit()), (
                row
            )
    injected = [row for row in rows if "rule of labs/homework.md" in row["reasons"]]
    assert len(injected) == 5 and all(row["status"] == "rejected" for row in injected)
    assert "<img" not in markdown and "javascript:alert(1))" not in markdown.replace("\\", "")  # no live link
    assert "](javascript" not in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(table) == len(rows) + 1  # header + one line each: no forged rows


def test_links_are_refused(graded):
    board = graded["board"]
    assert board["ivy_linked"]["status"] == "rejected" and "is a link" in board["ivy_linked"]["reasons"]
    jan = board["jan_linked_pi"]
    assert "pi_run.json is a link" in jan["reasons"] and "pi" not in jan["parts"].split()


def test_pi_run_must_prove_itself(graded):
    board = graded["board"]
    assert "pi" in board["ada"]["parts"].split()
    kai, lou = board["kai_x86"], board["lou_10000fps"]
    assert "not a Raspberry Pi" in kai["reasons"] and "pi" not in kai["parts"].split()
    assert "more than a Raspberry Pi reaches" in lou["reasons"] and "pi" not in lou["parts"].split()


def test_copying_is_listed(graded):
    board, markdown = graded["board"], graded["markdown"]
    assert "benchmark.json identical to max_copy" in board["ada"]["possible_copying"]
    assert "pi_run.json identical to ada" in board["max_copy"]["possible_copying"]
    assert "## Possible copying" in markdown and "**max_copy**" in markdown.split("## Possible copying")[1]
    ned = board["ned_triple"]
    assert ned["status"] == "flagged" and "same weights" in ned["reasons"]
    assert sum(part in ned["parts"].split() for part in ("static", "dynamic", "qat")) == 1
    oli = board["oli_float_claims_qat"]  # a sidecar is the student's word; the graph is the file's
    assert "its sidecar says qat, but the model holds no int8 layers" in oli["reasons"]
    assert "qat" not in oli["parts"].split() and oli["status"] == "flagged"
    pia = board["pia_float_onnx_claims_static"]  # ONNX too: the graph's operators, not the sidecar, say int8
    assert "its sidecar says static, but the model holds no int8 layers" in pia["reasons"]
    assert "static" not in pia["parts"].split() and pia["status"] == "flagged"


def test_nested_loops_are_refused_and_copies_are_told_by_their_weights(tmp_path):
    from quantlab.grader import model_checks

    assert "nested loops of 100000000 iterations in all" in model_checks.graph_problem(torch.jit.script(Nested()))
    assert "its loops run over 1000 operators in all" in model_checks.graph_problem(torch.jit.script(Slow()))
    assert "its loops run over 1000 operators in all" in model_checks.graph_problem(torch.jit.script(LoopedNet()))
    assert model_checks.graph_problem(torch.jit.script(FewTurns())) is None  # 100 turns of one operator
    assert model_checks.graph_problem(torch.jit.script(Unrolled())) is None  # only the time limit stops that one
    paths = []
    for name, module in (("a.pt", Tiny(3)), ("b.pt", Wrapped(Tiny(3))), ("c.pt", Tiny(4))):
        torch.jit.save(torch.jit.script(module.eval()), str(tmp_path / name))
        paths.append(tmp_path / name)
    same, wrapped, other = map(model_checks.archive_content_hash, paths)
    assert same == wrapped != other and same is not None


@pytest.mark.parametrize(
    "student, reason",
    [
        ("oz_nan_size", "NaN, which is not a number"),
        ("oz_inf_latency", "Infinity, which is not a number"),
        ("oz_huge_latency", "latency_ms.median: must be positive and at most"),
        ("oz_zero_fps", "fps: must be positive"),
        ("oz_rows_120000", "benchmark.json is over 1024 kB"),
    ],
)
def test_report_numbers_must_be_sane(graded, student, reason):
    row = graded["board"][student]
    assert row["status"] == "rejected" and reason in row["reasons"], row["reasons"]
    assert len(row["reasons"]) < 400


def test_broken_sidecar_and_pi_run_cost_only_their_part(graded):
    pat = graded["board"]["pat_broken_sidecar"]
    assert pat["status"] == "problems" and pat["best_model"] == "tiny.pt" and "static" in pat["parts"].split()
    assert "other.pt: its sidecar other.json is not valid JSON" in pat["reasons"]
    assert "pi_run.json is not valid JSON" in pat["reasons"] and "Error" not in pat["reasons"]


# ---- checks without a grader run ------------------------------------------------------


def test_report_schema_refuses_bad_numbers():
    from quantlab.report import validate_report

    good = report([row("m.pt", "static", b"x" * 1000)])
    assert validate_report(good) == []
    for edit, problem in (
        (lambda r: r["results"][1].update(fps=0), "fps: must be positive"),
        (lambda r: r["results"][1].update(size_mb=math.nan), "size_mb"),
        (lambda r: r["results"][1].update(parameters=-5), "cannot be negative"),
        (lambda r: r["results"].extend([r["results"][1]] * 60), "over the 50"),
        (lambda r: r["machine"].update(threads=-1), "machine.threads"),
    ):
        bad = json.loads(json.dumps(good))
        edit(bad)
        assert any(problem in line for line in validate_report(bad)), validate_report(bad)


def test_onnx_external_data_and_control_flow_are_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from quantlab.grader import model_checks

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])
    weights = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    weights.data_location = TensorProto.EXTERNAL
    weights.external_data.add(key="location", value="/etc/passwd")
    graph = helper.make_graph([helper.make_node("Add", ["input", "w"], ["logits"])], "g", [x], [y], [weights])
    onnx.save(helper.make_model(graph), str(tmp_path / "external.onnx"))
    assert "external data" in model_checks.onnx_problem(tmp_path / "external.onnx")
    graph = helper.make_graph([helper.make_node("Loop", ["input"], ["logits"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), str(tmp_path / "loop.onnx"))
    assert "'Loop'" in model_checks.onnx_problem(tmp_path / "loop.onnx")


def test_load_time_code_is_refused(tmp_path):
    """torch.jit.load runs a module's __setstate__: refused before anything loads the file."""
    from quantlab.grader import model_checks

    path = tmp_path / "setstate.pt"
    torch.jit.save(torch.jit.script(SetState().eval()), str(path))
    assert "defines __getstate__" in model_checks.check_code_text(path)


def test_ort_files_are_refused_and_onnx_family_files_are_always_checked(tmp_path):
    """An .ort file cannot be read by the onnx package, so its operators (a Loop) would escape the allowlist."""
    import onnx
    from onnx import TensorProto, helper

    from quantlab.grader import intake, model_runner

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])
    graph = helper.make_graph([helper.make_node("Loop", ["input"], ["logits"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), str(tmp_path / "loop.ort"))
    assert "refused, hand in the .onnx file" in intake.content_problem(tmp_path / "loop.ort")
    (tmp_path / "loop.ort").rename(tmp_path / "LOOP.ORT")
    assert "refused" in intake.content_problem(tmp_path / "LOOP.ORT")
    (tmp_path / "LOOP.ORT").rename(tmp_path / "loop.ort")
    # the sandboxed child refuses it too, whatever let it through: it checks every ONNX-family suffix
    result = model_runner.run({"model": str(tmp_path / "loop.ort"), "threads": 1, "task": "check"})
    assert result["ok"] is False and result["refused"] is True and "'Loop'" in result["reason"]
    (tmp_path / "flat.ort").write_bytes(b"\x18\x00\x00\x00ORTM" + bytes(64))  # ORT's flatbuffer, not protobuf
    result = model_runner.run({"model": str(tmp_path / "flat.ort"), "threads": 1, "task": "check"})
    assert result["ok"] is False and "not a readable ONNX model" in result["reason"]


class _SlowRunner:
    """A stand-in for the sandboxed runner whose every model runs out its limit (``timeout`` seconds)."""

    measure = None
    memory_mb = 1024

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.calls: list[str] = []

    def __call__(self, path: Path, sidecar: dict | None):
        from quantlab.grader import sandbox

        self.calls.append(path.name)
        time.sleep(self.timeout)
        return sandbox.Outcome(None, f"did not finish within {self.timeout:g} s (an endless loop, or far too slow)")


def test_one_student_cannot_spend_the_class_time(tmp_path):
    """Every model runs out the limit: after the student's budget (2 limits) the rest are not run."""
    from quantlab.grader import rubric, scoring
    from quantlab.grader.runner import Baseline

    work = tmp_path / "work"
    work.mkdir()
    files = {f"m{i}.pt": (torchscript_bytes(Tiny(10 + i), work, f"m{i}.pt"), "static") for i in range(6)}
    hand_in(tmp_path / "sam_slow", files)
    runner = _SlowRunner(timeout=0.3)
    graded = scoring.grade_student(tmp_path / "sam_slow", rubric.load_rubric(None), Baseline(14.0, None), runner)
    assert runner.calls == ["m0.pt", "m1.pt"]  # 0.3 s each: past 0.6 s, no more models start
    skipped = [model for model in graded.models if model.excluded and "was not run" in model.excluded]
    assert [model.file for model in skipped] == ["m2.pt", "m3.pt", "m4.pt", "m5.pt"]
    assert "used up its 0.6 s (2 x the limit per model)" in skipped[0].excluded
    assert graded.status == "problems" and "Traceback" not in " ".join(graded.reasons)
