"""Protect a dataset (train the generator, regenerate every sample's noise, write a protected copy) as a Ray job.

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/protect.py ...

Takes the flags of `sem-dist protect` (`python jobs/protect.py --help`) plus --config FILE; see docs/cluster.md.
"""
import sys

from sem_dist.commands._job import main

if __name__ == "__main__":
    sys.exit(main("protect"))
