"""Run untrusted models in a child process the grader can always stop: the grader's isolation.

A student's TorchScript file is code. A student's models are loaded and run by
``python -m quantlab.grader.model_runner`` in a child process of their own
(one per student: Python and torch start once), which answers model by model:

- with a wall-clock limit per model (past it, the process group is killed and a
  fresh child answers the student's remaining models), a CPU-time cap
  (``RLIMIT_CPU``), a memory cap (``RLIMIT_DATA``, plus ``RLIMIT_AS`` as a
  backstop), a cap on the size of files it writes (``RLIMIT_FSIZE``), on open
  files (``RLIMIT_NOFILE``) and no core dumps;
- on a private read-only copy of that student's models and their sidecars, with a
  scratch folder as its working and home folder and a clean environment;
- where bubblewrap (``bwrap``, Debian package ``bubblewrap``) is installed and
  works: in its own namespaces (``--unshare-all``: no network, no other
  processes), seeing only the system's libraries, Python and the kit
  (read-only), the copy (read-only), the photos it measures on (read-only)
  and the scratch folder; it dies with the grader (``--die-with-parent``).

Without bubblewrap the child runs with the grader's user rights: the limits,
the private copy and the grader's static checks (``quantlab.grader.model_checks``,
run before and after loading) are what stand between a model and your files.
``QUANTLAB_SANDBOX=bwrap|rlimits`` (or ``isolation(requested=...)``) forces one.

Everything the child sends back is untrusted: ``run_models`` keeps an answer
only when it parses as a JSON object, and the grader validates every field.

Example:
    kind = sandbox.isolation("auto")
    outcome = sandbox.run_model(Path("ada/mnv2_static.pt"), None, {"task": "check", "threads": 2},
                                sandbox.Limits(wall_seconds=60), kind)
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import quantlab
from quantlab import cpu
from quantlab.assets import CACHE_ENV, cache_dir
from quantlab.errors import KitError

ISOLATION_ENV = "QUANTLAB_SANDBOX"
BWRAP = "bubblewrap"
RLIMITS = "rlimits"
DESCRIPTIONS = {
    BWRAP: "bubblewrap sandbox (no network, read-only copy of one student's models, scratch folder) + resource limits",
    RLIMITS: "child process with resource limits on a read-only copy (bubblewrap not available: the child has "
    "the grader's user rights, the static checks guard files)",
}
RESULT_LIMIT = 1 << 20  # bytes of JSON the grader reads back from a child
SANDBOX_MODEL_DIR = "/submission"
SANDBOX_SCRATCH = "/scratch"
PR_SET_PDEATHSIG = 1
_live: set[subprocess.Popen] = set()  # the children running now (several with --jobs): Ctrl-C kills them all
_live_lock = threading.Lock()
_spawn_lock = threading.Lock()
_stopping = threading.Event()


@dataclass
class Limits:
    """What one child may use."""

    wall_seconds: float
    memory_mb: int = 3072  # RLIMIT_DATA: torch, MobileNetV2 and a batch of 16 photos fit in about 1.5 GB
    file_mb: int = 64  # RLIMIT_FSIZE: anything it writes (its scratch folder, its log)
    open_files: int = 512  # RLIMIT_NOFILE: Python and torch open a few dozen
    threads: int = 1  # CPU time allowed = wall time x threads
    models: int = 1  # how many models one child answers: each gets its own CPU time

    @property
    def cpu_seconds(self) -> int:
        return (int(self.wall_seconds * max(1, self.threads)) + 10) * self.models


@dataclass
class Outcome:
    """How a child ended: its JSON result, or why there is none (timed out, out of memory, crashed)."""

    result: dict | None
    failure: str | None = None


# ---- which isolation ---------------------------------------------------------------


def isolation(requested: str | None = None) -> str:
    """``bubblewrap`` where ``bwrap`` is installed and works here, else ``rlimits``; ``requested`` forces one."""
    wanted = (requested or os.environ.get(ISOLATION_ENV) or "auto").lower()
    if wanted in ("none", "rlimits", "off"):
        return RLIMITS
    if wanted not in ("auto", "bwrap", BWRAP):
        raise KitError(f"{ISOLATION_ENV}={wanted!r}: use auto, bwrap or rlimits")
    if _bwrap_works():
        return BWRAP
    if wanted != "auto":
        raise KitError(
            "bubblewrap was asked for but 'bwrap' is missing or cannot create namespaces here; "
            "install it (apt-get install bubblewrap) or use auto"
        )
    return RLIMITS


@lru_cache(maxsize=1)
def _bwrap_works() -> bool:
    if not shutil.which("bwrap"):
        return False
    try:  # containers may forbid the namespaces bwrap needs: try once
        probe = subprocess.run(
            [
                "bwrap",
                "--unshare-all",
                "--die-with-parent",
                *_system_binds(),
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "true",
            ],
            capture_output=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


# ---- the child --------------------------------------------------------------------


def _system_binds() -> list[str]:
    """Read-only binds of the system's programs and libraries (merged-/usr aware)."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        path = Path(top)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), top]
        elif path.is_dir():
            args += ["--ro-bind", top, top]
    for config in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/localtime"):
        if Path(config).exists():
            args += ["--ro-bind", config, config]
    return args


def _python_binds() -> list[str]:
    """Python, the virtual environment and the kit, read-only, at the paths they have here."""
    roots = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), Path(quantlab.__file__).resolve().parents[1]}
    executable = Path(sys.executable)
    args = []
    for root in sorted(roots, key=lambda p: len(p.parts)):
        if not str(root).startswith(("/usr/", "/bin", "/lib")) and root != Path("/usr"):
            args += ["--ro-bind", str(root), str(root)]
    if executable.parent.resolve() not in roots and not str(executable).startswith("/usr/"):
        args += ["--ro-bind", str(executable.parent), str(executable.parent)]
    return args


def _bwrap_command(copy: Path, scratch: Path, read_only: list[Path]) -> list[str]:
    # The empty /tmp comes first: bubblewrap mounts in order, so a kit, venv or photo folder that
    # lives under /tmp (a clone in /tmp) is bound on top of it instead of being hidden by it.
    command = ["bwrap", "--unshare-all", "--die-with-parent", "--tmpfs", "/tmp", *_system_binds(), *_python_binds()]
    for folder in read_only:  # the photos: at their own path, so the request's paths stay valid
        command += ["--ro-bind", str(folder), str(folder)]
    command += [
        "--ro-bind",
        str(copy),
        SANDBOX_MODEL_DIR,
        "--bind",
        str(scratch),
        SANDBOX_SCRATCH,
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--ro-bind-try",
        "/sys/devices/system/cpu",
        "/sys/devices/system/cpu",
        "--chdir",
        SANDBOX_SCRATCH,
        "--clearenv",
    ]
    # the kit the grader runs (bound read-only above), not the one an editable install's .pth names
    kit = {"PYTHONPATH": str(Path(quantlab.__file__).resolve().parents[1])}
    for key, value in {**_child_env(Path(SANDBOX_SCRATCH), Path("/tmp")), **kit}.items():
        command += ["--setenv", key, value]
    return command + ["--", sys.executable, "-m", "quantlab.grader.model_runner"]


def _child_env(scratch: Path, temporary: Path) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(scratch),
        "TMPDIR": str(temporary),
        "LANG": "C.UTF-8",
        CACHE_ENV: str(scratch / "cache"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "MPLCONFIGDIR": str(scratch / "mpl"),
        **_int8_isa_environment(),
    }


def _int8_isa_environment() -> dict[str, str]:
    """The grader's variables that lower PyTorch's int8 instruction level, passed on to the cleared child: an
    instructor forcing the non-VNNI path (``ONEDNN_MAX_CPU_ISA=AVX2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2``) grades
    every model on it."""
    return {name: os.environ[name] for name in (cpu.ONEDNN_ENV, cpu.FBGEMM_ENV) if name in os.environ}


def _limit_child(limits: Limits):
    """The preexec function: resource limits, and die with the grader (also without bubblewrap)."""
    memory = limits.memory_mb * 2**20
    caps = {
        resource.RLIMIT_DATA: memory,
        resource.RLIMIT_AS: memory + 12 * 2**30,  # shared libraries map ~4 GB of address space, not memory
        resource.RLIMIT_CPU: limits.cpu_seconds,
        resource.RLIMIT_FSIZE: limits.file_mb * 2**20,
        resource.RLIMIT_NOFILE: limits.open_files,
        resource.RLIMIT_CORE: 0,
    }

    try:  # looked up here, before the fork: the child between fork and exec must not load libraries
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        prctl = None

    def apply() -> None:
        for kind, value in caps.items():
            resource.setrlimit(kind, (value, value))
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    return apply


def private_copy(files: list[Path], into: Path) -> Path:
    """A read-only copy of ``files`` (regular files only) in ``into``/model."""
    copy = into / "model"
    copy.mkdir()
    for path in files:
        target = copy / path.name
        with open(path, "rb") as source, open(target, "xb") as destination:
            shutil.copyfileobj(source, destination)
        target.chmod(0o444)
    copy.chmod(0o555)
    return copy


def run_model(
    model: Path, sidecar: dict | None, request: dict, limits: Limits, kind: str, read_only: list[Path] = ()
) -> Outcome:
    """Run ``quantlab.grader.model_runner`` on a private copy of ``model`` (plus ``sidecar``), within ``limits``."""
    return run_models([(model, sidecar)], request, limits, kind, read_only)[0]


def run_models(
    models: list[tuple[Path, dict | None]],
    request: dict,
    limits: Limits,
    kind: str,
    read_only: list[Path] = (),
    budget_seconds: float | None = None,
) -> list[Outcome | None]:
    """Run one ``quantlab.grader.model_runner`` child for all of ``models`` (one student's): Python and torch
    start once, and each model still gets ``limits.wall_seconds`` of its own.

    The child answers model by model. A model that runs out its time, memory or CPU, or crashes the child,
    costs only itself: the child is stopped and a fresh one answers the models after it. Once
    ``budget_seconds`` have passed, the models not yet started are not run (None). ``request`` is what the
    child does with each (see ``quantlab.grader.model_runner``); its ``models`` entry is set here to the
    copies' paths as the child sees them.
    """
    if _stopping.is_set():
        raise KeyboardInterrupt
    base = Path(tempfile.mkdtemp(prefix="quantlab-grade-"))
    try:
        folders = []  # each model in a folder of its own: two models may share a sidecar's name
        for index, (model, sidecar) in enumerate(models):
            (base / "models" / str(index)).mkdir(parents=True)
            copy = private_copy([model], base / "models" / str(index))
            if sidecar is not None:  # the validated sidecar, rewritten: the child reads the engine and method
                copy.chmod(0o755)
                side = copy / (model.stem + ".json")
                side.write_text(json.dumps(sidecar), encoding="utf-8")
                side.chmod(0o444)
                copy.chmod(0o555)
            folders.append(copy)
        scratch = base / "scratch"
        (scratch / "cache").mkdir(parents=True)
        engine_cache = cache_dir() / "engine.json"
        if engine_cache.is_file() and not engine_cache.is_symlink():  # auto's measured engine: no re-probe per model
            shutil.copyfile(engine_cache, scratch / "cache" / "engine.json")
        if kind == BWRAP:
            command = _bwrap_command(base / "models", scratch, [Path(p) for p in read_only])
            seen = [f"{SANDBOX_MODEL_DIR}/{index}/model" for index in range(len(models))]
            env, cwd = None, None
        else:
            command = [sys.executable, "-m", "quantlab.grader.model_runner"]
            seen = [str(folder) for folder in folders]
            env, cwd = (
                {**_child_env(scratch, scratch), "PYTHONPATH": str(Path(quantlab.__file__).resolve().parents[1])},
                scratch,
            )
        paths = [f"{folder}/{model.name}" for folder, (model, _) in zip(seen, models, strict=True)]
        outcomes: list[Outcome | None] = [None] * len(models)
        started, first = time.monotonic(), 0
        while first < len(models):
            if _stopping.is_set():  # Ctrl-C: no fresh child
                raise KeyboardInterrupt
            if budget_seconds is not None and time.monotonic() - started > budget_seconds:
                break
            child = _Child(command, env, cwd, base / "child.log", limits, started, budget_seconds)
            first = child.answer(request, paths, first, outcomes)
        for folder, outcome in zip(seen, outcomes, strict=True):  # the child's paths, as the student named them
            if outcome and outcome.result and isinstance(outcome.result.get("reason"), str):
                outcome.result["reason"] = outcome.result["reason"].replace(f"{folder}/", f"{SANDBOX_MODEL_DIR}/")
        return outcomes
    finally:
        for folder in base.glob("models/*/model"):
            folder.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class _Child:
    """How one child is started, and the time it may take."""

    command: list[str]
    env: dict | None
    cwd: Path | None
    log: Path
    limits: Limits
    started: float  # when the student's first child started: the budget counts from there
    budget_seconds: float | None

    def answer(self, request: dict, paths: list[str], first: int, outcomes: list[Outcome | None]) -> int:
        """One child for ``paths[first:]``: fills ``outcomes`` as it answers; returns where a fresh child starts."""
        limits = self.limits
        # one fork at a time (--jobs): the limits are set by Python code between fork and exec
        with open(self.log, "ab") as errors, _spawn_lock:
            process = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=_limit_child(replace(limits, models=len(paths) - first)),  # each model's CPU time
            )
        with _live_lock:
            _live.add(process)
        try:
            try:
                process.stdin.write(json.dumps({**request, "models": paths[first:]}).encode())
                process.stdin.close()
            except OSError:  # it died at once: its exit status tells why, below
                pass
            buffer = b""
            for index in range(first, len(paths)):
                if index > first and self.budget_seconds is not None:
                    if time.monotonic() - self.started > self.budget_seconds:
                        return len(paths)  # the rest are not run
                line, buffer, why = _next_line(process.stdout, buffer, time.monotonic() + limits.wall_seconds)
                if line is not None:
                    outcomes[index] = _parsed(line)
                    continue
                if why == "timeout":
                    outcomes[index] = Outcome(
                        None,
                        f"did not finish within {limits.wall_seconds:.0f} s (an endless loop, or far too slow): stopped",
                    )
                elif why == "too long":
                    outcomes[index] = Outcome(None, "crashed before reporting (its answer was too long)")
                else:
                    _kill(process)
                    outcomes[index] = _ended(process.returncode, limits)
                return index + 1
            return len(paths)
        finally:  # done, stopped, or Ctrl-C in the grader: the child must not outlive it
            _kill(process)
            with _live_lock:
                _live.discard(process)


def _next_line(stream, buffer: bytes, deadline: float) -> tuple[bytes | None, bytes, str | None]:
    """The child's next answer line: (line, what is left of the buffer, None) or (None, buffer, why not)."""
    fd = stream.fileno()
    while b"\n" not in buffer:
        if len(buffer) > RESULT_LIMIT:
            return None, buffer, "too long"
        left = deadline - time.monotonic()
        if left <= 0:
            return None, buffer, "timeout"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return None, buffer, "timeout"
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return None, buffer, "ended"
        buffer += chunk
    line, _, rest = buffer.partition(b"\n")
    return line, rest, None


def _parsed(line: bytes) -> Outcome:
    try:
        result = json.loads(line[:RESULT_LIMIT].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        result = None
    if not isinstance(result, dict):
        return Outcome(None, "crashed before reporting (its answer was not a JSON object)")
    return Outcome(result)


def _ended(code: int | None, limits: Limits) -> Outcome:
    """Why a child stopped before answering, from its exit status."""
    if code == -signal.SIGXCPU:
        return Outcome(None, f"used more than {limits.cpu_seconds} s of CPU time: stopped")
    if code == -signal.SIGKILL:
        return Outcome(None, f"was killed (out of memory? the cap is {limits.memory_mb} MB)")
    if code == -signal.SIGXFSZ:
        return Outcome(None, f"wrote more than {limits.file_mb} MB: stopped")
    if code is not None and code < 0:
        return Outcome(None, f"crashed (signal {-code})")
    return Outcome(None, f"crashed before reporting (exit code {code})")


def stop_all() -> None:
    """Kill every child running now and start no new one (Ctrl-C while several students are graded at once)."""
    _stopping.set()
    with _live_lock:
        live = list(_live)
    for process in live:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
    for stream in (process.stdin, process.stdout):
        if stream and not stream.closed:
            stream.close()
