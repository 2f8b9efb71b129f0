"""Task 3b, "your recipe": the student's own choice from notebook 3b, and the model it made.

Notebook 3b ends by writing ``my_recipe.yaml``: a ``quantize_model.py --config`` file with the student's
layers kept in float, observer, granularity, calibration count and seed, and an ``evidence`` section holding
their own table (each row's top-1, and its paired 95 % interval against all-int8) and the sensitivity gains
of the layers they kept. ``quantize_model.py --config my_recipe.yaml --calib-data DATA --output
mnv2_recipe.pt`` makes the model. The task's points (``weights.recipe``) are earned only when

- ``my_recipe.yaml`` is in the folder, a plain file within the size limit, safe YAML;
- ``mnv2_recipe.pt`` was graded, and the grader's child read which of its layers run in float: exactly the
  recipe's (by their place in the network, ``float_layers_problem``), the rest int8;
- the recipe's settings equal the model's sidecar;
- it is not the default recipe (no layer in float, per-channel histogram), and its evidence has rows with
  intervals, and a gain for each layer it keeps in float.

Every reason the points are lost is one line on the leaderboard. Nothing here runs student code.
"""

from __future__ import annotations

from pathlib import Path

from quantlab import config, files, vocab
from quantlab.errors import KitError
from quantlab.grader.records import ModelGrade
from quantlab.grader.untrusted import clean_text, finite_number, link_problem

RECIPE_FILE = "my_recipe.yaml"
RECIPE_MODEL = "mnv2_recipe.pt"
MAX_RECIPE_BYTES = 64 * 1024  # the notebook's file is about 2 kB: 53 sensitivity rows fit many times over
MAX_ROWS = 64
# what quantize_model.py does when the recipe chooses nothing (vocab.DEFAULT_RECIPE: the kit's default model)
NO_CHOICE = {"keep_float": (), "granularity": vocab.DEFAULT_RECIPE[2], "observer": vocab.DEFAULT_RECIPE[3]}
DEFAULTS = {"method": vocab.DEFAULT_RECIPE[0], "calibration_images": 100, "seed": 0, **NO_CHOICE}


def sidecar_float_layers(sidecar: dict) -> list[str] | None:
    """The sidecar's ``keep_float``: [] when absent, None when it is not a short list of names."""
    names = sidecar.get("keep_float", [])
    if not isinstance(names, list) or len(names) > 200 or not all(isinstance(name, str) for name in names):
        return None
    return names


def float_layers_problem(name: str, method: str, keep_float: list[str] | None, arch: object, convs: dict) -> str | None:
    """Why the float layers the child found are not the sidecar's ``keep_float`` layers; None if they are.

    The child reports the place of each float convolution or linear among the layers with weights, in the
    graph's order; the architecture (built here, without weights) gives each named layer's place. The same
    places: those layers, and no others, run in float. (A child without places: the weight shapes.)
    """
    from quantlab import quantize  # torch: the grader's parent has it already (bench)

    floating, found = convs.get("float"), convs.get("float_shapes")
    if not keep_float:  # none (or not a list of names): every convolution should be int8
        return (
            f"{name}: its sidecar says {method}, but {floating} of its {convs.get('int8', 0) + floating} convolutions "
            "run in fp32 (a dynamic model?): quantize it with Codes/quantize_model.py"
        )
    try:
        shapes = quantize.arch_layers(str(arch))
        quantize.check_layer_names(keep_float, list(shapes), str(arch))
    except KitError as error:
        return f"{name}: its sidecar's keep_float: {clean_text(str(error), 160)}"
    names = list(shapes)
    positions, total = convs.get("float_positions"), convs.get("weighted_layers")
    if isinstance(positions, list) and total == len(names):  # by place in the network: the layers themselves
        found_names = {names[i] for i in positions if isinstance(i, int) and 0 <= i < len(names)}
        only_sidecar = sorted(set(keep_float) - found_names, key=names.index)
        only_file = sorted(found_names - set(keep_float), key=names.index)
        if not (only_sidecar or only_file) and len(found_names) == len(positions):
            return None
        said = [f"in float in the sidecar, int8 in the file: {', '.join(only_sidecar)}" if only_sidecar else "",
                f"in float in the file only: {', '.join(only_file)}" if only_file else ""]  # fmt: skip
        return f"{name}: its float layers are not its sidecar's keep_float ({clean_text('; '.join(w for w in said if w) or 'layers the architecture does not have', 160)})"
    expected = sorted(([*shapes[layer]] for layer in keep_float if len(shapes[layer]) == 4), key=repr)
    if not isinstance(found, list) or sorted(found, key=repr) != expected:
        return (
            f"{name}: its sidecar keeps {len(expected)} convolution(s) in float ({clean_text(', '.join(keep_float), 80)}), "
            f"the file runs {floating} in float, not those layers"
        )
    return None


def _read(folder: Path) -> tuple[dict | None, str | None]:
    path = folder / RECIPE_FILE
    if not (path.exists() or path.is_symlink()):
        return None, f"no {RECIPE_FILE}: task 3b's points need your recipe (notebook 3b's last cell writes it)"
    why = link_problem(path, RECIPE_FILE)
    if why:
        return None, why
    if not path.is_file() or path.stat().st_size > MAX_RECIPE_BYTES:
        return None, f"{RECIPE_FILE} is not a file of at most {MAX_RECIPE_BYTES // 1024} kB"
    try:
        loaded = files.read_yaml(path, "recipe")
    except KitError as error:
        return None, clean_text(str(error).replace(str(folder) + "/", ""), 160)
    except RecursionError:  # nesting thousands deep: no recipe looks so
        return None, f"{RECIPE_FILE} is nested too deep to be a recipe"
    if not isinstance(loaded, dict):
        return None, f"{RECIPE_FILE} must hold sections (dataset, quantization, evidence)"
    return loaded, None


def recipe_settings(loaded: dict) -> tuple[dict, str | None]:
    """What the recipe sets that its model's sidecar records, quantize_model.py's defaults for the rest."""
    unknown = [key for key in loaded if key not in config.SECTIONS]
    if unknown:
        return {}, f"{RECIPE_FILE}: unknown section '{clean_text(unknown[0], 40)}'"
    quantization, dataset = loaded.get("quantization") or {}, loaded.get("dataset") or {}
    if not isinstance(quantization, dict) or not isinstance(dataset, dict):
        return {}, f"{RECIPE_FILE}: quantization and dataset must be sections of keys"
    settings = dict(DEFAULTS)
    rules = (
        ("method", quantization, "method", config.text),
        ("granularity", quantization, "granularity", config.text),
        ("observer", quantization, "observer", config.text),
        ("engine", quantization, "engine", config.text),
        ("calibration_images", quantization, "calibration_images", config.count),
        ("keep_float", quantization, "keep_float", config.layer_names),
        ("seed", dataset, "seed", config.integer),
    )
    for setting, section, key, convert in rules:
        if key in section:
            try:
                settings[setting] = convert(section[key])
            except (ValueError, TypeError):
                return (
                    {},
                    f"{RECIPE_FILE}: '{key}' is not what quantize_model.py reads ({clean_text(section[key], 40)})",
                )
    settings["method"] = vocab.METHOD_ALIASES.get(settings["method"], settings["method"])
    settings["keep_float"] = tuple(sorted(settings["keep_float"]))
    return settings, None


def evidence_problem(loaded: dict, keep_float: tuple[str, ...]) -> str | None:
    """Why the evidence section does not back the recipe: rows with top-1 and intervals, a gain per float layer."""
    evidence = loaded.get("evidence")
    if not isinstance(evidence, dict):
        return f"{RECIPE_FILE} has no evidence section: your table (notebook 3b) is what the recipe stands on"
    rows = evidence.get("rows")
    if not isinstance(rows, list) or not rows or len(rows) > MAX_ROWS or not all(isinstance(r, dict) for r in rows):
        return f"{RECIPE_FILE}: evidence.rows must list your table's rows (1 to {MAX_ROWS})"
    for row in rows:
        if finite_number(row.get("top1"), 0.0, 100.0) is None:
            return f"{RECIPE_FILE}: every evidence row needs its top1 (a percentage)"
    intervals = [row.get("interval") for row in rows if row.get("interval") is not None]
    if not intervals or not all(
        isinstance(pair, list)
        and len(pair) == 2
        and None not in (finite_number(pair[0], -100.0), finite_number(pair[1], -100.0))
        and pair[0] <= pair[1]
        for pair in intervals
    ):
        return f"{RECIPE_FILE}: the evidence rows need their paired 95 % intervals as [low, high]"
    gains = evidence.get("sensitivity") or {}
    missing = [layer for layer in keep_float if not isinstance(gains, dict) or layer not in gains]
    if missing or any(finite_number(gains[layer], -1000.0) is None for layer in keep_float):
        return f"{RECIPE_FILE}: evidence.sensitivity has no gain for {clean_text(', '.join(missing) or 'a layer', 80)}"
    return None


def check_recipe(folder: Path, graded: list[ModelGrade]) -> str | None:
    """None when task 3b earns its points; else the one-line reason it does not."""
    loaded, why = _read(folder)
    if why:
        return why
    settings, why = recipe_settings(loaded)
    if why:
        return why
    model = next((m for m in graded if m.file == RECIPE_MODEL), None)
    if model is None:
        return f"{RECIPE_MODEL} (the model {RECIPE_FILE} made) is not among the graded models: no recipe points"
    if model.float_layers is None:
        return f"{RECIPE_MODEL}: the grader could not read which of its layers run in float: no recipe points"
    made = {
        "method": model.method,
        "granularity": model.granularity,
        "observer": model.observer,
        "engine": model.engine,
        "calibration_images": model.calibration_images,
        "seed": model.seed,
        "keep_float": tuple(sorted(model.float_layers)),
    }
    if "engine" not in settings:
        made.pop("engine")
    differ = [key for key in made if made[key] != settings[key]]
    if differ and differ[0] == "keep_float":  # name the layers that differ: both lists are long
        said, made_float = set(settings["keep_float"]), set(made["keep_float"])
        parts = [f"only {RECIPE_FILE} keeps {', '.join(sorted(said - made_float))}" if said - made_float else "",
                 f"only the sidecar keeps {', '.join(sorted(made_float - said))}" if made_float - said else ""]  # fmt: skip
        return (
            f"{RECIPE_FILE} and {RECIPE_MODEL}'s sidecar keep other layers in float "
            f"({clean_text('; '.join(p for p in parts if p), 160)}): make the model with quantize_model.py --config {RECIPE_FILE}"
        )
    if differ:
        key = differ[0]
        return (
            f"{RECIPE_FILE} says {key} {clean_text(settings[key], 60)}, {RECIPE_MODEL}'s sidecar "
            f"{clean_text(made[key], 60)}: make the model with quantize_model.py --config {RECIPE_FILE}"
        )
    if all(settings[key] == value for key, value in NO_CHOICE.items()):
        return f"{RECIPE_FILE} is the default recipe (no layer in float, per-channel, histogram): your choice earns the points"
    return evidence_problem(loaded, settings["keep_float"])
