"""The whole Ying DAG, end to end: the entry point for `python workflows/full.py` and `ray job submit`.

    python workflows/full.py                                   # embedded default (tiny, mini-world)
    python workflows/full.py --run-dir s3://bucket/ying/run1   # any path may be s3://
    python workflows/full.py --help                            # every option

On a cluster (cluster.yaml), through the dashboard the head binds to its own 127.0.0.1, reached
with an SSH tunnel:

    ray dashboard cluster.yaml &
    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python workflows/full.py --run-dir s3://bucket/ying/run1

sources -> unify -> rephrase -> qc -> stage1 -> tune -> stage2 -> eval -> report -> serve, with the
ablations branching after tune; each stage a Ray task passing ObjectRefs; finished stages with
unchanged config, code and inputs are skipped.
"""

import os
import sys

# In a Ray job (uploaded with --working-dir) this code comes first; the nodes install its dependencies.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ying.cli import run_pipeline_from_args  # noqa: E402

if __name__ == "__main__":
    run_pipeline_from_args()
