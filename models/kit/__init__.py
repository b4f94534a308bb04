"""The offline model kit: random-weight stand-ins of the production checkpoints, built from code."""

from .builders import EMBEDDER_FAMILIES, MARKER, ROLES, STAND_INS, Built, build

__all__ = ["EMBEDDER_FAMILIES", "MARKER", "ROLES", "STAND_INS", "Built", "build"]
