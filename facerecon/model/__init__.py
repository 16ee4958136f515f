"""The network: backbones, perceptual pooling, graph convolutions, unpooling, the full model.

Import the pieces from here::

    from facerecon.model import build_network, FaceReconNet, MeshPrediction
"""

from facerecon.model.backbones import BACKBONES, Backbone, build_backbone, load_backbone_weights
from facerecon.model.graph import GraphConv, GResNet, MeshHierarchy, neighbour_sum
from facerecon.model.network import ColourHead, DeformBlock, FaceReconNet, LandmarkHead, MeshPrediction, build_network
from facerecon.model.pooling import PerceptualGraphConv, project, project_orthographic, project_pinhole
from facerecon.model.unpool import T_MIN, Unpool

__all__ = [
    "BACKBONES",
    "Backbone",
    "build_backbone",
    "load_backbone_weights",
    "GraphConv",
    "GResNet",
    "MeshHierarchy",
    "neighbour_sum",
    "ColourHead",
    "DeformBlock",
    "FaceReconNet",
    "LandmarkHead",
    "MeshPrediction",
    "build_network",
    "PerceptualGraphConv",
    "project",
    "project_orthographic",
    "project_pinhole",
    "T_MIN",
    "Unpool",
]
