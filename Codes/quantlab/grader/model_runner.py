"""The grader's child process: load one model, check its operators, run it, measure it when asked.

Started by ``quantlab.grader.sandbox.run_models`` as ``python -m quantlab.grader.model_runner``
inside the sandbox, once per student (Python and torch start once). It reads one JSON request on stdin:

    {"models": [PATH, ...], "threads": 2, "task": "check" | "measure",
     "data": {"path": DIR, "holdout": N|null, "images": N|null, "seed": 0, "batch_size": 16,
              "runs": 50, "warmup": 10}}

and answers each model in turn with one line of JSON on its original stdout (anything the model or torch
prints goes to stderr), so that the grader can stop a model that runs too long and keep the answers
before it: ``{"ok": true, "method", "engine", "quantized", "parameters",
"weights_sha256", "int8_weight_max", "answers_sha256", "convs": {"int8", "float", "granularities"} | null,
"measured": {...} | null}`` or ``{"ok": false, "reason": ...}``.
``answers_sha256`` fingerprints what the model computes (its logits on a fixed input): two files that
answer alike are one model, whatever their bytes, names or sidecars.
The grader treats all of it as untrusted.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import re
import sys
from pathlib import Path

from quantlab.errors import first_line


def _checked_before_running(path: str) -> str | None:
    """Load a TorchScript file and check its graph before anything runs it (the kit's loader runs it once)."""
    import torch

    from quantlab import engines, models
    from quantlab.grader import model_checks

    engine = models.read_sidecar(path).get("engine")
    if engine in torch.backends.quantized.supported_engines:
        engines.set_engine(engine)  # int8 weights are packed for the engine active while they load
    try:
        model = torch.jit.load(path, map_location="cpu")
    except Exception:  # noqa: BLE001 - not TorchScript: the kit's loader tells what it is
        return None
    return model_checks.graph_problem(model)


def _our_words(message: str) -> str:
    """A loader's message with long number lists (a shape can carry bytes) cut out."""
    return re.sub(r"\[[-0-9, ]{30,}\]", "[...]", message)


def run(request: dict) -> dict:
    import torch

    from quantlab import bench, data, engines, files, loading, vocab
    from quantlab.errors import KitError
    from quantlab.grader import gates, model_checks

    path = request["model"]
    engines.set_threads(int(request["threads"]))
    if path.lower().endswith(vocab.ONNX_SUFFIXES):
        # every ONNX-family file: an .ort (or anything the onnx package cannot read) is refused, never run unchecked
        problem = model_checks.onnx_problem(Path(path))
        if problem:
            return {"ok": False, "reason": problem, "refused": True}
    elif files.is_torchscript_file(path):
        problem = _checked_before_running(path)
        if problem:
            return {"ok": False, "reason": problem, "refused": True}
    try:
        # runs the model once and checks it returns [1, 1000] (loading.probe): that proves it is a classifier
        loaded = loading.load_any(path, engine="auto", threads=int(request["threads"]))
    except KitError as error:
        message = first_line(error)
        if "allocate" in message or "out of memory" in message.lower():
            return {"ok": False, "reason": "ran out of memory"}
        return {"ok": False, "reason": f"does not load: {_our_words(message)}"}
    convs = None
    if isinstance(loaded.model, torch.jit.ScriptModule):
        problem = model_checks.graph_problem(loaded.model)
        if problem:
            return {"ok": False, "reason": problem, "refused": True}
        try:
            convs = model_checks.conv_facts(loaded.model)
        except Exception:  # noqa: BLE001 - unknown is no claim checked: the graph check above already passed
            convs = None
    if loaded.engine is not None:
        engines.set_engine(loaded.engine)
    weights = model_checks.onnx_weights_hash(Path(path)) if loaded.format == "onnx" else None
    int8_weight_max = model_checks.onnx_int8_weight_max(Path(path)) if loaded.format == "onnx" else None
    with torch.inference_mode():
        fixed_input = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        answers = hashlib.sha256(loaded.model(fixed_input).float().contiguous().numpy().tobytes()).hexdigest()
    measured = None
    if request.get("task") == "measure":
        settings = request["data"]
        evaluation = bench.evaluation_dataset(
            settings["path"], 224, settings["holdout"], settings["images"], settings["seed"], loaded.preprocessing
        )
        result = bench.benchmark_model(
            loaded,
            data.loader(evaluation, settings["batch_size"]),
            settings["runs"],
            settings["warmup"],
            progress=False,
            keep_hits=True,
        )
        measured = {key: result[key] for key in ("top1", "top5", "images", "fps", "latency_ms")}
        measured["hits"] = gates.pack_hits(result["hits"])  # one bit a photo: the grader pairs them with fp32's
        measured["unstable"] = bool(result["unstable"])  # a busy grader machine: the speed-up is not to be trusted
    return {
        "ok": True,
        "method": loaded.method,
        "engine": loaded.engine,
        "quantized": loaded.quantized,
        "parameters": loaded.parameters,
        "weights_sha256": weights,
        "int8_weight_max": int8_weight_max,
        "answers_sha256": answers,
        "convs": convs,
        "measured": measured,
    }


def answer(request: dict) -> dict:
    """``run``'s result, or why it has none: a student's model can fail in any way inside torch."""
    try:
        return run(request)
    except MemoryError:
        return {"ok": False, "reason": "ran out of memory"}
    except Exception as error:  # noqa: BLE001
        message = first_line(error)
        if "can't allocate memory" in message or "Cannot allocate memory" in message:
            return {"ok": False, "reason": "ran out of memory"}
        return {"ok": False, "reason": f"does not load or run ({type(error).__name__})"}


def main() -> None:
    result_fd = os.dup(1)
    os.dup2(2, 1)  # whatever the model or torch prints goes to stderr, never into the results
    request = json.loads(sys.stdin.read(1 << 20))
    import torch

    engine = torch.backends.quantized.engine
    for model in request.pop("models"):  # one student's models, answered one by one as each is done
        torch.backends.quantized.engine = engine  # a model's engine is its own, never the previous one's
        result = answer({**request, "model": model})
        os.write(result_fd, (json.dumps(result) + "\n").encode("utf-8"))
        gc.collect()
    os.close(result_fd)


if __name__ == "__main__":
    main()
