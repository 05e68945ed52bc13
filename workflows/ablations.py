"""The paper's ablations alone (Figures 9 and 10, raw vs rephrased answers), on an existing run.

    python workflows/ablations.py --run-dir runs/default                # the full grid
    python workflows/ablations.py --run-dir runs/default --grid reduced # what the DAG runs
    python workflows/ablations.py --run-dir runs/default --set ablations.full_grid.seeds=[0,1,2]

Reuses the run's data (qc), Stage I checkpoint and Stage II learning rate (tune): run the DAG
first, at least `python workflows/full.py --run-dir DIR --until tune`. Writes
`DIR/ablations/results.json`, the plots, and the report's ablation and Reproduction sections. An
interrupted run resumes its unfinished trials (Tune's restore) and never re-runs a finished one.
"""

import os
import sys

# Under `ray job submit --working-dir .` the package is in the uploaded working dir, not installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ying.cli import run_ablations_from_args  # noqa: E402

if __name__ == "__main__":
    run_ablations_from_args()
