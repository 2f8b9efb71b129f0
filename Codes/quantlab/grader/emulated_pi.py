"""``pi_check.json``: a student without a Pi proves their qnnpack model gives the same answers on ARM, emulated.

``tools/pi_check/pi_check.py --model FILE --json pi_check.json`` runs the student's int8 TorchScript model for
``qnnpack`` on N sample photos on their x86 machine and under ``qemu-aarch64 -cpu cortex-a72`` (a Pi 4's CPU,
or the Pi 5's), and records on how many photos the two top-1 answers agree. With ``pi.optional`` in the rubric
the grader counts it for the ``pi`` part (the model runs on the Pi's engine) when no ``pi_run.json`` does; never
for FPS or the open target, which need a real Pi: the file records no speed, and a speed field in it means it
was edited.

What the grader checks: the file is pi_check's own (schema, ``"emulated": true``, a Pi CPU, the answers
agreeing with the count it states, no speed field), made by this kit's version, for the sha256 of a submitted
model that passed the checks and is int8 for ``qnnpack``, with at least ``MIN_PHOTOS`` photos of which at least
``MIN_AGREEMENT`` agree. Like the Pi runs it rests on trust (a student can write consistent numbers by hand);
the instructor can run pi_check on the leaders' models (labs/instructor_guide.md, section 4).

Example:
    check, why = check_pi_check(Path("ada/pi_check.json"), graded_models)
    print(check.summary if check else why)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import quantlab
from quantlab.grader.pi_runs import EDITED
from quantlab.grader.records import ModelGrade
from quantlab.grader.untrusted import clean_text, read_json_file

PI_CHECK_FILE = "pi_check.json"
SCHEMA = "quantlab.pi_check/1"
MADE_BY = "tools/pi_check/pi_check.py --model"
MAX_BYTES = 64 << 10  # pi_check writes about 2 kB for 16 photos
PI_CPUS = {"cortex-a72": "Raspberry Pi 4", "cortex-a76": "Raspberry Pi 5", "cortex-a53": "Raspberry Pi 3"}
MIN_PHOTOS = 8  # fewer answers prove little
MIN_AGREEMENT = 0.9  # qnnpack's ARM and x86 kernels round alike; an emulated run that agrees less is not the model
SPEED_WORDS = ("fps", "second", "latency", "_ms", "time")  # in a key: a speed pi_check never writes
OWN_OUTPUT = "hand in pi_check's own output"


@dataclass
class PiCheck:
    """An emulated Pi check that counts: the CPU emulated and the answers compared."""

    file: str
    cpu: str
    photos: int
    agree: int
    model: str

    @property
    def summary(self) -> str:
        return (
            f"emulated Pi check ({self.cpu}, {PI_CPUS[self.cpu]}): {self.model} gave x86's top-1 on {self.agree} of "
            f"{self.photos} photos on qnnpack; answers only, no speed"
        )


def _speed_key(document: dict) -> str | None:
    """The first key (at any depth) that names a speed or a time."""
    for key, value in document.items():
        if any(word in str(key).lower() for word in SPEED_WORDS) and key != "created":
            return str(key)
        if isinstance(value, dict):
            found = _speed_key(value)
            if found:
                return found
    return None


def _answers(value: object, photos: int) -> list[int] | None:
    if not isinstance(value, list) or len(value) != photos:
        return None
    if not all(isinstance(item, int) and not isinstance(item, bool) and 0 <= item < 1000 for item in value):
        return None
    return value


def check_pi_check(path: Path, graded: list[ModelGrade]) -> tuple[PiCheck | None, str | None]:
    """(the check when it counts for the ``pi`` part, why it does not). A reason holding ``EDITED`` is a flag."""
    name = path.name
    document, why = read_json_file(path, MAX_BYTES, MADE_BY)
    if why:
        return None, why
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        return None, f"{name} is not the output of {MADE_BY} (schema {SCHEMA}); run it again"
    speed = _speed_key(document)
    if speed:
        return None, (
            f"{name} holds '{clean_text(speed, 30)}': pi_check records no speed (an emulator's is not a Pi's): "
            f"{EDITED}; {OWN_OUTPUT}"
        )
    if document.get("emulated") is not True:
        return None, f'{name} does not say "emulated": true, which pi_check always writes: {EDITED}; {OWN_OUTPUT}'
    cpu, photos, agree = document.get("cpu"), document.get("photos"), document.get("top1_agree")
    if cpu not in PI_CPUS:
        return None, f"{name}: CPU '{clean_text(cpu, 30)}' is not a Raspberry Pi's ({', '.join(PI_CPUS)})"
    if not isinstance(photos, int) or isinstance(photos, bool) or not isinstance(agree, int) or isinstance(agree, bool):
        return None, f"{name}: photos and top1_agree must be whole numbers; {OWN_OUTPUT}"
    x86, pi = _answers(document.get("x86_top1"), photos), _answers(document.get("pi_top1"), photos)
    if x86 is None or pi is None or agree != sum(a == b for a, b in zip(x86, pi)):
        return (
            None,
            f"{name}: top1_agree is not the count of equal answers in x86_top1 and pi_top1: {EDITED}; {OWN_OUTPUT}",
        )
    version = document.get("kit_version")
    if version != quantlab.__version__:
        return None, (
            f"{name} was made with kit {clean_text(version, 20)}, the grader is kit {quantlab.__version__}: "
            "run tools/pi_check/pi_check.py --model of this kit again"
        )
    matching = [model for model in graded if model.sha256 and model.sha256 == document.get("model_sha256")]
    if not matching:
        return None, (
            f"{name} checked a model whose sha256 is not that of a submitted model that passed the checks: run "
            "pi_check on the file you hand in"
        )
    if not any(model.engine == "qnnpack" for model in matching):
        return None, f"{name} checked {matching[0].file}, which is not int8 for qnnpack: check task 5's qnnpack model"
    if photos < MIN_PHOTOS:
        return None, f"{name} compared {photos} photos; the grader asks for {MIN_PHOTOS} or more (--photos)"
    if agree < MIN_AGREEMENT * photos:
        return None, (
            f"{name}: on the emulated Pi the model gave x86's top-1 on {agree} of {photos} photos only "
            f"(at least {MIN_AGREEMENT:.0%} expected): it does not run on ARM as it does on x86"
        )
    model = next(model for model in matching if model.engine == "qnnpack")
    return PiCheck(file=name, cpu=cpu, photos=photos, agree=agree, model=model.file), None
