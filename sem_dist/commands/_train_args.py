"""Flags for Algorithm 1 on a Ray cluster, shared by the commands that train a generator."""
from __future__ import annotations

import argparse


def add_ray_train_arguments(g) -> None:
    g.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="Ray Train workers (one with --workers 1) stream the input from storage through Ray Data "
                        "instead of loading it into this process (and the object store) (default: stream inputs of "
                        "256 MiB of uint8 pixels or more, $SEM_DIST_STREAM_MIN_BYTES, and on Ray Train those of unknown "
                        "size; digits, mnist: and cifar: files load here). A larger input that cannot stream (tap, sc, "
                        "ntga; a batch size --workers does not divide) is refused unless --no-stream asks for the load")
