"""Search the method's hyperparameters with Ray Tune as a Ray job (runs `sem-dist tune` once that command
exists; until then it exits 2 saying so).

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/tune.py ...

Takes the flags of `sem-dist tune` (`python jobs/tune.py --help`) plus --config FILE; see docs/cluster.md.
"""
import sys

from sem_dist.distributed.jobs import main

if __name__ == "__main__":
    sys.exit(main("tune"))
