"""Thin Ray layers over the core: Ray Train for Algorithm 1 (more to come: Ray Data, Ray Tune)."""
