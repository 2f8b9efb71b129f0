"""Reading a submission folder: its name, benchmark.json, each model file and its sidecar.

Nothing a student sends is trusted: links are refused, JSON files are
size-capped and validated, a model file must be what its suffix says and pass
``model_checks`` before any loader sees it. Each reader returns (or raises, for
the report that the whole submission rests on) the reason a file cannot be used.
"""

from __future__ import annotations

import re
from pathlib import Path

from quantlab import files, models, report, vocab
from quantlab.errors import KitError
from quantlab.grader import model_checks
from quantlab.grader.pi_runs import OPEN_RUN_FILE, PI_RUN_FILE
from quantlab.grader.untrusted import clean_text, link_problem, read_json_file

REPORT_FILE = "benchmark.json"  # Codes/benchmark.py --json
RESERVED_STEMS = {
    Path(name).stem for name in (REPORT_FILE, PI_RUN_FILE, OPEN_RUN_FILE)
}  # a model named so would share their JSON name
# .pt2 (torch.export) is not graded: loading one can unpickle code; the homework hands in TorchScript or ONNX
GRADED_SUFFIXES = (*vocab.TORCH_SUFFIXES, *vocab.ONNX_SUFFIXES)
# an .ort file is a flatbuffer the onnx package cannot read: its operators (a Loop, say) escape the allowlist
ORT_SUFFIX = ".ort"
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_MAGIC = b"\x80"  # pickle protocol 2 and later start with PROTO
# labs/homework.md: a student folder is named with letters, digits, '-' and '_' (it is the leaderboard name)
FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
MAX_REPORT_BYTES = 1 << 20  # an honest benchmark.json of five models is about 10 kB
MAX_SIDECAR_BYTES = 64 << 10  # a sidecar is under 1 kB


def display_name(name: str) -> str:
    """A folder's name as the leaderboard shows it: the name itself when it follows the rule, else a safe stand-in."""
    if FOLDER_NAME.fullmatch(name):
        return name
    return "".join(ch if re.fullmatch(r"[A-Za-z0-9_-]", ch) else "?" for ch in name[:40]) or "?"


def folder_problem(folder: Path) -> str | None:
    """Why a student folder is not graded at all: a link, or a name outside the rule of labs/homework.md."""
    if folder.is_symlink():
        return "the student folder is a link (to another student's folder?): hand in a folder of your own"
    if not FOLDER_NAME.fullmatch(folder.name):
        return (
            "the folder name breaks the rule of labs/homework.md (letters, digits, '-' and '_', at most 64, "
            "starting with a letter or digit): rename it"
        )
    return None


def content_problem(path: Path) -> str | None:
    """What the file really is when that is not what its suffix says; None when it fits."""
    suffix = path.suffix.lower()
    if suffix not in GRADED_SUFFIXES:
        return f"{path.name}: '{suffix or 'no suffix'}' is not a model file type (TorchScript .pt or ONNX .onnx)"
    if suffix == ORT_SUFFIX:
        return (
            f"{path.name}: ONNX Runtime's own format (.ort) cannot be checked before it runs (its operators are "
            "not readable without running it): refused, hand in the .onnx file"
        )
    if suffix not in vocab.TORCH_SUFFIXES:
        return None  # ONNX is protobuf, no magic bytes: checked against the operator allowlist in the sandbox
    with open(path, "rb") as file:
        head = file.read(512)
    if head.startswith(ZIP_MAGIC):
        return None  # TorchScript or torch.save: the sandboxed loader tells which, without unpickling objects
    if not head:
        return f"{path.name} is empty"
    if head.startswith(PICKLE_MAGIC):
        return f"{path.name} is a raw Python pickle, not a TorchScript archive: refused (pickles can run code)"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return f"{path.name} is not a TorchScript archive (not a zip file)"
    return f"{path.name} is a text file, not a TorchScript archive"


def static_problem(path: Path) -> str | None:
    """The checks made before any loader sees the file (zip bombs, load-time code, banned operators)."""
    if path.suffix.lower() in vocab.TORCH_SUFFIXES:
        why = model_checks.check_zip(path)
        if why and "not a readable zip" in why:
            return f"{path.name} does not load: it is not a complete zip archive (damaged or cut short)"
        return why or model_checks.check_code_text(path)
    if path.stat().st_size > model_checks.MAX_ONNX_BYTES:
        return f"{path.name} is over {model_checks.MAX_ONNX_BYTES / 1e6:.0f} MB: refused"
    return None


def read_report(path: Path) -> dict:
    """The student's benchmark.json, valid for schema quantlab.benchmark/1, or a KitError saying why not."""
    if not path.exists() and not path.is_symlink():
        raise KitError(f"no {path.name}: make it with Codes/benchmark.py --json {path.name}")
    document, why = read_json_file(path, MAX_REPORT_BYTES, "Codes/benchmark.py --json")
    if why:
        raise KitError(why)
    problems = report.validate_report(document)
    if problems:
        more = f" (+{len(problems) - 2} more)" if len(problems) > 2 else ""
        shown = "; ".join(clean_text(problem, 200) for problem in problems[:2])
        raise KitError(f"{path.name} is not a valid {report.SCHEMA} report: {shown}{more}")
    return document


def model_file(folder: Path, name: str) -> tuple[Path | None, str | None]:
    """The model file ``name`` inside ``folder``, or why it cannot be graded."""
    if name != Path(name).name or name.startswith(".") or "\\" in name:
        return (
            None,
            f"{clean_text(name, 60)}: a model file must be named without folders (benchmark.json lists basenames)",
        )
    path = folder / name
    why = link_problem(path, name)
    if why:
        return None, why
    if not path.is_file():
        return None, f"missing model file {name} (listed in {REPORT_FILE})"
    if path.stem in RESERVED_STEMS:
        return (
            None,
            f"{name}: its sidecar would be {path.stem}.json, which the submission uses for something else; rename it",
        )
    return path, None


def checked_sidecar(path: Path, digest: str) -> tuple[dict | None, str | None, bool]:
    """The model's sidecar, checked: (the sidecar, why it cannot be used, is that a flag)."""
    side = models.sidecar_path(path)
    if not side.exists() and not side.is_symlink():
        return None, None, False  # allowed: the model runs on auto's engine, method from its graph
    sidecar, why = read_json_file(side, MAX_SIDECAR_BYTES, "Codes/quantize_model.py")
    if why:
        return None, f"{path.name}: its sidecar {why}; hand in the sidecar quantize_model.py wrote", False
    if not isinstance(sidecar, dict):
        return (
            None,
            f"{path.name}: its sidecar {side.name} is not a JSON object; hand in the one quantize_model.py wrote",
            False,
        )
    if sidecar.get("sha256") not in (None, digest):
        return None, f"{path.name}: sha256 differs from its sidecar {side.name}", True
    engine, method = sidecar.get("engine"), sidecar.get("method")
    if engine is not None and engine not in vocab.ENGINE_CHOICES:
        return None, f"{path.name}: its sidecar names engine '{clean_text(engine, 30)}', not one of the kit's", False
    if method is not None and method not in vocab.RECORDED_METHODS:
        return None, f"{path.name}: its sidecar names method '{clean_text(method, 30)}', not one of the kit's", False
    return sidecar, None, False


def fingerprint(path: Path) -> str | None:
    """sha256 of a plain file of the submission, for copy detection; None for links and missing files."""
    if link_problem(path, path.name) or not path.is_file():
        return None
    return files.sha256_of(path)
