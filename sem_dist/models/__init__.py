"""Model registry: every classifier takes [0,1] images and carries its own normalisation."""
from .registry import ARCHS, build_model, unwrap

__all__ = ["ARCHS", "build_model", "unwrap"]
