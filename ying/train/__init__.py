"""Training: the loop every worker runs (``loop``), its records (``ingest``, ``sampler``), the stages
as Ray Train runs (``stages``), the paper's variants (``variants``)."""

# How often Ray Train's controller polls its workers (Ray's default is 2 s). It collects their
# reports then, and notices then that training has ended: at 2 s a 2-step fit on 2 CPUs spent
# ~4.5 s after its loop returned, at 0.5 s ~1.4 s. Every Ray worker of a run gets it (the
# controller reads it when it starts): ``ying.cli`` puts ``controller_env`` in the job's runtime_env.
CONTROLLER_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


def controller_env(train) -> dict[str, str]:
    """``CONTROLLER_ENV``, and whether Ray Train starts its preemption watcher (``train.preemption_watcher``,
    a ``ying.config.TrainConfig``): the environment every Ray worker of a run gets."""
    return {**CONTROLLER_ENV, "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1" if train.preemption_watcher else "0"}
