"""quantlab.vocab: the kit's shared words, importable without torch (its import graph: test_imports.py)."""

from __future__ import annotations

import subprocess
import sys

from quantlab import vocab


def test_importing_the_vocabulary_loads_no_torch():
    code = "import sys, quantlab.vocab; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_the_default_recipe_is_made_of_the_vocabulary():
    method, engine, granularity, observer = vocab.DEFAULT_RECIPE
    assert method in vocab.METHODS and engine in vocab.ENGINE_CHOICES
    assert granularity in vocab.GRANULARITIES and observer in vocab.OBSERVERS
    assert set(vocab.METHOD_ALIASES.values()) <= set(vocab.METHODS) <= set(vocab.RECORDED_METHODS)


def test_a_user_model_spec_names_a_file_a_function_and_maybe_weights():
    found = vocab.USER_MODEL_SPEC.match("nets/my_net.py:build@my_net.pth")
    assert found and found.group("file", "function", "weights") == ("nets/my_net.py", "build", "my_net.pth")
    assert vocab.USER_MODEL_SPEC.match("my_net.py:build").group("weights") is None
    assert not vocab.USER_MODEL_SPEC.match("my_net.py:2build") and not vocab.USER_MODEL_SPEC.match("my_net.pt")
    assert len(set(vocab.MODEL_SUFFIXES)) == len(vocab.MODEL_SUFFIXES)  # each suffix means one kind of file
