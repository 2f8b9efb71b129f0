"""Run the notebooks the way Colab runs them, offline: `make test-colab` (docs/release.md).

Run with the Python of a fresh venv that holds only a torch (the Colab image's part) and the notebook
runner: `make test-colab` builds one with torch 2.9.1 + torchvision 0.24.1 (the Pi's pair, the oldest the
kit supports). Then, as on Colab:

- the kit is NOT installed: every notebook's own setup cell installs it (the packages of
  requirements-colab.txt, then the kit with --no-deps from git at ``project.REF``). The git URL is a local
  clone of this tree, tagged ``project.REF`` (``$QUANTLAB_KIT_GIT``); ``google.colab`` is a stand-in module
  imported at start-up, so the setup cell takes its Colab branch;
- no offline assets (``$QUANTLAB_ASSETS`` is an empty folder): the weights come through torchvision's
  download code (``WeightsEnum.get_state_dict``, torch.hub's cache, its hash check), with the network
  replaced by local files: the offline weights under names that say they are stand-ins, whose hash prefix is
  their own (``mobilenet_v2_float_from_int8-<sha256[:8]>.pth``); any other download is refused;
- the photos come through the Imagenette code path (``data.imagenette``: torchvision's ``Imagenette`` finds
  ``data/imagenette2-320`` already there) from an Imagenette-shaped folder built from the offline sample's
  photos of the 10 Imagenette classes (each with flipped and cropped variants: 25 photos a class, labels true).

What stays untested: the real downloads (download.pytorch.org, the 330 MB Imagenette archive from S3,
PyPI's packages come from the registry this machine reaches), Colab's GPU and its Python/pip versions.

Every solution notebook runs top to bottom in smoke mode; every student edition runs up to its first
exercise, which must stop with "your code here". The homework recipe (labs/homework_on_colab.md) runs its
commands as written, the clone address replaced by the local clone. One line per notebook with its time.

Examples:
    make test-colab
    .venv-colab/bin/python tools/colab_emulation.py --only 01 --only 07   # some notebooks (name prefixes)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Codes"))  # quantlab.project and quantlab.assets only: both import no torch

from quantlab import project  # noqa: E402
from quantlab.assets import FLOAT_WEIGHTS, IMAGENET_SAMPLE, INT8_WEIGHTS, assets_dir  # noqa: E402

CELL_TIMEOUT_S = 900  # the setup cell builds the kit from git and may install packages
IMAGENETTE = {  # Imagenette's 10 classes (WordNet id)
    "n01440764",
    "n02102040",
    "n02979186",
    "n03000684",
    "n03028079",
    "n03394916",
    "n03417042",
    "n03425413",
    "n03445777",
    "n03888257",
}
VARIANTS = 25  # photos a class: CALIBRATION_IMAGES (200) plus the held-out ones must fit in 250
WEIGHT_URLS = {  # torchvision's addresses -> the offline asset standing in for each
    "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth": FLOAT_WEIGHTS,
    "https://download.pytorch.org/models/quantized/mobilenet_v2_qnnpack_37f702c5.pth": INT8_WEIGHTS,
}
HOMEWORK = REPO / "labs" / "homework_on_colab.md"

# Imported by every Python process of the emulation (PYTHONPATH): Colab's marker module, and torchvision's
# downloads turned into local files. {standins} is filled in: {torchvision URL: file:// URL of the stand-in}.
SITECUSTOMIZE = '''
"""Colab emulation (tools/colab_emulation.py): not part of the kit."""
import importlib.abc
import importlib.util
import sys

import google.colab  # noqa: F401  (Colab imports it at start-up; the setup cells look for it)

STANDINS = {standins!r}


def _patch(module):
    download = module.load_state_dict_from_url

    def load_state_dict_from_url(url, *args, **kwargs):
        if url not in STANDINS:
            raise ConnectionError(f"no network in the Colab emulation: {{url}}")
        return download(STANDINS[url], *args, **kwargs)

    module.load_state_dict_from_url = load_state_dict_from_url


class _AfterImport(importlib.abc.MetaPathFinder):
    """Patch torchvision.models._api's download function once the module has run."""

    def find_spec(self, name, path, target=None):
        if name != "torchvision.models._api":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _AfterImport())
'''


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def local_clone(work: Path) -> Path:
    """This tree as it is now (tracked and new files, not ignored ones), committed in a new repository tagged
    ``project.REF``: what the setup cell's git URL points at."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    clone = work / "kit"
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    identity = ["-c", "user.name=colab emulation", "-c", "user.email=emulation@quantlab.invalid"]
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        [*identity, "commit", "-q", "-m", "emulated release"],
        ["tag", project.REF],
    ):
        subprocess.run(["git", *args], cwd=clone, check=True, capture_output=True)
    return clone


def stand_ins(work: Path) -> dict[str, str]:
    """The offline weights as files named ``<asset>-<own sha256[:8]>.pth``; {torchvision URL: file:// URL}."""
    folder = work / "standin-weights"
    folder.mkdir()
    urls = {}
    for url, relative in WEIGHT_URLS.items():
        source = assets_dir() / relative
        if not source.is_file():
            fail(
                f"the emulation builds its stand-ins from the offline assets: {source} is missing (set QUANTLAB_ASSETS)"
            )
        digest = hashlib.sha256(source.read_bytes()).hexdigest()[:8]
        target = folder / f"{source.stem}-{digest}.pth"  # torch.hub checks this prefix against the file's hash
        shutil.copy2(source, target)
        urls[url] = target.as_uri()
    return urls


def imagenette_folder(work: Path) -> Path:
    """``data/imagenette2-320/val/<wnid>/`` with VARIANTS photos a class made from the offline sample."""
    from PIL import Image, ImageOps  # torchvision's own dependency: the venv has it before any setup cell ran

    sample = assets_dir() / IMAGENET_SAMPLE
    photos = {p.name[:9]: p for p in sample.glob("*.JPEG") if p.name[:9] in IMAGENETTE}
    if len(photos) != len(IMAGENETTE):
        fail(f"{sample} lacks photos of the Imagenette classes ({sorted(IMAGENETTE - set(photos))})")
    root = work / "data"
    for wnid, path in sorted(photos.items()):
        folder = root / "imagenette2-320" / "val" / wnid
        folder.mkdir(parents=True)
        image = Image.open(path).convert("RGB")
        width, height = image.size
        for k in range(VARIANTS):
            scale = 1.0 - 0.02 * (k // 2)  # nested crops, every other one mirrored: distinct, same class
            w, h = max(32, int(width * scale)), max(32, int(height * scale))
            left, top = (width - w) * ((k // 3) % 3) // 2, (height - h) * (k % 3) // 2
            crop = image.crop((left, top, left + w, top + h))
            (ImageOps.mirror(crop) if k % 2 else crop).save(folder / f"{wnid}_{k:02d}.JPEG", quality=90)
    return root


def kernel_environment(work: Path, clone: Path, standins: dict[str, str]) -> dict[str, str]:
    site = work / "colab-site"
    (site / "google" / "colab").mkdir(parents=True)  # no google/__init__.py: protobuf's google.* stays importable
    (site / "google" / "colab" / "__init__.py").write_text('"""Stand-in for Colab\'s module (emulation)."""\n')
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(standins=standins))
    (work / "no-assets").mkdir()
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("QUANTLAB_", "PYTHON", "CI"))}
    environment.update(
        {
            "PYTHONPATH": str(site),
            "QUANTLAB_ASSETS": str(work / "no-assets"),
            "QUANTLAB_SMOKE": "1",
            project.KIT_GIT_ENV: clone.as_uri(),
            "TORCH_HOME": str(work / "torch-home"),
            "MPLBACKEND": "Agg",
            "OMP_WAIT_POLICY": "PASSIVE",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    return environment


def run_notebook(path: Path, work: Path, data: Path, student: bool) -> tuple[bool, str]:
    """(passed, what happened): the solution to its end, the student edition up to its first exercise."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    folder = work / "content" / ("student-" if student else "") / path.stem
    folder.mkdir(parents=True)
    (folder / "data").symlink_to(data, target_is_directory=True)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    )
    code_cells = [index for index, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    with client.setup_kernel():
        for count, index in enumerate(code_cells, 1):
            try:
                client.execute_cell(nb.cells[index], index)
            except CellExecutionError as error:
                if student and error.ename == "NotImplementedError" and "your code here" in error.evalue:
                    return True, f"ran {count - 1} cells, stopped at its first exercise (cell {index})"
                return (
                    False,
                    f"cell {index}: {error.ename}: {str(error.evalue).splitlines()[0][:160] if error.evalue else ''}",
                )
    if student:
        return False, "ran to its end without reaching an unwritten exercise"
    return True, f"{len(code_cells)} cells"


def homework(clone: Path, work: Path, environment: dict[str, str], data: Path) -> tuple[bool, str]:
    """The recipe's %%bash cell, as written, the clone address replaced by the local clone."""
    text = HOMEWORK.read_text(encoding="utf-8")
    match = re.search(r"```bash\n%%bash\n(.*?)```", text, re.DOTALL)
    if match is None:
        return False, f"{HOMEWORK.name} has no ```bash block starting with %%bash"
    script = match.group(1).replace(project.clone_url(), clone.as_uri())
    folder = work / "content" / "homework"
    folder.mkdir(parents=True)
    (folder / "data").symlink_to(data, target_is_directory=True)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode != 0:
        return False, f"exit {result.returncode}: {(result.stderr or result.stdout).strip().splitlines()[-1][:200]}"
    return True, "its commands ran"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=[], help="notebooks whose names start with this")
    parser.add_argument("--no-homework", action="store_true", help="skip the homework recipe")
    args = parser.parse_args(argv)
    try:
        import nbclient  # noqa: F401
        import torch
    except ImportError as error:
        fail(f"run this with the emulation venv's Python (make test-colab builds it): {error}")
    # a fresh runtime: what an earlier run's setup cells installed goes (the rest of requirements-colab.txt
    # may stay: Colab's image has most of it too)
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", "quantlab", "torchao"], capture_output=True)
    solutions = sorted((REPO / project.NOTEBOOKS_DIR).glob("*.ipynb"))
    chosen = [p for p in solutions if not args.only or any(p.name.startswith(prefix) for prefix in args.only)]
    if not chosen:
        fail(f"no notebook starts with {args.only}")
    import torchvision

    print(
        f"Colab emulation: torch {torch.__version__}, torchvision {torchvision.__version__}, Python {sys.version.split()[0]}"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="colab-emulation-") as scratch:
        work = Path(scratch)
        clone, standins = local_clone(work), stand_ins(work)
        data = imagenette_folder(work)
        environment = kernel_environment(work, clone, standins)
        os.environ.clear()
        os.environ.update(environment)  # the kernels nbclient starts inherit it
        runs = [(p, False) for p in chosen] + [(REPO / project.STUDENT_DIR / p.name, True) for p in chosen]
        for path, student in runs:
            start = time.monotonic()
            passed, what = run_notebook(path, work, data, student)
            edition = "student " if student else ""
            results.append(passed)
            print(
                f"{'PASS' if passed else 'FAIL'} {edition}{path.name}: {what} ({time.monotonic() - start:.0f} s)",
                flush=True,
            )
        if not args.no_homework:
            start = time.monotonic()
            passed, what = homework(clone, work, environment, data)
            results.append(passed)
            print(
                f"{'PASS' if passed else 'FAIL'} homework recipe: {what} ({time.monotonic() - start:.0f} s)", flush=True
            )
    print(f"{sum(results)} of {len(results)} passed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
