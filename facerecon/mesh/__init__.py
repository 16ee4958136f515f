"""Meshes: the template meshes with their unpooling hierarchy (``templates``), connectivity helpers
and edge-midpoint unpooling (``topology``), and the deterministic point placement behind them
(``generate``)."""

from facerecon.mesh.templates import (
    SHAPES,
    MeshLevel,
    Template,
    generate_template,
    load_template,
    save_template,
)
from facerecon.mesh.topology import csr_adjacency, edges_from_faces, unpool_mesh

__all__ = [
    "SHAPES",
    "MeshLevel",
    "Template",
    "csr_adjacency",
    "edges_from_faces",
    "generate_template",
    "load_template",
    "save_template",
    "unpool_mesh",
]
