"""quantlab.errors.run_cli, as every script uses it: bad input is one line on stderr and exit code 2, never a
traceback."""

from __future__ import annotations

import pytest

from conftest import run_in_process, run_script


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("grade.py", ["{root}", "--rubric", "{bomb}"], "aliases are not allowed"),
        ("quantize_model.py", ["--config", "{bomb}"], "aliases are not allowed"),
        ("quantize_model.py", ["--config", "{mode}"], "operation_mode must be one name"),
        ("grade.py", ["{root}", "--threads", "100000"], "--threads 100000 is more than this machine can use"),
        ("quantize_model.py", ["--output", "{root}/m.pt", "--threads", "100000"], "--threads 100000"),
        ("mobile_net.py", ["--source", "samples", "--frames", "1", "--threads", "100000"], "--threads 100000"),
        ("speed_suite.py", ["--threads", "100000"], "--threads 100000"),
        ("benchmark.py", ["--model", "{tiny_onnx}", "--runs", "1", "--warmup", "0", "--threads", "2"], "under 1 kB"),
    ],
)
def test_error_paths_give_one_short_line(tmp_path, script, args, message):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    (tmp_path / "ada").mkdir()
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])
    shape = numpy_helper.from_array(np.array([1, 1000], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=0),
            helper.make_node("Expand", ["mean", "shape"], ["logits"]),
        ],
        "tiny",
        [x],
        [y],
        [shape],
    )
    tiny = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    tiny.ir_version = 9
    onnx.save(tiny, str(tmp_path / "tiny.onnx"))  # 179 bytes: 0.000 MB
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)
    ]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(levels) + "\ngeneral: {model_path: *i}\n")
    mode = tmp_path / "mode.yaml"
    mode.write_text("operation_mode: [quantization]\n")
    filled = [arg.format(root=tmp_path, bomb=bomb, mode=mode, tiny_onnx=tmp_path / "tiny.onnx") for arg in args]
    result = run_in_process(script, *filled)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr[-2000:]
    assert len(lines[0]) < 300
    assert not (tmp_path / "leaderboard.csv").exists() and not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("mobile_net.py", ["--frames", "0"], "--frames must be at least 1"),
        ("quantize_model.py", ["--method", "nope", "--output", "{root}/m.pt"], "unknown --method 'nope'"),
        ("benchmark.py", ["--model", "{root}/nope.pt"], "no such file"),
        ("grade.py", ["{root}/nobody"], "nobody"),
        ("speed_suite.py", ["--runs", "0"], "--runs must be at least 1"),
    ],
)
def test_each_cli_exits_2_in_a_fresh_interpreter(tmp_path, script, args, message):
    """The other error paths run in-process (run_in_process); this is each script as a student starts it."""
    result = run_script(script, *(arg.format(root=tmp_path) for arg in args), timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert message in result.stderr.strip().splitlines()[-1], result.stderr[-2000:]
