"""The console filters: what nobody can act on is dropped, errors stay."""

from ying.console import _filtered, is_noise, quiet_stage_process, worker_env


def test_known_noise_is_dropped_and_everything_else_kept():
    seen = []
    handle = _filtered(seen.append)
    noise = [
        "[2026-12-01 21:47:17,635 E 16913 16913] core_worker.cc:2465: Actor with class name: "
        "'MapWorker(MapBatches(_ChunkBuilder))' and ID: 'e8' has constructor arguments in the object store "
        "and max_restarts > 0. If the arguments in the object store go out of scope ...",
        "Task ServeController.graceful_shutdown failed. There are infinite retries remaining, so the task will "
        "be retried. Error: The actor is dead because it was killed by `ray.kill`.",
        "DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully",
        "Progress bars disabled. To enable, set `ray.data.DataContext.get_current().enable_progress_bars = True`.",
        "Reporting training result 1: TrainingReport(checkpoint=Checkpoint(filesystem=local, path=/x), metrics={})",
    ]
    kept = ["[ying] unify: 1,200/8,072 records (14.9%), 412/s, ETA 17s",
            "RuntimeError: disk full", "Traceback (most recent call last):",
            "core_worker.cc:1234: Task failed with an unexpected system error"]
    assert all(is_noise(line) for line in noise) and not any(is_noise(line) for line in kept)
    handle({"pid": 1, "lines": noise + kept, "is_err": True})
    assert seen == [{"pid": 1, "lines": kept, "is_err": True}]
    handle({"pid": 1, "lines": noise, "is_err": True})  # nothing left: nothing printed, not even a prefix
    assert len(seen) == 1


def test_the_drivers_printing_of_forwarded_lines_is_filtered(monkeypatch, capsys):
    """Raylet error messages go straight to ray._private.worker.print_to_stdstream; so does every
    worker line, through the handler ray.init binds to it."""
    import ray._private.worker as worker

    from ying.console import filter_forwarded_logs

    monkeypatch.setattr(worker, "print_to_stdstream", worker.print_to_stdstream)  # restored afterwards
    assert filter_forwarded_logs() and filter_forwarded_logs()  # twice: wrapped once
    worker.print_to_stdstream({"lines": ["Task ServeController.graceful_shutdown failed. There are infinite "
                                         "retries remaining", "a real error"], "pid": "raylet", "is_err": False},
                              ignore_prefix=False)
    out = capsys.readouterr().out
    assert "a real error" in out and "graceful_shutdown" not in out


def test_stage_processes_turn_ray_data_bars_off():
    from ray.data import DataContext

    quiet_stage_process()
    ctx = DataContext.get_current()
    assert not ctx.enable_progress_bars and not ctx.enable_operator_progress_bars
    env = worker_env()
    assert env["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and "FutureWarning" in env["PYTHONWARNINGS"]


def test_a_parquet_read_starts_two_footer_readers_not_32(ray_cluster, tmp_path, monkeypatch):
    """Ray Data starts actors to read Parquet footers for every read_parquet (32 by default, a worker
    process each, whatever the file count); a run's workers start 2 (worker_env)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    from ray.util.state import list_actors

    for k, v in worker_env().items():
        monkeypatch.setenv(k, v)
    files = []
    for i in range(6):
        files.append(str(tmp_path / f"part-{i}.parquet"))
        pq.write_table(pa.table({"x": list(range(i, i + 10))}), files[-1])

    def footer_readers() -> int:
        return len(list_actors(filters=[("class_name", "=", "FooterReader")], limit=10_000))

    before = footer_readers()
    assert len(ray.data.read_parquet(files).take_all()) == 60
    assert 1 <= footer_readers() - before <= 2
