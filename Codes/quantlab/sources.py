"""Frame sources for the demo: webcam, Pi Camera Module, video file, image folder, sample photos.

Every source has ``read() -> frame or None`` (None: no more frames), ``bgr``
(True when frames come in OpenCV's BGR order), ``description``, ``skipped``
(unreadable images passed over) and ``close()``; ``with open_source(...) as
frames:`` closes it however the block ends (Ctrl-C included).
"""

from __future__ import annotations

import abc
from pathlib import Path

import cv2
import numpy as np

from quantlab.errors import KitError
from quantlab.vocab import IMAGE_SUFFIXES

SAMPLE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")  # real photos scikit-image ships


class FrameSource(abc.ABC):
    """What every source shares: ``with source:`` closes it (the camera is released) however the block ends."""

    bgr = True
    description = ""
    skipped = 0

    @abc.abstractmethod
    def read(self) -> np.ndarray | None:
        """The next frame, or None when there are no more."""

    def close(self) -> None:  # noqa: B027 - a default on purpose: photos in memory hold nothing to release
        """Release the device or file."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# capture modes nearly every USB webcam offers (width, height), smallest first
WEBCAM_MODES = ((320, 240), (640, 480), (1280, 720))


def webcam_mode(size: int) -> tuple[int, int]:
    """The mode a typical webcam grants when asked for size x size: the smallest that covers it."""
    return next(((w, h) for w, h in WEBCAM_MODES if w >= size and h >= size), WEBCAM_MODES[-1])


class SampleSource(FrameSource):
    """scikit-image's bundled photos (a cat, a coffee cup, an astronaut, a rocket), cycled like a camera.

    It behaves like the webcam source: asked for size x size, it delivers the
    frames a typical USB webcam would grant (``webcam_mode``: 320x240 for the
    demo's 224x224, 640x480 for up to 480). Each photo is scaled and
    centre-cropped to that size once, when the source opens, so the demo's
    pre-processing does per frame what it does on a real camera. Frames are
    handed out as they are (no per-frame copy), like a camera driver's buffers.
    """

    bgr = False

    def __init__(self, size: int = 224) -> None:
        try:
            from skimage import data
        except ImportError:
            raise KitError("the samples source needs scikit-image; pip install scikit-image") from None
        width, height = webcam_mode(size)
        self.frames = [camera_frame(getattr(data, name)(), width, height) for name in SAMPLE_PHOTOS]
        self.description = (
            f"samples: {len(self.frames)} scikit-image photos ({', '.join(SAMPLE_PHOTOS)}) as "
            f"{width}x{height} frames (what a webcam grants when asked for {size}x{size}), cycled"
        )
        self.skipped = 0
        self.count = 0

    def read(self) -> np.ndarray | None:
        frame = self.frames[self.count % len(self.frames)]
        self.count += 1
        return frame


def camera_frame(photo: np.ndarray, width: int, height: int) -> np.ndarray:
    """``photo`` scaled to cover width x height, then centre-cropped to it (RGB uint8, contiguous)."""
    if photo.ndim == 2:
        photo = cv2.cvtColor(photo, cv2.COLOR_GRAY2RGB)
    scale = max(width / photo.shape[1], height / photo.shape[0])
    covering = (max(width, round(photo.shape[1] * scale)), max(height, round(photo.shape[0] * scale)))
    resized = cv2.resize(
        np.ascontiguousarray(photo[:, :, :3]), covering, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    )
    top, left = (covering[1] - height) // 2, (covering[0] - width) // 2
    return np.ascontiguousarray(resized[top : top + height, left : left + width])


class FolderSource(FrameSource):
    """The images of a folder in name order, once; unreadable files are skipped and counted."""

    bgr = True

    def __init__(self, folder: Path) -> None:
        self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise KitError(
                f"folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); pass another --source"
            )
        self.description = f"folder {folder}: {len(self.paths)} images"
        self.skipped = 0
        self.index = 0

    def read(self) -> np.ndarray | None:
        while self.index < len(self.paths):
            path = self.paths[self.index]
            self.index += 1
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is not None:
                return frame
            self.skipped += 1
            print(f"skipped unreadable image {path.name}")
        return None


class CaptureSource(FrameSource):
    """An OpenCV VideoCapture: a webcam index or a video file."""

    bgr = True

    def __init__(self, capture: cv2.VideoCapture, description: str, first: np.ndarray) -> None:
        self.capture = capture
        self.description = description
        self.pending: np.ndarray | None = first
        self.skipped = 0

    def read(self) -> np.ndarray | None:
        if self.pending is not None:
            frame, self.pending = self.pending, None
            return frame
        ok, frame = self.capture.read()
        return frame if ok else None

    def close(self) -> None:
        self.capture.release()


def open_webcam(index: int, size: int, fps: float) -> CaptureSource:
    """Open webcam ``index``, asking for size x size at ``fps``; report what the camera granted."""
    capture = cv2.VideoCapture(index)
    if not capture.isOpened():
        raise KitError(
            f"could not open camera {index}: is a webcam plugged in? (`ls /dev/video*` lists them; "
            "on a Pi Camera Module use --source picamera2; without a camera use --source samples)"
        )
    capture.set(cv2.CAP_PROP_FRAME_WIDTH, size)
    capture.set(cv2.CAP_PROP_FRAME_HEIGHT, size)
    capture.set(cv2.CAP_PROP_FPS, fps)
    ok, frame = capture.read()
    if not ok or frame is None:
        capture.release()
        raise KitError(
            f"camera {index} opened but returned no frame: another program may hold it, or it needs "
            "another index (--source 1); check it with `v4l2-ctl --list-devices`"
        )
    height, width = frame.shape[:2]
    granted_fps = capture.get(cv2.CAP_PROP_FPS)
    note = "" if (width, height) == (size, size) else f"; centre-cropping and resizing to {size}x{size}"
    description = (
        f"camera {index}: asked {size}x{size} at {fps:g} fps, got {width}x{height} at {granted_fps:g} fps{note}"
    )
    return CaptureSource(capture, description, frame)


def open_video(path: Path) -> CaptureSource:
    capture = cv2.VideoCapture(str(path))
    ok, frame = capture.read() if capture.isOpened() else (False, None)
    if not ok or frame is None:
        capture.release()
        raise KitError(
            f"could not read video {path}: not a video OpenCV can decode; convert it with ffmpeg -i {path.name} out.mp4"
        )
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    return CaptureSource(capture, f"video {path}: {frame.shape[1]}x{frame.shape[0]}, {frames} frames", frame)


class PiCameraSource(FrameSource):
    """The Raspberry Pi Camera Module through picamera2 (libcamera), Bookworm's camera stack."""

    bgr = False  # picamera2's "RGB888" is BGR in memory; we ask for XBGR8888, which is RGB order

    def __init__(self, size: int, fps: float) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise KitError(
                "picamera2 is not installed in this Python: on Raspberry Pi OS run `sudo apt install -y "
                "python3-picamera2` and create the venv with `python3 -m venv --system-site-packages`"
            ) from None
        try:
            self.camera = Picamera2()
            config = self.camera.create_video_configuration(
                main={"size": (size, size), "format": "XBGR8888"}, controls={"FrameRate": fps}
            )
            self.camera.configure(config)
            self.camera.start()
        except Exception as error:
            raise KitError(
                f"could not start the Pi Camera Module ({type(error).__name__}: {error}); check the ribbon "
                "cable and `rpicam-hello --list-cameras`"
            ) from None
        granted = self.camera.camera_configuration()["main"]["size"]
        self.description = f"picamera2: asked {size}x{size} at {fps:g} fps, got {granted[0]}x{granted[1]}"
        self.skipped = 0

    def read(self) -> np.ndarray | None:
        return self.camera.capture_array("main")

    def close(self) -> None:
        self.camera.stop()


def open_source(spec: str, size: int = 224, fps: float = 36.0) -> FrameSource:
    """Open ``--source``: a webcam index, ``picamera2``, ``samples``, a video file or a folder."""
    if spec.isdigit():
        return open_webcam(int(spec), size, fps)
    if spec == "samples":
        return SampleSource(size)
    if spec == "picamera2":
        return PiCameraSource(size, fps)
    path = Path(spec).expanduser()
    if path.is_dir():
        return FolderSource(path)
    if path.is_file():
        return open_video(path)
    raise KitError(
        f"source '{spec}' is not a camera index, 'picamera2', 'samples', a video file or a folder; "
        "check the path or use --source samples"
    )
