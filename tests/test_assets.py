"""quantlab.assets: the offline assets folder and the cache, each resolved from its variable or its default."""

from __future__ import annotations

from pathlib import Path

from quantlab import assets


def test_assets_come_from_the_variable_else_beside_the_repo(monkeypatch, tmp_path):
    monkeypatch.setenv(assets.ASSETS_ENV, str(tmp_path))
    (tmp_path / "weights").mkdir()
    (tmp_path / assets.FLOAT_WEIGHTS).write_bytes(b"x")
    assert assets.assets_dir() == tmp_path
    assert assets.asset_path(assets.FLOAT_WEIGHTS) == tmp_path / assets.FLOAT_WEIGHTS
    assert assets.asset_path(assets.INT8_WEIGHTS) is None  # absent: None, the caller says how to fix it
    monkeypatch.setenv(assets.ASSETS_ENV, "~/elsewhere")
    assert assets.assets_dir() == Path.home() / "elsewhere"
    monkeypatch.delenv(assets.ASSETS_ENV)
    assert assets.assets_dir() == assets.REPO_ROOT.parent / "shared" / "assets"


def test_the_cache_comes_from_the_variable_else_the_home_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    assert assets.cache_dir() == tmp_path / "cache"
    monkeypatch.setenv(assets.CACHE_ENV, "")  # set but empty: the default, not the current folder
    assert assets.cache_dir() == Path.home() / ".cache" / "quantlab"
    monkeypatch.delenv(assets.CACHE_ENV)
    assert assets.cache_dir() == Path.home() / ".cache" / "quantlab"
