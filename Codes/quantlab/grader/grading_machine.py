"""What the grading machine itself does to the grades: its int8 path, and the photos it evaluates on.

- The int8 path: which instruction level each engine runs with here (``quantlab.cpu``: VNNI or not, lowered
  by ``ONEDNN_MAX_CPU_ISA`` / ``FBGEMM_ENABLE_INSTRUCTIONS``, which the sandboxed child receives too), said in
  the leaderboard's header; a model whose engine's int8 sums saturate on this CPU (the probe
  ``quantlab.engines``' auto uses to reject an engine) is named and not scored, instead of losing accuracy
  points to the grader's CPU. ONNX files the same way: ONNX Runtime's U8S8 kernels saturate on x86 without
  VNNI (``quantlab.cpu.onnxruntime_u8s8_error`` measures it here; ONNX Runtime has no switch like the two
  variables above, so only a CPU without VNNI, or ``qemu-x86_64 -cpu Haswell``, shows it), and a file whose
  int8 weights use the full 8 bits (``--format onnx`` made on a VNNI CPU) is not scored on such a grader;
  one with 7-bit weights (``reduce_range``, what the kit writes on a CPU without VNNI) is exact everywhere.
- The photos: grading on the kit's public sample (or photos from it) measures accuracy on photos every student
  has, and may have calibrated or trained on; the header warns, and each model whose sidecar names the grading
  photos as its calibration or training source gets a note.

Example:
    print(int8_path_line("x86"))
    saturation_problem("m.pt", "onednn")   # a reason on a CPU without VNNI, else None
    onnx_saturation_problem("m.onnx", 127)  # the same for an ONNX file whose int8 weights reach 127
    public_sample_warning(Path("photos/"))
"""

from __future__ import annotations

import hashlib
from functools import cache, lru_cache
from pathlib import Path

from quantlab import cpu
from quantlab.assets import IMAGENET_SAMPLE, asset_path
from quantlab.grader.untrusted import clean_text
from quantlab.vocab import IMAGE_SUFFIXES

SATURATING_ENGINES = ("x86", "fbgemm", "onednn")  # x86 engines whose int8 sums may saturate (qnnpack's never do)
# sha256 of the newline-joined sorted file names of the kit's imagenet-sample (1000 photos, one per class):
# recognises the sample where the offline assets are not installed to compare contents
PUBLIC_SAMPLE_NAMES_SHA256 = "ba629699b8911e07314cfbd7e5f74e02963e1697b2e6d5a92c21034ecd1cbc96"
MAX_PHOTOS_HASHED = 20_000  # a grading folder larger than this is checked on its first photos only


@cache
def _saturation(engine: str) -> tuple[float, float, float] | None:
    """``engines.saturation_error`` once per engine in this process (the child has the same environment)."""
    import torch

    from quantlab import engines

    if engine not in torch.backends.quantized.supported_engines:
        return None
    return engines.saturation_error(engine)


def saturation_problem(name: str, engine: str | None) -> str | None:
    """Why ``name`` (int8 for ``engine``) cannot be scored on this CPU: its int8 sums saturate here; else None."""
    from quantlab import engines

    if engine not in SATURATING_ENGINES:
        return None
    measured = _saturation(engine)
    if measured is None or measured[0] <= engines.SATURATION_MAX_ERROR:
        return None
    error, got, expected = measured
    return (
        f"{name} not scored on this grading CPU: {engine}'s int8 sums saturate here ({cpu.engine_isa(engine).label}; "
        f"the saturation probe gave {got:.0f} where fp32 gives {expected:.0f}), so its accuracy would be the "
        "CPU's, not the model's. Grade it on a CPU with VNNI, or quantize with --engine x86"
    )


@cache
def _onnxruntime_u8s8_error() -> float | None:
    """``cpu.onnxruntime_u8s8_error`` once per process (the child runs ONNX Runtime on the same CPU)."""
    try:
        return cpu.onnxruntime_u8s8_error()
    except ImportError:  # no onnxruntime here: no ONNX file loads either
        return None


def onnx_saturation_problem(name: str, int8_weight_max: int | None) -> str | None:
    """Why ONNX file ``name`` cannot be scored on this CPU: ONNX Runtime's U8S8 sums saturate here and its int8
    weights (the largest |value|, read from the file by the child) exceed 7 bits; else None."""
    from quantlab import onnx_tools
    from quantlab.grader.model_checks import ONNX_EXACT_WEIGHT_MAX

    if not isinstance(int8_weight_max, int) or int8_weight_max <= ONNX_EXACT_WEIGHT_MAX:
        return None
    error = _onnxruntime_u8s8_error()
    if error is None or error <= onnx_tools.PROBE_MAX_ERROR:
        return None
    return (
        f"{name} not scored on this grading CPU: ONNX Runtime's uint8 x int8 sums saturate here "
        f"({cpu.int8_isa().label}; the probe convolution kept {100 * (1 - error):.0f} % of fp32's sum) and its int8 "
        f"weights reach {int8_weight_max} (8 bits), so its accuracy would be the CPU's, not the model's. Grade it "
        "on a CPU with VNNI, or quantize on a CPU without VNNI (the kit then writes 7-bit weights, exact everywhere)"
    )


def onnx_path_word() -> str:
    """ONNX Runtime's int8 path here, as the probe measured it (no environment variable lowers it)."""
    from quantlab import onnx_tools

    error = _onnxruntime_u8s8_error()
    if error is None:
        return "onnxruntime not installed"
    state = "U8S8 exact" if error <= onnx_tools.PROBE_MAX_ERROR else "U8S8 saturates: 8-bit ONNX weights not scored"
    return f"onnxruntime {cpu.int8_isa().name} ({state}; no switch lowers it)"


def int8_path_line(pc_engine: str) -> str:
    """The leaderboard header's line: each engine's int8 level here, VNNI or not, and the rubric's engine."""
    parts = []
    for engine in ("x86", "onednn"):
        level = cpu.engine_isa(engine)
        vnni = "VNNI" if level.dot_product else "no VNNI"
        parts.append(f"{engine} {level.name} ({vnni})")
    capped = cpu.capped_engines()
    forced = f"; forced by environment: {', '.join(f'{e} {why}' for e, why in capped.items())}" if capped else ""
    rule = "any engine" if pc_engine == "any" else f"engine {pc_engine}"
    return f"int8 path graded: {', '.join(parts)}; rubric's PC tasks: {rule}; ONNX files: {onnx_path_word()}{forced}"


def _photos(folder: Path) -> list[Path]:
    found = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not path.is_symlink():
            found.append(path)
            if len(found) >= MAX_PHOTOS_HASHED:
                break
    return found


@lru_cache(maxsize=4)
def _public_sample_hashes(sample: Path) -> frozenset[str]:
    return frozenset(hashlib.sha256(path.read_bytes()).hexdigest() for path in _photos(sample))


def public_sample_warning(data: Path) -> str | None:
    """A warning when the grading photos are (partly) the kit's public sample, which every student has."""
    photos = _photos(Path(data))
    if not photos:
        return None
    sample = asset_path(IMAGENET_SAMPLE)
    if sample is not None:
        public = _public_sample_hashes(sample.resolve())
        known = sum(hashlib.sha256(path.read_bytes()).hexdigest() in public for path in photos)
    else:  # no offline assets here: recognise the whole sample by its file names
        names = "\n".join(sorted(path.name for path in photos))
        known = len(photos) if hashlib.sha256(names.encode()).hexdigest() == PUBLIC_SAMPLE_NAMES_SHA256 else 0
    if not known:
        return None
    return (
        f"WARNING: {known} of the {len(photos)} grading photos are the kit's public imagenet-sample, which every "
        "student has and may have calibrated or trained on: grade on photos students never saw "
        "(labs/instructor_guide.md, section 2)"
    )


def source_note(name: str, sidecar: dict, data: Path, holdout: int | None = None) -> str | None:
    """A note when the sidecar's calibration or training source names the grading photos' folder and the
    grader's ``--holdout`` does not leave out at least as many photos as the model was fitted on (the homework's
    commands take their photos from the start of the same seeded shuffle that --holdout leaves out)."""
    grading = Path(data).resolve().name
    for what in ("calibration", "training"):
        record = sidecar.get(what)
        source = record.get("source") if isinstance(record, dict) else None
        if not isinstance(source, str):
            continue
        images = record.get("images")
        if holdout and isinstance(images, int) and not isinstance(images, bool) and 0 < images <= holdout:
            continue
        folder = Path(source.split(" (")[0].rstrip("/")).name  # "DIR (calibration subset)" -> DIR's name
        if folder == grading:
            return (
                f"{name}: its {what} photos came from {clean_text(source, 80)}, a folder named like the one the "
                "grader evaluates on: unless --holdout keeps them out, it is graded on photos it was fitted to"
            )
    return None


def header_lines(rubric: dict, data: Path | None, students: list) -> list[str]:
    """The leaderboard header's lines on fairness: the gate rule, the int8 path, the photos, a Pi made optional."""
    from quantlab.grader import gates, scoring

    lines = [gates.rule_line(rubric, intervals=data is not None), int8_path_line(rubric["engines"]["pc"])]
    if rubric["pi"]["optional"]:
        without = sum(1 for student in students if student.pi_scale)
        emulated = sum(1 for student in students if student.pi_emulated)
        lines.append(
            f"Pi tasks optional: {without} student(s) without pi_run.json / pi_open.json are scored without the open "
            f"target, their other points x{scoring.pi_optional_scale(rubric):.3f}; {emulated} earned the pi part with "
            "the emulated Pi check (pi_check.json: answers on ARM's qnnpack, never FPS or the open target)"
        )
    warning = public_sample_warning(data) if data is not None else None
    if warning:
        lines.append(warning)
    return lines
