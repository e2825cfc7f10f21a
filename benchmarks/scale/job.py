"""One step of lmforge's sharded dedup as the workflow runs it, in its own process (the bench
measures each job from outside): `job.py STEP JSON_ARGS`, prints the step's counts as JSON.
The function is the one the rule's `lmforge` command calls, without the MLflow run around it."""

import json
import sys

from lmforge.data import dedup, minhash

STEPS = {
    "dedup_keys": dedup.write_keys,
    "dedup_bucket": dedup.find_later_copies,
    "dedup": dedup.write_attributes,
    "minhash": minhash.write_signatures,
    "minhash_bucket": minhash.candidate_pairs,
    "minhash_clusters": minhash.clusters,
    "dedup_minhash": minhash.write_near_duplicates,
}

if __name__ == "__main__":
    step, kwargs = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(STEPS[step](**kwargs)))
