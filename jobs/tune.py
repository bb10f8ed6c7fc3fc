"""Search the method's hyperparameters with Ray Tune as a Ray job: `sem-dist tune` run against the cluster
the job was submitted to (multi-worker trials with --workers N; S3 storage with --s3-profile NAME).

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/tune.py ...

Takes the flags of `sem-dist tune` (`python jobs/tune.py --help`) plus --config FILE; see docs/cluster.md.
"""
import sys

from sem_dist.commands._job import main

if __name__ == "__main__":
    sys.exit(main("tune"))
