"""A search trial's two phases as Ray Tune sees them.

A trial with ``workers > 1`` drives a Ray Train run of Algorithm 1 and forwards the generator's progress
(rank 0's step, loss, steps/s and checkpoint path) to Tune with ``TuneReportCallback``, then trains its
victim and reports the objective after every victim epoch. Each result says which phase it belongs to
(``phase``). Tune's strict metric check wants the objective's key in every result, so generator results
carry it as None: ASHA ignores them (they have no ``victim_epoch``, its time attribute), Tune's metric
bookkeeping skips non-numbers, and the searcher wrapper below keeps them from the searcher (OptunaSearch
hands every result's objective to ``optuna.Trial.report``, which refuses None).
"""
from __future__ import annotations

from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search import ConcurrencyLimiter

PHASE = "phase"
GENERATOR, VICTIM = "generator", "victim"


class GeneratorProgress(TuneReportCallback):
    """Forwards rank 0's Algorithm-1 reports to the trial, marked as the generator phase."""

    def __init__(self, metric: str):
        super().__init__()
        self._metric = metric

    def after_report(self, run_context, metrics, checkpoint):
        marked = [{**m, PHASE: GENERATOR, self._metric: None} for m in metrics]
        super().after_report(run_context, marked, checkpoint)


class VictimResultsLimiter(ConcurrencyLimiter):
    """A ``ConcurrencyLimiter`` that shows its searcher only victim-phase results (the objective); the
    generator's progress stays in Tune's records and status table."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if result.get(PHASE) != GENERATOR:
            super().on_trial_result(trial_id, result)
