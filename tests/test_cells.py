"""Grid cells (``distributed.cells``: evaluate's victims, the efficacy bench, the demo) on a real local Ray: a cell
whose worker process is killed runs again and completes; a cell that raises fails once, with its own one-line
message. The cells are nested functions so Ray ships them by value (workers cannot import this test module)."""
from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from pathlib import Path

import pytest


def _attempts(folder: Path) -> list[int]:
    """The pids of the cell's attempts, one line each as they started."""
    path = folder / "attempts"
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_a_cell_whose_worker_is_killed_runs_again(ray_cluster, tmp_path):
    from sem_dist.distributed.cells import run_in_order, submit

    def cell(folder: str, value: int) -> int:
        import os
        import time
        from pathlib import Path

        attempts = Path(folder) / "attempts"
        with attempts.open("a") as f:
            f.write(f"{os.getpid()}\n")
        if len(attempts.read_text().split()) == 1:
            time.sleep(300)  # the first attempt is killed here
        return value * 2

    results: dict = {}
    runner = threading.Thread(target=lambda: results.update(
        run_in_order([21], lambda v: submit(cell, str(tmp_path), v), lambda v, finished: True)))
    runner.start()
    deadline = time.monotonic() + 120
    while not _attempts(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    first, = _attempts(tmp_path)
    os.kill(first, signal.SIGKILL)  # what a lost node does to the cell's worker
    runner.join(timeout=240)
    assert not runner.is_alive()
    assert results == {21: 42}
    pids = _attempts(tmp_path)
    assert len(pids) == 2 and pids[1] != first


def test_a_cell_that_raises_fails_once_with_its_message(ray_cluster, tmp_path, capsys):
    from sem_dist.commands import run_command
    from sem_dist.distributed.cells import run_in_order, submit

    def cell(folder: str) -> None:
        import os
        from pathlib import Path

        with (Path(folder) / "attempts").open("a") as f:
            f.write(f"{os.getpid()}\n")
        raise ValueError("--train data/x: no such dataset")

    def grid(args) -> int:
        list(run_in_order([0], lambda i: submit(cell, str(tmp_path)), lambda i, finished: True))
        return 0

    with pytest.raises(ValueError) as failed:
        grid(None)
    assert str(failed.value) == "--train data/x: no such dataset"  # the cell's message, not Ray's traceback
    assert len(_attempts(tmp_path)) == 1  # not retried

    assert run_command("sem-dist evaluate", grid, argparse.Namespace()) == 1
    assert capsys.readouterr().err == "sem-dist evaluate: error: --train data/x: no such dataset\n"
    assert len(_attempts(tmp_path)) == 2  # once more for the second run, still no retry
