"""The kit's two folders outside the repository, each resolved here once: offline assets and the cache.

Offline assets (tests, CI, offline machines): students with internet never need
these files: the kit downloads torchvision's weights. On machines without
internet, point ``QUANTLAB_ASSETS`` at a folder laid out like ``shared/assets``
(``weights/``, ``imagenet-sample/``).

The cache (``QUANTLAB_CACHE``, default ``~/.cache/quantlab``) keeps what the kit
measured once per machine: auto's engine choice (``engine.json``).
"""

from __future__ import annotations

import os
from pathlib import Path

ASSETS_ENV = "QUANTLAB_ASSETS"
CACHE_ENV = "QUANTLAB_CACHE"
REPO_ROOT = Path(__file__).resolve().parents[2]

INT8_WEIGHTS = "weights/mobilenet_v2_qnnpack_int8.pth"
FLOAT_WEIGHTS = "weights/mobilenet_v2_float_from_int8.pth"
IMAGENET_SAMPLE = "imagenet-sample"


def assets_dir() -> Path:
    """The offline assets folder: $QUANTLAB_ASSETS, else ``../shared/assets`` beside the repo."""
    configured = os.environ.get(ASSETS_ENV)
    if configured:
        return Path(configured).expanduser()
    return REPO_ROOT.parent / "shared" / "assets"


def asset_path(relative: str) -> Path | None:
    """The path of one offline asset, or None when it is not there."""
    path = assets_dir() / relative
    return path if path.exists() else None


def cache_dir() -> Path:
    """Where the kit caches what it measured: $QUANTLAB_CACHE, else ~/.cache/quantlab."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "quantlab").expanduser()
