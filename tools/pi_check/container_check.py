#!/usr/bin/env python3
"""Build docker/Dockerfile for arm64 and run the demo in it, emulated, on an x86_64 Linux machine with podman.

No container registry is needed: the base image is the Debian Bookworm arm64 root that ``pi_check.py`` builds
(``podman import`` of a tarball of it), and the wheels are the aarch64 ones ``pi_check.py`` installs from
requirements-pi.txt (both from its cache; they are built first when missing). Then:

1. ``podman build -f docker/Dockerfile --build-arg BASE=<that root>``: the Dockerfile copies files only, so
   the build runs no arm64 code;
2. ``podman run`` of the image with the demo on the sample photos: without binfmt_misc an x86 kernel cannot
   start arm64 programs by itself, so the run mounts ``qemu-aarch64-static`` into the container and starts
   the image's Python through it (``-cpu cortex-a72``, the Pi 4's CPU): the image's entry point
   ``python3.11 Codes/mobile_net.py`` is spelled out after the emulator. As in ``pi_check.py``, the
   container sees the board's /proc/cpuinfo (``pi_check.pi_cpuinfo``), not the host's x86 one.

Each demo run must print an FPS line and a top-10 block (as in ``pi_check.py``); its log is kept.

Examples::

    python tools/pi_check/container_check.py                       # int8 TorchScript demo, 3 frames
    python tools/pi_check/container_check.py --model m/mnv2_int8.tflite --model m/mnv2_int8_fp32.tflite

Exit status: 0 every run passed; 1 a build or run failed; 2 bad command line; 3 this machine cannot run the
check (not root, no podman, no qemu-aarch64-static).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pi_check
from pi_check import HostError, UsageError

IMAGE = "localhost/quantlab-demo:check"
DOCKERFILE = pi_check.REPO / "docker" / "Dockerfile"
# this check's container runs need what a locked-down host allows: runc (crun refuses hybrid cgroups) and
# resource limits no higher than the host's (the default ones cannot be set inside such a sandbox)
RUN_FLAGS = ("--runtime", "runc")
CONTAINER_FLAGS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--network", "none")
TIMEOUT_S = 900
EXCLUDED = ("debootstrap", ".complete", "proc", "sys", "dev")  # not copied from the Pi check's root into the image


def note(message: str) -> None:
    print(f"container_check: {message}", flush=True)


def podman() -> str:
    found = shutil.which("podman")
    if found is None or shutil.which("runc") is None:
        raise HostError("needs podman and runc: apt-get install podman runc")
    return found


def run_logged(command: list[str], log: Path, timeout: float = TIMEOUT_S) -> tuple[int | None, str]:
    """Run a command, keep its output in ``log``; (exit status or None at the timeout, output)."""
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=timeout, check=False)
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        code, output = None, f"{expired.stdout or ''}{expired.stderr or ''}"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"$ {' '.join(command)}\n{output}\n[{time.monotonic() - started:.0f} s]\n", encoding="utf-8")
    return code, output


def base_image(tool: str, root: Path) -> str:
    """The Pi check's Debian root as a local image (imported once per root)."""
    name = f"localhost/quantlab-pi-base:{root.name}-{pi_check.digest(*EXCLUDED)[:6]}"
    if subprocess.run([tool, "image", "exists", name], check=False).returncode == 0:
        note(f"base image {name}: cached")
        return name
    tar = subprocess.Popen(
        # /proc, /sys and /dev are the container runtime's to make: an image's own ones make runc refuse to start
        ["tar", "-C", str(root), "-c", *(f"--exclude=./{name}" for name in EXCLUDED), "."],
        stdout=subprocess.PIPE,
    )
    imported = subprocess.run([tool, "import", "-", name], stdin=tar.stdout, capture_output=True, check=False)
    if tar.wait() != 0 or imported.returncode != 0:
        raise HostError(f"podman import of {root} failed: {imported.stderr.decode(errors='replace').strip()[-300:]}")
    note(f"imported the Debian Bookworm arm64 root as {name}")
    return name


def build(tool: str, base: str, site: Path, logs: Path) -> None:
    """docker/Dockerfile in a build context holding Codes/ and build/pi-site (hard links into the cache)."""
    with tempfile.TemporaryDirectory(prefix="quantlab-context-") as folder:
        context = Path(folder)
        shutil.copytree(pi_check.REPO / "Codes", context / "Codes", ignore=shutil.ignore_patterns("__pycache__"))
        (context / "build").mkdir()
        copied = subprocess.run(["cp", "-al", str(site), str(context / "build" / "pi-site")], check=False)
        if copied.returncode != 0:  # another file system: copy
            shutil.copytree(site, context / "build" / "pi-site", dirs_exist_ok=True)
        shutil.copy(pi_check.REPO / ".dockerignore", context / ".dockerignore")
        command = [tool, "build", "--build-arg", f"BASE={base}", "-f", str(DOCKERFILE), "-t", IMAGE, str(context)]
        started = time.monotonic()
        code, output = run_logged(command, logs / "container-build.log")
    if code != 0:
        tail = " | ".join(output.strip().splitlines()[-3:])
        raise RuntimeError(f"podman build failed (exit {code}): {tail} (log: {logs / 'container-build.log'})")
    size = subprocess.run([tool, "image", "inspect", "--format", "{{.Size}}", IMAGE], capture_output=True, text=True)
    note(
        f"built {IMAGE} from docker/Dockerfile in {time.monotonic() - started:.0f} s ({int(size.stdout) / 1e9:.2f} GB)"
    )


def run_demo(tool: str, cpu: str, flags: list[str], mounts: list[str], logs: Path, name: str) -> str | None:
    """The demo in the image under qemu; None when it printed an FPS line and a top-10, else the failure."""
    qemu = pi_check.find_tool("qemu-aarch64-static")
    cpuinfo = pi_check.pi_cpuinfo(cpu, logs)
    command = [tool, *RUN_FLAGS, "run", "--rm", *CONTAINER_FLAGS, "-v", f"{qemu}:/usr/bin/qemu-aarch64-static:ro"]
    command += ["-v", f"{cpuinfo}:/proc/cpuinfo:ro"]
    command += ["-v", f"{pi_check.assets_dir()}:/assets:ro", "-e", "QUANTLAB_ASSETS=/assets", *mounts]
    command += ["--entrypoint", "/usr/bin/qemu-aarch64-static", IMAGE, "-cpu", cpu]
    command += ["/usr/bin/python3.11", "Codes/mobile_net.py", "--source", "samples", *flags]
    log = logs / f"container-{name}.log"
    started = time.monotonic()
    code, output = run_logged(command, log)
    lines = output.splitlines()
    fps = [line.strip() for line in lines if pi_check.FPS_LINE.search(line)]
    shown = f"mobile_net.py --source samples {' '.join(flags)}"
    if code != 0:
        sigill = code in (132, -4) or any("uncaught target signal 4" in line for line in lines)
        why = "Illegal instruction (SIGILL)" if sigill else f"exit {code}"
        return f"{shown} in the container on {cpu}: {why}: {' | '.join(lines[-2:])} (log: {log})"
    if not fps or not pi_check.has_top10(lines):
        return f"{shown} in the container printed no FPS line or top-10 (log: {log})"
    note(f"[{cpu}] ok   container: {shown}: '{fps[-1]}', top-10 printed ({time.monotonic() - started:.0f} s)")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", default="cortex-a72", choices=sorted(pi_check.PI_CPUS), help="emulated CPU")
    parser.add_argument("--frames", type=int, default=3, help="frames per demo run")
    parser.add_argument("--model", type=Path, action="append", default=[], help="also run the demo on this file")
    try:
        args = parser.parse_args(argv)
        for model in args.model:
            if not model.is_file():
                raise UsageError(f"--model {model} does not exist")
        pi_check.check_host()
        tool = podman()
        cache = pi_check.cache_root()
        with pi_check.cache_lock(cache):
            tools = pi_check.ensure_host_tools()
            root = pi_check.build_rootfs(cache, tools, pi_check.DEFAULT_MIRROR)
            site = pi_check.install_site(cache, pi_check.DEFAULT_REQUIREMENTS)
            logs = cache / "logs"
            base = base_image(tool, root)
            build(tool, base, site, logs)
            runs = [("int8-torchscript", ["--quantize", "--engine", "qnnpack"], [])]
            for index, model in enumerate(args.model):
                mount = ["-v", f"{model.resolve().parent}:/models{index}:ro"]
                runs.append((model.stem, ["--model", f"/models{index}/{model.name}"], mount))
            failures = [
                failure
                for name, flags, mounts in runs
                if (failure := run_demo(tool, args.cpu, [*flags, "--frames", str(args.frames)], mounts, logs, name))
            ]
    except UsageError as error:
        print(f"container_check: error: {error}", file=sys.stderr)
        return pi_check.EXIT_USAGE
    except HostError as error:
        print(f"container_check: cannot run here: {error}", file=sys.stderr)
        return pi_check.EXIT_HOST
    except RuntimeError as error:
        print(f"container_check: FAIL {error}", file=sys.stderr)
        return pi_check.EXIT_FAILED
    for failure in failures:
        note(f"FAIL {failure}")
    if failures:
        return pi_check.EXIT_FAILED
    note(f"PASS: docker/Dockerfile built for arm64, the demo ran {len(runs)} time(s) in it on {args.cpu}")
    return pi_check.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
