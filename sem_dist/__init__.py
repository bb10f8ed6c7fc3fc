"""sem_dist: Stable Error-Minimizing unlearnable examples on Ray."""
__version__ = "0.1.0"
