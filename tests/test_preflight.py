"""Checks made before Ray starts: where a run dir can't work, and a node install of another version."""

from pathlib import Path

import pytest

from ying.config import load_config
from ying.pipeline import STAGES
from ying.preflight import config_problems, installed_package_problem, run_dir_problem


def _cfg(run_dir: str, *overrides: str):
    return load_config("tiny", overrides=[f"run.run_dir={run_dir}", *overrides])


@pytest.mark.parametrize("in_job, nodes", [(True, None), (True, 1), (False, 2), (False, 5)])
def test_a_local_run_dir_is_refused_where_nodes_would_not_share_it(tmp_path, in_job, nodes):
    problem = run_dir_problem(_cfg(str(tmp_path / "run")), in_job=in_job, nodes=nodes)
    assert problem and "s3://" in problem and "run.shared_fs=true" in problem


@pytest.mark.parametrize("in_job, nodes", [(False, None), (False, 1)])
def test_a_local_run_dir_is_fine_on_one_machine(tmp_path, in_job, nodes):
    assert run_dir_problem(_cfg(str(tmp_path / "run")), in_job=in_job, nodes=nodes) is None


def test_s3_or_a_declared_shared_filesystem_is_fine_on_a_cluster(tmp_path):
    assert run_dir_problem(_cfg("s3://bucket/run"), in_job=True, nodes=8) is None
    shared = _cfg(str(tmp_path / "run"), "run.shared_fs=true")
    assert run_dir_problem(shared, in_job=True, nodes=8, cwd=str(tmp_path / "job")) is None


def test_a_shared_run_dir_inside_the_jobs_working_dir_is_refused(tmp_path):
    job_dir = tmp_path / "job"
    problem = run_dir_problem(_cfg(str(job_dir / "runs" / "default"), "run.shared_fs=true"), in_job=True,
                              nodes=1, cwd=str(job_dir))
    assert problem and "working directory" in problem


def test_missing_sources_are_found_before_the_run(tmp_path):
    cfg = load_config("paper")
    (problem,) = config_problems(cfg, STAGES)
    assert "no source data for 41 of the 41 tasks" in problem and "--set data.sources.coco=" in problem
    # Only the stages that will run are checked: nothing is missing for a run that builds nothing.
    assert config_problems(load_config("tiny", overrides=["miniworld.enabled=false"]), STAGES, until="sources")
    real = tmp_path / "coco"
    real.mkdir()
    cfg = load_config("tiny", overrides=[f"data.sources.coco={real}", f"data.sources.vqa-v2={tmp_path / 'nope'}",
                                          f"eval.chair_instances={real}/instances_val2014.json"])
    assert config_problems(cfg, STAGES) == [f"data.sources.vqa-v2={tmp_path / 'nope'}: no such directory"]


def test_the_node_install_must_be_the_jobs_version(tmp_path):
    assert installed_package_problem() is None  # this checkout, as installed for the tests
    (tmp_path / "pyproject.toml").write_text('[project]\nversion = "99.0"\n')
    assert "ying 99.0" in installed_package_problem(tmp_path) and "ray up cluster.yaml" in installed_package_problem(tmp_path)
    import ying

    (tmp_path / "pyproject.toml").write_text(
        f'[project]\nversion = "{ying.__version__}"\ndependencies = ["ray[data]==2.60.*", "a-new-library>=1"]\n')
    problem = installed_package_problem(tmp_path)
    assert "a-new-library>=1" in problem and "ray" not in problem.split("needs")[1].split("which")[0]


def test_a_cache_moved_out_of_an_s3_run_dir_to_a_local_path_is_refused_too(tmp_path):
    cfg = _cfg("s3://bucket/run", f"rephrase.cache_dir={tmp_path / 'cache'}")
    problem = run_dir_problem(cfg, in_job=True, nodes=3)
    assert problem.startswith(f"rephrase.cache_dir={tmp_path / 'cache'} is a local path") and "s3://" in problem
    assert run_dir_problem(_cfg("s3://bucket/run", "rephrase.cache_dir=s3://bucket/cache"), in_job=True, nodes=3) is None
