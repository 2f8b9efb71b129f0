"""quantlab.sources: where the demo's frames come from, and the one line when a source gives none."""

from __future__ import annotations

import pytest


def test_camera_that_returns_no_frame(monkeypatch):
    from quantlab import sources
    from quantlab.errors import KitError

    class SilentCamera:
        def __init__(self, index):
            pass

        def isOpened(self):
            return True

        def set(self, prop, value):
            return True

        def read(self):
            return False, None

        def release(self):
            pass

    monkeypatch.setattr(sources.cv2, "VideoCapture", SilentCamera)
    with pytest.raises(KitError, match="opened but returned no frame"):
        sources.open_source("0")
