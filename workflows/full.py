"""The whole Ying DAG, end to end: the entry point for `python workflows/full.py` and `ray job submit`.

    python workflows/full.py                                   # embedded default (tiny, mini-world)
    python workflows/full.py --run-dir s3://bucket/ying/run1   # any path may be s3://
    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . -- python workflows/full.py
    python workflows/full.py --help                            # every option

sources -> unify -> rephrase -> qc -> stage1 -> stage2 -> tune -> eval -> serve, each stage a Ray
task passing ObjectRefs; finished stages with unchanged config and inputs are skipped.
"""

import os
import sys

# Under `ray job submit --working-dir .` the package is in the uploaded working dir, not installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ying.cli import run_pipeline_from_args  # noqa: E402

if __name__ == "__main__":
    run_pipeline_from_args()
