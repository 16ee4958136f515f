"""Face detection (MTCNN, :mod:`facerecon.mtcnn`) under the crop policy of :mod:`facerecon.crop`.

:class:`FaceDetector` runs MTCNN on a copy downscaled so that its longer side is at most
``max_detect_side`` px and maps the boxes and landmarks back to the original's image px; for the
most confident face only, it searches faces of at least ``min_face_fraction`` of the shorter side
first, with a second chance before the fallback. Each face becomes a :class:`FaceCrop` whose box is
:func:`facerecon.crop.square_box` of the detection. MTCNN's outputs are taken as image px as they
are (its boxes are only accurate to a few pixels, far more than the half-pixel question).

When no face reaches ``min_probability`` :meth:`FaceDetector.crop` returns a *fallback* crop (see
:mod:`facerecon.crop`).
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Any, Sequence

import numpy as np

from facerecon.crop import (
    DEFAULT_FALLBACK_BOX,
    FaceCrop,
    box_iou,
    relative_to_box,
    square_box,
)
from facerecon.errors import InputError


class FaceDetector:
    """MTCNN (:mod:`facerecon.mtcnn`, facenet-pytorch's weights) plus the crop policy.

    Two ways to search:

    * :meth:`detect` (and :meth:`detect_batch`, :meth:`crop` with ``all_faces=True``): every face
      of at least ``smallest_face`` px of the detection copy: the cascade facenet-pytorch runs
      (boxes within IoU 0.9 of it, tested) without the pyramid levels of smaller faces; the levels
      kept are the whole pyramid's, so a face found has the box the whole pyramid gives it (the
      same numbers on the shared group photos; within a pixel for a face near the limit).
    * :meth:`crop` for the most confident face (``facerecon predict``'s default): the pyramid
      starts at faces of ``min_face_fraction`` of the image's shorter side, so the fine levels
      (the costly ones) are skipped; the levels kept are the same as the full search's, so a face
      found there has the same box. A face found there below ``RECHECK_BELOW`` is searched for
      again on copies turned by ``RECHECK_ROTATIONS`` (a face rolled by ~45 degrees comes with
      an upright face's five points). When that finds nothing, a *second chance* before the
      average-crop fallback: the full search, then copies rotated by +-45, +-30 and +-60 degrees
      (strongly rolled faces; each angle both ways, the more confident face kept), then lower
      stage thresholds on the photo and on a copy with its contrast equalised (faces in shadow;
      the more confident face kept), each with the same ``min_probability``.

    Args:
        device: torch device for MTCNN ("cpu", "cuda", "cuda:1", ...).
        min_probability: faces below this MTCNN probability are ignored. 0.9 separates the
            false positives seen on real photos (p 0.86-0.87) from faces (> 0.99).
        max_detect_side: detection runs on a copy whose longer side is at most this many px
            (area-downscaled); boxes and landmarks are mapped back to the original.
        thresholds: MTCNN's three stage thresholds (default ``[0.6, 0.7, 0.7]``).
        min_face_size: MTCNN's ``min_face_size``, px of the detection copy: it fixes the pyramid's
            scales, and is the smallest face of the second chance's full search.
        min_face_fraction: the smallest face of the fast search, as a fraction of the detection
            copy's shorter side (never below ``min_face_size``); 0 makes it the full search.
        second_chance: try the full search, rotated copies and lower thresholds before giving up.
        smallest_face: the smallest face of the every-face search, px of the detection copy (never
            below ``min_face_size``). 32 px, the smallest anchor of FaceBoxes (3DDFA_V2's
            detector) at its working size: the pyramid levels of smaller faces cost 2-3x the rest
            on a group photo (docs/predict.md), and a face that small gives a mesh of little more
            than the prior.
        level_roll: degrees; when the most confident face's eye line is tilted by at least this
            much, its five points are taken from a copy of the photo turned so that the eyes are
            level (MTCNN's points on a rolled face are far less accurate than on an upright one);
            the box stays the one found. 0 turns this off.
    """

    #: The stage thresholds of the second chance.
    LOW_THRESHOLDS = (0.5, 0.6, 0.6)
    #: The turns (degrees) of the rotated copies of the second chance, in the order tried: each
    #: both ways, the more confident face of the two copies kept (a face turned the wrong way
    #: ends up at twice its roll, where MTCNN still finds faces at a lower probability, with five
    #: points far off). Chosen by ``benchmarks/bench_rolled.py --study`` (docs/predict.md).
    ROTATIONS = (45.0, 30.0, 60.0)
    #: A face found only on a turned copy with a probability below this must be found again on
    #: the copy turned so that its own eyes are level (its box centre inside the face's box), or
    #: it is dropped and the search goes on: a true rolled face turned upright is found again,
    #: a face-like pattern that one turn happened to score (a hand, a fence) mostly is not.
    #: Measured with ``benchmarks/bench_rolled.py`` (docs/predict.md).
    CONFIRM_BELOW = 0.95
    #: A face the fast search finds with a probability below this is searched for again on
    #: copies turned by :attr:`RECHECK_ROTATIONS` (either way), and the copy's detection is taken
    #: when it is more confident about the same face: MTCNN finds a face rolled by ~45 degrees
    #: at p 0.90-0.99 with five points of an upright face, far off (``benchmarks/bench_rolled.py``).
    RECHECK_BELOW = 0.995
    RECHECK_ROTATIONS: tuple[float, ...] = (45.0,)
    #: The last chance searches a copy whose lightness is equalised tile by tile (CLAHE with this
    #: clip limit, :func:`equalise_contrast`): MTCNN misses faces in deep shadow or low contrast
    #: that it finds once their lightness is spread. Chosen on the AFLW2000-3D validation split
    #: (``benchmarks/bench_rolled.py --split val``, docs/predict.md).
    EQUALISE_CLIP = 2.0

    def __init__(
        self,
        device: str = "cpu",
        min_probability: float = 0.9,
        max_detect_side: int = 1024,
        thresholds: Sequence[float] | None = None,
        min_face_size: int = 20,
        min_face_fraction: float = 0.1,
        second_chance: bool = True,
        level_roll: float = 15.0,
        smallest_face: float = 32.0,
    ) -> None:
        if not 0.0 <= float(min_probability) <= 1.0:
            raise InputError(f"min_probability must be in [0, 1], got {min_probability}")
        if int(max_detect_side) < 32:
            raise InputError(f"max_detect_side must be >= 32 px, got {max_detect_side}")
        if thresholds is not None and len(thresholds) != 3:
            raise InputError(f"MTCNN thresholds are three numbers, got {list(thresholds)}")
        if not 0.0 <= float(min_face_fraction) < 1.0:
            raise InputError(f"min_face_fraction must be in [0, 1), got {min_face_fraction}")
        if not 0.0 <= float(level_roll) <= 180.0:
            raise InputError(f"level_roll must be in [0, 180] degrees, got {level_roll}")
        if int(min_face_size) < 12:
            raise InputError(f"min_face_size must be >= 12 px (MTCNN's cell), got {min_face_size}")
        if not float(smallest_face) >= 12.0:
            raise InputError(f"the smallest face must be >= 12 px (MTCNN's cell), got {smallest_face}")
        self.device = str(device)
        self.min_probability = float(min_probability)
        self.max_detect_side = int(max_detect_side)
        self.thresholds = [0.6, 0.7, 0.7] if thresholds is None else [float(t) for t in thresholds]
        self.min_face_size = int(min_face_size)
        self.min_face_fraction = float(min_face_fraction)
        self.smallest_face = float(smallest_face)
        self.second_chance = bool(second_chance)
        self.level_roll = float(level_roll)
        self._nets: Any = None
        self._lock = threading.Lock()
        self._warming: threading.Thread | None = None
        #: How the last :meth:`crop` found its face: "fast", "rechecked", "full", "rotated", "low-thresholds",
        #: "equalised", "none" (fallback) or "all" (all faces).
        self.last_search = ""
        #: Whether the last :meth:`crop`'s five points come from a levelled copy (see ``level_roll``).
        self.last_levelled = False

    @property
    def nets(self) -> Any:
        """The three MTCNN networks (:func:`facerecon.mtcnn.load_nets`), loaded on first use."""
        if self._nets is None:
            with self._lock:
                if self._nets is None:
                    self._nets = self._load_nets()
        return self._nets

    def _load_nets(self) -> Any:
        import cv2  # noqa: F401  (detection needs it: imported with the weights, not on the first photo)
        import torch

        from facerecon.mtcnn import load_nets

        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise InputError(f"invalid device {self.device!r} ({exc})") from None
        try:
            return load_nets(device)
        except (RuntimeError, AssertionError) as exc:  # e.g. "cuda" without a usable GPU
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise InputError(f"cannot run face detection on device {self.device!r} ({reason})") from None

    def warm_up(self, image_size: tuple[int, int] | None = None) -> None:
        """Start, on a background thread, the one-off work of the first detection: loading the
        weights, the first call of each kernel (oneDNN's convolution set-up, PyTorch's and
        OpenCV's first calls), and with ``image_size`` ``(width, height)`` P-Net's convolutions
        for that size and the fast search's pyramid plan. Meant for while the caller does
        something else that leaves a core idle (``facerecon predict`` loads the network then); the
        next detection waits for it to finish. Results do not depend on it."""
        if self._warming is not None:
            return
        nets = self.nets
        self._warming = threading.Thread(target=self._warm, args=(nets, image_size), name="facerecon-detector-warm-up", daemon=True)
        self._warming.start()

    def _warm(self, nets: Any, image_size: tuple[int, int] | None) -> None:
        import cv2

        from facerecon.mtcnn_cascade import pyramid_plan

        with contextlib.suppress(Exception):  # a warm-up: never an error of its own
            cv2.integral(np.zeros((4, 4, 3), np.uint8), sdepth=cv2.CV_32S)
            plan = None
            if image_size is not None:
                width, height = self._detect_size(*image_size)
                plan = pyramid_plan(height, width, self._fast_min_face(width, height), base_min_face=self.min_face_size)
            nets.warm(None if plan is None else plan.mosaic)

    def finish_warm_up(self) -> None:
        """Wait for :meth:`warm_up` to finish (at once when none runs)."""
        warming = self._warming
        if warming is not None:
            warming.join()

    # ---- detection ---------------------------------------------------------------------------

    def detect(self, image: np.ndarray) -> list[FaceCrop]:
        """All faces with probability >= ``min_probability``, most confident first (full search).

        Args:
            image: ``(H, W, 3)`` uint8 RGB.

        Returns:
            One :class:`FaceCrop` per face (``fallback=False``), coordinates in image px of
            ``image``; empty when there is none.
        """
        _check_image(image)
        self.finish_warm_up()
        small, sx, sy = self._downscale(image)
        return self._to_crops(self._search(small, max(self.smallest_face, self.min_face_size), self.thresholds), sx, sy)

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[FaceCrop]]:
        """:meth:`detect` for several images, in order."""
        for image in images:
            _check_image(image)
        return [self.detect(image) for image in images]

    def detect_best(self, image: np.ndarray) -> list[FaceCrop]:
        """The faces for :meth:`crop`'s most-confident-face policy: the fast search, then the
        second chance (see the class docstring). Most confident first; empty when none."""
        _check_image(image)
        self.finish_warm_up()
        small, sx, sy = self._downscale(image)
        min_face = self._fast_min_face(small.shape[1], small.shape[0])
        self.last_levelled = False
        faces = self._first_chances(small, min_face, sx, sy)
        if faces:
            faces[0] = self._levelled(small, faces[0], min_face, sx, sy)
        return faces

    def _first_chances(self, small: np.ndarray, min_face: float, sx: float, sy: float) -> list[FaceCrop]:
        """The fast search, then (with ``second_chance``) the full search and the last chances."""
        faces = self._to_crops(self._search(small, min_face, self.thresholds), sx, sy)
        if faces:
            self.last_search = "fast"
            return [self._rechecked(small, faces[0], min_face, sx, sy), *faces[1:]]
        if not self.second_chance:
            self.last_search = "none"
            return []
        if min_face > self.min_face_size:
            faces = self._to_crops(self._search(small, self.min_face_size, self.thresholds), sx, sy)
            if faces:
                self.last_search = "full"
                return faces
        return self._last_chances(small, min_face, sx, sy)

    def _rechecked(self, small: np.ndarray, face: FaceCrop, min_face: float, sx: float, sy: float) -> FaceCrop:
        """``face``, or with ``second_chance`` when it is below :attr:`RECHECK_BELOW` (with five
        points), its :meth:`_turned_rival` where there is one (``last_search`` "rechecked")."""
        if not self.second_chance or face.landmarks5 is None or not face.probability < self.RECHECK_BELOW:
            return face
        turned = self._turned_rival(small, face, min_face, sx, sy)
        if turned is None:
            return face
        self.last_search = "rechecked"
        return turned

    def _turned_rival(self, small: np.ndarray, face: FaceCrop, min_face: float, sx: float, sy: float) -> FaceCrop | None:
        """The same face found more confidently on a copy turned by one of
        :attr:`RECHECK_ROTATIONS` (either way; its box centre inside ``face``'s box), the most
        confident of them, when its eye line is turned by ``level_roll`` degrees or more from
        ``face``'s; else None."""
        best: FaceCrop | None = None
        for angle in self.RECHECK_ROTATIONS:
            for turned in (-angle, angle):
                for found in self._rotated_search(small, turned, min_face, sx, sy):
                    if _centre_inside(found, face) and found.probability > (face.probability if best is None else best.probability):
                        best = found
        if best is None or face.landmarks5 is None or best.landmarks5 is None:
            return best
        # the copy must see the face rolled otherwise: on an upright face MTCNN's points from a
        # turned copy are the less accurate ones
        turn = abs((eye_line_angle(best.landmarks5) - eye_line_angle(face.landmarks5) + 180.0) % 360.0 - 180.0)
        return best if turn >= self.level_roll else None

    def recheck(self, image: np.ndarray, face: FaceCrop) -> FaceCrop:
        """``face`` (found on ``image`` by a search of the photo itself) checked as :meth:`crop`
        checks its fast search's face: below :attr:`RECHECK_BELOW` (and with ``second_chance``),
        the same face found more confidently on a turned copy that sees it rolled otherwise
        replaces it (``last_search`` is then "rechecked"); else ``face`` as it is. ``prepare``
        calls it for the face it picks, so the cache's crops follow ``predict``'s policy."""
        _check_image(image)
        if not self.second_chance or face.landmarks5 is None or not face.probability < self.RECHECK_BELOW:
            return face  # before the downscaled copy is made: most faces are not rechecked
        self.finish_warm_up()
        small, sx, sy = self._downscale(image)
        return self._rechecked(small, face, self._fast_min_face(small.shape[1], small.shape[0]), sx, sy)

    def level(self, image: np.ndarray, face: FaceCrop) -> FaceCrop:
        """``face`` (found on ``image``) with the five points of a copy turned so that its eyes
        are level, when they are tilted by ``level_roll`` degrees or more (what :meth:`crop` does
        to the face it returns; ``prepare`` calls it for the face it picks); the box stays."""
        _check_image(image)
        self.finish_warm_up()
        small, sx, sy = self._downscale(image)
        self.last_levelled = False
        return self._levelled(small, face, self._fast_min_face(small.shape[1], small.shape[0]), sx, sy)

    def _levelled(self, small: np.ndarray, face: FaceCrop, min_face: float, sx: float, sy: float) -> FaceCrop:
        """``face`` with the five points of a copy turned so that its eyes are level, when its eye
        line is tilted by ``level_roll`` degrees or more and the copy finds a face whose box
        centre lies in ``face``'s box; its box, detection and probability stay (so a face keeps
        the box it was found with). Measured by ``benchmarks/bench_rolled.py``: on rolled
        AFLW2000-3D faces the points' error falls by about half, the mesh's NME by a third."""
        if self.level_roll <= 0 or face.landmarks5 is None:
            return face
        roll = eye_line_angle(face.landmarks5)
        if abs(roll) < self.level_roll:
            return face
        found = self._found_again(small, face, min_face, sx, sy)
        if found is None:
            return face
        self.last_levelled = True
        return FaceCrop(box=face.box, probability=face.probability, landmarks5=found.landmarks5, detection=face.detection, fallback=False)

    def detect_second_chance(self, image: np.ndarray) -> list[FaceCrop]:
        """What :meth:`detect_best` tries after the full search finds nothing: the rotated
        copies, then lower stage thresholds on the photo and on its contrast-equalised copy
        (``last_search`` says which found the faces, "none" when none did). ``prepare`` calls it for an image whose full search found no face, so
        the cache's crops come from the same policy as ``predict``'s."""
        _check_image(image)
        self.finish_warm_up()
        small, sx, sy = self._downscale(image)
        min_face = self._fast_min_face(small.shape[1], small.shape[0])
        return self._last_chances(small, min_face, sx, sy)

    def _last_chances(self, small: np.ndarray, min_face: float, sx: float, sy: float) -> list[FaceCrop]:
        """The rotated copies, then lower thresholds on the photo and its contrast-equalised copy
        (the order ``benchmarks/bench_rolled.py --study`` chose: a rolled face turned upright gets
        MTCNN's accurate five points, where a low-threshold hit on it puts them far off, and the
        copies cost a fifth as much)."""
        for angle in self.ROTATIONS:
            both = [self._rotated_search(small, a, min_face, sx, sy) for a in (-angle, angle)]
            found = [faces for faces in both if faces]
            if found:
                faces = max(found, key=lambda faces: faces[0].probability)
                if faces[0].probability >= self.CONFIRM_BELOW or self._found_again(small, faces[0], min_face, sx, sy) is not None:
                    self.last_search = "rotated"
                    return faces
        # lower thresholds on the photo and on its contrast-equalised copy, the more confident
        # face kept (a face in deep shadow: the photo's search finds a false face at best)
        low = [min(a, b) for a, b in zip(self.thresholds, self.LOW_THRESHOLDS)]
        plain = []  # at the thresholds already searched, the photo has no face
        if low != list(self.thresholds):
            plain = self._to_crops(self._search(small, self.min_face_size, low), sx, sy)
        even = equalise_contrast(small, self.EQUALISE_CLIP)
        evened = self._to_crops(self._search(even, self.min_face_size, low), sx, sy)
        if evened and evened[0].probability < self.CONFIRM_BELOW and self._found_again(even, evened[0], min_face, sx, sy) is None:
            evened = []
        if evened and (not plain or evened[0].probability > plain[0].probability):
            self.last_search = "equalised"
            return evened
        if plain:
            self.last_search = "low-thresholds"
            return plain
        self.last_search = "none"
        return []

    def _found_again(self, small: np.ndarray, face: FaceCrop, min_face: float, sx: float, sy: float) -> FaceCrop | None:
        """The face found on the copy turned so that ``face``'s eyes are level whose box centre
        lies inside ``face``'s box (its five points turned back), or None."""
        if face.landmarks5 is None:
            return None
        for found in self._rotated_search(small, eye_line_angle(face.landmarks5), min_face, sx, sy):
            if _centre_inside(found, face):
                return found
        return None

    def crop(
        self,
        image: np.ndarray,
        all_faces: bool = False,
        fallback_box: Sequence[float] | None = None,
    ) -> list[FaceCrop]:
        """The crop boxes for one photo under the crop policy.

        Args:
            image: ``(H, W, 3)`` uint8 RGB.
            all_faces: keep every face (most confident first; the full search) instead of only
                the most confident (the fast search and its second chance, :meth:`detect_best`).
            fallback_box: relative ``(cx / W, cy / H, side / min(W, H))`` used when no face is
                found (e.g. :func:`mean_relative_box` of a dataset); default
                :data:`DEFAULT_FALLBACK_BOX`, the largest centred square.

        Returns:
            At least one :class:`FaceCrop`; a single ``fallback=True`` one when no face is found.
        """
        if all_faces:
            faces = self.detect(image)
            self.last_search = "all" if faces else "none"
        else:
            faces = self.detect_best(image)
        return self.select(faces, image.shape[1], image.shape[0], all_faces, fallback_box)

    def track(self, image: np.ndarray, previous: FaceCrop) -> FaceCrop | None:
        """The face of the previous video frame, found again without a search.

        MTCNN's last stage (O-Net) alone on the previous frame's detection box: when it still
        scores the region a face (probability >= ``min_probability``) and its regressed box has
        not drifted off the previous one (IoU >= 0.5), that is this frame's face, with its box and
        five landmarks exactly as the full cascade's last stage gives them. None otherwise (the
        caller then runs :meth:`crop`). About 1 ms instead of a pyramid search.
        """
        from facerecon.mtcnn_cascade import refine

        _check_image(image)
        self.finish_warm_up()
        if previous.fallback or previous.detection is None:
            return None
        small, sx, sy = self._downscale(image)
        det = np.asarray(previous.detection, dtype=np.float32).reshape(2, 2) * np.array([sx, sy], np.float32)
        found = refine(small, self.nets, det.reshape(1, 4))
        faces = self._to_crops(found, sx, sy)
        if not faces:
            return None
        face = faces[0]
        if face.detection is None or box_iou(face.detection, previous.detection) < 0.5:
            return None
        return face

    @staticmethod
    def select(
        faces: list[FaceCrop],
        width: int,
        height: int,
        all_faces: bool = False,
        fallback_box: Sequence[float] | None = None,
    ) -> list[FaceCrop]:
        """Apply the crop policy to detections already made (see :meth:`crop`)."""
        if faces:
            return list(faces) if all_faces else [faces[0]]
        rel = DEFAULT_FALLBACK_BOX if fallback_box is None else tuple(fallback_box)
        box = relative_to_box(rel, (width, height))
        return [FaceCrop(box=box, probability=float("nan"), landmarks5=None, detection=None, fallback=True)]

    # ---- internals ---------------------------------------------------------------------------

    def _detect_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` of the detection copy of an image of this size."""
        longer = max(height, width)
        if longer <= self.max_detect_side:
            return width, height
        s = self.max_detect_side / longer
        return max(1, round(width * s)), max(1, round(height * s))

    def _fast_min_face(self, width: int, height: int) -> float:
        """The fast search's smallest face, px of a detection copy of this size."""
        return max(float(self.min_face_size), self.min_face_fraction * min(width, height))

    def _downscale(self, image: np.ndarray) -> tuple[np.ndarray, float, float]:
        """A copy with longer side <= max_detect_side, and the x/y scale factors small/original."""
        import cv2

        h, w = image.shape[:2]
        nw, nh = self._detect_size(w, h)
        if (nw, nh) == (w, h):
            return image, 1.0, 1.0
        small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
        return small, nw / w, nh / h

    def _search(self, small: np.ndarray, min_face: float, thresholds: Sequence[float]) -> Any:
        """MTCNN on the detection copy (:func:`facerecon.mtcnn.detect_faces`)."""
        from facerecon.mtcnn_cascade import detect_faces

        if min(small.shape[:2]) < self.min_face_size:  # MTCNN's pyramid would be empty
            from facerecon.mtcnn_cascade import Detections

            return Detections.empty()
        return detect_faces(small, self.nets, min_face=min_face, thresholds=thresholds, base_min_face=self.min_face_size)

    def _rotated_search(self, small: np.ndarray, angle: float, min_face: float, sx: float, sy: float) -> list[FaceCrop]:
        """Search a copy rotated by ``angle`` degrees (:func:`rotate_image`); boxes and landmarks
        are rotated back (a box keeps its size about its rotated-back centre)."""
        rotated, forward = rotate_image(small, angle)
        found = self._search(rotated, min_face, self.thresholds)
        if len(found) == 0:
            return []
        inverse = invert_affine(forward)
        boxes = found.boxes.astype(np.float64)
        centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
        half = np.stack([(boxes[:, 2] - boxes[:, 0]) / 2, (boxes[:, 3] - boxes[:, 1]) / 2], axis=1)
        back = centres @ inverse[:, :2].T + inverse[:, 2]
        found.boxes = np.concatenate([back - half, back + half], axis=1).astype(np.float32)
        found.points = (found.points.astype(np.float64) @ inverse[:, :2].T + inverse[:, 2]).astype(np.float32)
        return self._to_crops(found, sx, sy)

    def _to_crops(self, found: Any, sx: float, sy: float) -> list[FaceCrop]:
        """Filter by probability, most confident first, map back to the original's image px."""
        if len(found) == 0:
            return []
        boxes = np.asarray(found.boxes, dtype=np.float32).reshape(-1, 4)
        probs = np.asarray(found.probs, dtype=np.float32).reshape(-1)
        points = np.asarray(found.points, dtype=np.float32).reshape(-1, 5, 2)
        scale = np.array([sx, sy], dtype=np.float32)
        order = np.argsort(-probs, kind="stable")
        crops = []
        for i in order:
            p = float(probs[i])
            if not p >= self.min_probability:
                continue
            det = (boxes[i].reshape(2, 2) / scale).reshape(4).astype(np.float32)
            lm = (points[i] / scale).astype(np.float32)
            if not (det[2] > det[0] and det[3] > det[1]):
                continue
            crops.append(FaceCrop(box=square_box(det), probability=p, landmarks5=lm, detection=det, fallback=False))
        return crops


def equalise_contrast(image: np.ndarray, clip: float = 2.0, tiles: int = 8) -> np.ndarray:
    """``image`` (uint8 RGB) with its CIE L* lightness equalised by CLAHE (OpenCV's contrast-limited
    adaptive histogram equalisation on ``tiles`` x ``tiles`` tiles, clip limit ``clip``); hue and
    saturation kept. Same size and geometry, so boxes and points found on it hold for ``image``."""
    import cv2

    lab = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=float(clip), tileGridSize=(int(tiles), int(tiles))).apply(np.ascontiguousarray(lab[..., 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def rotate_image(image: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` turned by ``angle`` degrees about its centre (counter-clockwise on screen, as
    :func:`cv2.getRotationMatrix2D` turns), on a canvas grown so that nothing is cut (black
    outside the photo), bilinear.

    Args:
        image: ``(H, W, C)`` array.
        angle: degrees, positive counter-clockwise on screen.

    Returns:
        ``(rotated, forward)``: the turned copy and the ``(2, 3)`` float64 affine map from image
        px of ``image`` to image px of the copy (continuous px, pixel centres at +0.5).
    """
    import cv2

    h, w = image.shape[:2]
    # cv2's matrices act on pixel indices (continuous px - 0.5): the centre (w/2, h/2) is index (w/2 - 0.5, h/2 - 0.5)
    rot = cv2.getRotationMatrix2D((w / 2.0 - 0.5, h / 2.0 - 0.5), float(angle), 1.0)
    c, s = abs(rot[0, 0]), abs(rot[0, 1])
    nw, nh = int(math.ceil(h * s + w * c)), int(math.ceil(h * c + w * s))
    rot[0, 2] += nw / 2.0 - w / 2.0
    rot[1, 2] += nh / 2.0 - h / 2.0
    shift = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    unshift = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    forward = (shift @ np.vstack([rot, [0.0, 0.0, 1.0]]) @ unshift)[:2]
    rotated = cv2.warpAffine(image, rot, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return rotated, forward


def _centre_inside(found: FaceCrop, face: FaceCrop) -> bool:
    """Whether ``found``'s box centre lies inside ``face``'s box (the same face, seen again)."""
    x0, y0, side = face.box
    cx, cy = found.box[0] + found.box[2] / 2, found.box[1] + found.box[2] / 2
    return bool(x0 < cx < x0 + side and y0 < cy < y0 + side)


def eye_line_angle(landmarks5: np.ndarray) -> float:
    """The tilt of the line from MTCNN's first eye to its second, degrees in (-180, 180]:
    turning the photo by it (:func:`rotate_image`) makes the eyes level."""
    (lx, ly), (rx, ry) = np.asarray(landmarks5, dtype=np.float64)[:2]
    return math.degrees(math.atan2(ry - ly, rx - lx))


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a ``(2, 3)`` affine map ``x -> A x + b`` (as ``(2, 3)`` float64)."""
    full = np.vstack([np.asarray(matrix, dtype=np.float64).reshape(2, 3), [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise InputError(f"face detection expects an (H, W, 3) uint8 RGB image, got {shape} {dtype}")
    if image.shape[0] < 12 or image.shape[1] < 12:
        raise InputError(f"image of {image.shape[1]}x{image.shape[0]} px is too small for face detection")
