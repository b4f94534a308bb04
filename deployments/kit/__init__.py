"""The offline model kit: random-weight stand-ins of the production checkpoints, built from code."""

from .builders import MARKER, ROLES, Built, build

__all__ = ["MARKER", "ROLES", "Built", "build"]
