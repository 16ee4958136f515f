"""Meshes: the template meshes with their unpooling hierarchy (``templates``), connectivity helpers
and edge-midpoint unpooling (``topology``), the deterministic point placement behind them
(``generate``), and mesh files (``export``, with the format registry in ``formats``).

The names below are imported on first use, so that importing a light submodule (``formats``,
which the CLI reads for its help) does not load numpy.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from facerecon.mesh.templates import SHAPES, MeshLevel, Template, generate_template, load_template, save_template
    from facerecon.mesh.topology import csr_adjacency, edges_from_faces, unpool_mesh

#: name -> the submodule that defines it
_HOMES = {
    "SHAPES": "templates",
    "MeshLevel": "templates",
    "Template": "templates",
    "generate_template": "templates",
    "load_template": "templates",
    "save_template": "templates",
    "csr_adjacency": "topology",
    "edges_from_faces": "topology",
    "unpool_mesh": "topology",
}

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


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f"facerecon.mesh.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'facerecon.mesh' has no attribute {name!r}")
