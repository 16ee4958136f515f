"""The FaceVision-GAN family (``model.kind = "facevision"``) in the engine: what ``train``, ``eval``
and ``predict`` do for it that the template-deforming families do not (docs/facevision.md).

* Training: the depth and correspondence maps of every cache row, made once into the side file
  beside the cache (:func:`training_maps`); the generator's and the discriminators' optimizers
  and schedules, held as one (:class:`Pair`, so a checkpoint keeps both under its ``optimizer`` and
  ``scheduler`` keys); one pix2pix step on a batch (:func:`train_on_batch`), its gradients averaged
  over the processes of a ``--gpus`` / CPU-process run.
* Inference: the generator's maps of a batch of crops, then per crop the mesh stages of
  ``facerecon.mesh.from_depth`` (raw, cleaned, smoothed, and detailed from the crop's own pixels)
  and the 68 landmarks found in the correspondence map (:func:`reconstruct_batch`); everything in
  crop units, as the other families' meshes, so ``eval`` measures them and ``predict`` maps them
  into the photo the same way. Unlike theirs, every crop's mesh has its own vertices and faces.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from facerecon.errors import FaceReconError, InputError

if TYPE_CHECKING:
    from facerecon.model.facevision import FaceVisionNet

__all__ = ["FaceMeshes", "Pair", "build_optimizers", "cache_face_model", "complete_hidden_side", "gradient_averager", "loss_weights", "reconstruct_batch",
           "refine_options", "train_on_batch", "training_maps"]


class Pair:
    """The generator's and the discriminators' optimizers (or their schedules) as one object:
    ``step``, ``state_dict`` and ``load_state_dict`` act on both; ``get_last_lr`` is the generator's."""

    def __init__(self, generator: Any, discriminators: Any) -> None:
        self.generator, self.discriminators = generator, discriminators

    def step(self) -> None:
        self.generator.step()
        self.discriminators.step()

    def state_dict(self) -> dict:
        return {"generator": self.generator.state_dict(), "discriminators": self.discriminators.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or set(state) != {"generator", "discriminators"}:
            raise InputError("the checkpoint's optimizer state is not a FaceVision-GAN run's (generator and discriminators)")
        self.generator.load_state_dict(state["generator"])
        self.discriminators.load_state_dict(state["discriminators"])

    def get_last_lr(self) -> list[float]:
        return list(self.generator.get_last_lr())


def loss_weights(model_cfg: Any) -> Any:
    """The generator's loss weights of a ``ModelConfig`` (``[model.facevision]``)."""
    from facerecon.model.facevision import LossWeights

    fv = model_cfg.facevision
    return LossWeights(adversarial=fv.adversarial, l1=fv.lambda_1, gradient=fv.lambda_g)


def build_optimizers(net: FaceVisionNet, train_cfg: Any) -> tuple[Pair, Pair, list[nn.Parameter]]:
    """Adam for the generator and for both discriminators (pix2pix's beta1 = 0.5, ``train.lr``,
    ``train.weight_decay``), each with ``train.milestones`` / ``train.gamma``; and every parameter."""
    gan = net.gan
    disc = [p for d in gan.discriminators() for p in d.parameters()]
    kw = {"lr": train_cfg.lr, "betas": (0.5, 0.999), "weight_decay": train_cfg.weight_decay}
    opt_g, opt_d = torch.optim.Adam(gan.generator.parameters(), **kw), torch.optim.Adam(disc, **kw)
    milestones = list(train_cfg.milestones)

    def schedule(opt: torch.optim.Optimizer) -> Any:
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=train_cfg.gamma)

    return Pair(opt_g, opt_d), Pair(schedule(opt_g), schedule(opt_d)), list(net.parameters())


def training_maps(cache: str | os.PathLike[str], size: int, say: Callable[[str], None]) -> tuple[Path, np.ndarray]:
    """The side file of ``cache``'s depth and PNCC maps at ``size`` px (made now unless it exists for
    this cache and size; ``facerecon.data.facevision_maps.make_maps_file``) and the 68 landmark codes."""
    from facerecon.data.facevision_maps import make_maps_file, maps_path, read_maps, stored_maps_size

    target = maps_path(cache)
    if stored_maps_size(target) != size:
        say(f"rendering the {size} px depth and correspondence maps of every row of {cache} into {target} (once)")
    path = make_maps_file(cache, size=size)
    return path, read_maps(path, [])[2]


def cache_face_model(cache: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """The codes of every vertex of ``cache``'s face model ``(V, 3)`` and its triangles ``(F, 3)``:
    what a FaceVision network keeps to complete the surface its depth map does not show."""
    import h5py

    from facerecon.data.facevision_maps import face_model_of

    with h5py.File(cache, "r") as f:
        triangles, codes = face_model_of(f)
    return codes.astype(np.float32), triangles.astype(np.int32)


def gradient_averager(distributed: bool) -> Callable[[list[nn.Parameter]], None] | None:
    """For a run of several processes, the mean of every gradient over them (the GAN's steps call
    their optimizers one after the other, so DDP's single backward does not apply); else None."""
    if not distributed:
        return None

    def average(params: list[nn.Parameter]) -> None:
        world = torch.distributed.get_world_size()
        for p in params:
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(world)

    return average


def train_on_batch(net: FaceVisionNet, batch: dict, optimizers: Pair, weights: Any, average: Callable | None) -> tuple[float, dict[str, float]]:
    """One pix2pix step on a ``MapsDataset`` batch (on the device): the discriminators, then the
    generator (``facerecon.model.facevision.train_step``). Returns the generator's weighted loss and every term."""
    from facerecon.model.facevision import network_input, train_step

    images = network_input(batch["image"], net.input_size)
    opt_d = optimizers.discriminators if weights.adversarial != 0 else None
    terms = train_step(net.gan, images, batch["depth"], batch["pncc"], optimizers.generator, opt_d, weights, average)
    return terms.pop("total"), terms


def refine_options(fv: Any) -> Any:
    """``facerecon.mesh.from_depth.RefineOptions`` of a ``[model.facevision]`` table (None: the defaults)."""
    from facerecon.mesh.from_depth import RefineOptions

    if fv is None:
        return RefineOptions()
    return RefineOptions(edge_factor=fv.edge_factor, area_factor=fv.area_factor, smooth_iterations=fv.smooth_iterations,
                         smooth_lambda=fv.smooth_lambda, detail_gain=fv.detail_gain, detail_sigma_px=fv.detail_sigma_px)


@dataclass
class FaceMeshes:
    """One crop's reconstruction, crop units (docs/conventions.md).

    Attributes:
        vertices: ``(V, 3)`` the final mesh: the detailed mesh (smoothed without detail filling),
            completed by the posed face model's part the depth map does not show where the
            network holds a face model and ``complete_hidden`` is on.
        faces: ``(F, 3)`` int64 its triangles.
        stages: ``raw``, ``cleaned``, ``smoothed`` and, when completed, ``detailed`` vertices;
            stage_faces: their triangles.
        landmarks: ``(68, 3)`` from the correspondence map and the depth map.
        depth, pncc: the network's maps ``(N, N)`` and ``(N, N, 3)``.
    """

    vertices: np.ndarray
    faces: np.ndarray
    stages: list[np.ndarray]
    stage_faces: list[np.ndarray]
    landmarks: np.ndarray
    depth: np.ndarray
    pncc: np.ndarray


@torch.inference_mode()
def reconstruct_batch(net: FaceVisionNet, crops: Tensor, options: Any = None) -> list[FaceMeshes]:
    """The meshes and landmarks of a batch of crops.

    Args:
        net: a ``FaceVisionNet`` (left in eval mode).
        crops: ``(B, 3, S, S)`` float in [0, 1] (the data pipeline's and predict's crops).
        options: ``RefineOptions``; None: the network's own (:func:`refine_options` of its ``settings``).

    Raises:
        FaceReconError: the network drew no face (or too little to triangulate) in a crop.
    """
    net.eval()
    settings = getattr(net, "settings", None)
    if options is None:
        options = refine_options(settings)
    method = getattr(settings, "landmarks", "fit")
    face_model = None
    if getattr(settings, "complete_hidden", True) and net.face_codes is not None and net.face_triangles is not None:
        face_model = _FaceModel(net.face_codes.detach().cpu().numpy().astype(np.float64),
                                net.face_triangles.detach().cpu().numpy().astype(np.int64), float(getattr(settings, "hidden_margin", 0.05)))
    depth, pncc = net(crops)
    codes = net.landmark_codes.detach().cpu().numpy().astype(np.float64)
    pixels = (crops.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    d, p = depth[:, 0].float().cpu().numpy(), pncc.float().permute(0, 2, 3, 1).cpu().numpy()
    return [_crop_meshes(d[b], p[b], pixels[b], codes, options, method, face_model) for b in range(d.shape[0])]


@dataclass(frozen=True)
class _FaceModel:
    """What completes a depth map's mesh: the face model's vertex codes and triangles, and the
    depth margin behind the map's surface beyond which a vertex counts as hidden."""

    codes: np.ndarray
    triangles: np.ndarray
    margin: float


def _crop_meshes(depth: np.ndarray, pncc: np.ndarray, crop: np.ndarray, codes: np.ndarray, options: Any, method: str = "fit",
                 face_model: _FaceModel | None = None) -> FaceMeshes:
    """One crop's maps -> its mesh stages (synthesised in the crop's own px frame, with detail from
    its pixels, then in crop units), completed by the face model where given, and its landmarks."""
    from facerecon.data.facevision_maps import landmarks_from_maps
    from facerecon.frames import image_to_crop
    from facerecon.mesh.from_depth import synthesize_mesh

    box = (0.0, 0.0, float(crop.shape[0]))  # the crop is the photo: image px = crop px
    try:
        stages = synthesize_mesh(depth, box, crop, options)
        landmarks = landmarks_from_maps(depth, pncc, codes, method=method)
    except InputError as exc:
        raise FaceReconError(f"the FaceVision network drew no usable face in the crop ({exc})") from None
    final = stages.detailed if stages.detailed is not None else stages.smoothed
    steps = [stages.raw, stages.cleaned, stages.smoothed]

    def units(v: np.ndarray) -> np.ndarray:
        return np.asarray(image_to_crop(v, box), dtype=np.float64)

    vertices, faces = units(final.vertices), final.faces
    stage_vertices, stage_faces = [units(m.vertices) for m in steps], [m.faces for m in steps]
    if face_model is not None:
        stage_vertices.append(vertices)
        stage_faces.append(faces)
        vertices, faces = complete_hidden_side(vertices, faces, depth, pncc, face_model.codes, face_model.triangles, face_model.margin)
    return FaceMeshes(vertices, faces, stage_vertices, stage_faces, landmarks, depth, pncc)


def _facing(vertices: np.ndarray, faces: np.ndarray) -> float:
    """The signed area of a mesh's triangles projected on the image plane: its sign says which
    winding faces the camera (a face mesh, seen from the front, is mostly of one)."""
    a, b, c = (np.asarray(vertices)[np.asarray(faces)[:, k], :2] for k in range(3))
    return float(np.sum((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])))


def complete_hidden_side(vertices: np.ndarray, faces: np.ndarray, depth: np.ndarray, pncc: np.ndarray, face_codes: np.ndarray,
                         face_triangles: np.ndarray, margin: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """A depth map's mesh (crop units) together with the part of the face model, posed on the maps
    (``facerecon.data.facevision_maps.pose_face_model``), that the map does not show (``hidden_triangles``).

    Returns:
        ``(V', 3)`` float64 vertices: the mesh's, then the used face-model vertices; ``(F', 3)``
        int64 faces: the mesh's, then the hidden triangles renumbered and wound as the mesh's
        (the posed model's whole surface and the mesh face the camera with the same winding).
    """
    from facerecon.data.facevision_maps import hidden_triangles, pose_face_model

    posed = pose_face_model(depth, pncc, face_codes)
    hidden = hidden_triangles(posed, depth, face_triangles, margin)
    if not len(hidden):
        return vertices, faces
    if _facing(posed, face_triangles) * _facing(vertices, faces) < 0:  # the same winding as the map's mesh
        hidden = hidden[:, ::-1]
    used, renumbered = np.unique(hidden, return_inverse=True)
    extra_faces = renumbered.reshape(hidden.shape).astype(np.int64) + len(vertices)
    return np.concatenate([vertices, posed[used]]), np.concatenate([np.asarray(faces, dtype=np.int64), extra_faces])
