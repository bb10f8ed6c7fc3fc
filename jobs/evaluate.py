"""Train victim models on a (protected) dataset and report clean test accuracy as a Ray job.

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/evaluate.py ...

Takes the flags of `sem-dist evaluate` (`python jobs/evaluate.py --help`) plus --config FILE; see docs/cluster.md.
"""
import sys

from sem_dist.commands._job import main

if __name__ == "__main__":
    sys.exit(main("evaluate"))
