"""One typed config tree for the whole pipeline.

A run's config is a preset YAML (``ying/configs/<preset>.yaml``), optionally a user YAML on top,
then dotted overrides (``train.stage2.lr=2e-5``). Every model rejects unknown keys, so a typo in
a YAML fails at load time with the key's full path instead of being silently ignored.

The two presets (``tiny``, the embedded default, and ``paper``) differ only in values: the
pipeline never asks which preset it runs.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

__all__ = [
    "YingConfig",
    "load_config",
    "PRESETS_DIR",
    "ConfigError",
    "execution_only",
    "execution_only_paths",
]

PRESETS_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config that can't be used; the message lists every problem and how to fix it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def execution_only(default: Any = ..., **kwargs: Any) -> Any:
    """A setting that changes how a stage runs (actor counts, I/O batch sizes, concurrency, progress
    intervals), never what it produces: stage fingerprints leave it out, so changing it re-runs nothing."""
    return Field(default, json_schema_extra={"execution_only": True}, **kwargs)


def execution_only_paths(model: type[BaseModel] | None = None, prefix: str = "") -> set[str]:
    """Dotted paths of every ``execution_only`` field under ``model`` (default: the whole config)."""
    model = model or YingConfig
    paths: set[str] = set()
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("execution_only"):
            paths.add(path)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths |= execution_only_paths(annotation, f"{path}.")
    return paths


def _absolute_if_local(path: str) -> str:
    # Ray workers don't share the driver's working directory: a relative path would point
    # somewhere else in every worker, so local paths are pinned when the config is read.
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


class RunConfig(_Strict):
    seed: int = 0  # drives instruction choice, mini-world content, model init and data order
    run_dir: str = "runs/default"  # local path (relative to where you start the run) or s3://bucket/prefix
    # A local run_dir is refused on a cluster of several nodes and under a Ray job (each node would
    # write to its own disk). Set true when run_dir is on a filesystem every node mounts at the same
    # path (NFS, Lustre, EFS): then a local path is fine.
    shared_fs: bool = execution_only(False)

    @field_validator("run_dir")
    @classmethod
    def _pin_run_dir(cls, v: str) -> str:
        return _absolute_if_local(v)


class MiniWorldConfig(_Strict):
    enabled: bool = True  # generate synthetic sources under <run_dir>/sources when no real path is given
    image_size: int = 64  # side of the generated scenes, in pixels
    n_images: dict[str, int] = Field(default_factory=dict)  # per dataset and split, e.g. {"vqa-v2/train": 3000}
    n_videos: dict[str, int] = Field(default_factory=dict)
    video_frames: int = 16  # frames written per synthetic video (the adapter samples 8 of them)


class DataConfig(_Strict):
    tasks: list[str]  # task keys (M3IT config names) to build
    sources: dict[str, str] = Field(default_factory=dict)  # task -> directory of the real release; else mini-world

    @field_validator("sources")
    @classmethod
    def _pin_sources(cls, v: dict[str, str]) -> dict[str, str]:
        return {task: _absolute_if_local(path) for task, path in v.items()}
    # The released M3IT (its data/<group>/<task>/*.jsonl tree; local or s3://): when set, the DAG's
    # records come from it instead of the raw releases (data.sources and the mini-world are not read).
    # The release's tasks in data.tasks are imported, and every task Ying does not know (these train
    # in Stage II and are named in the report). Its answers are final: none is rephrased again.
    m3it: str | None = None

    @field_validator("m3it")
    @classmethod
    def _pin_m3it(cls, v: str | None) -> str | None:
        return _absolute_if_local(v) if v else v
    frames_per_video: int = 8  # the paper samples 8 frames uniformly
    max_image_pixels: int = 64_000_000  # larger images are rejected as decompression bombs
    # Cap instances per task and split with a seeded random sample (run.seed), as the paper sampled
    # subsets (Appendix A.4); None: every instance.
    max_per_split: int | None = Field(None, ge=1)
    # Contamination guard (QC): "drop" takes training records that show an evaluation image out of
    # training, "report" only lists them (qc/contamination.jsonl), "off" does not look.
    contamination_guard: Literal["drop", "report", "off"] = "drop"
    # Kinds of shared image the guard lets through in "drop" mode (ying.data.contamination lists them),
    # e.g. [karpathy-restval] to train on Karpathy's restval as the paper's Table 9 counts do.
    contamination_allow: list[Literal["karpathy-restval", "visdial-val2014", "eval-only-image",
                                      "shared-coco-image", "same-image-bytes"]] = Field(default_factory=list)
    chunk_rows: int = execution_only(256, ge=1)  # source instances per build call (one Parquet file per chunk and split)
    workers: int | None = execution_only(None, ge=1)  # build and QC actors; None: one per CPU of the cluster
    progress_interval_s: float = execution_only(10.0)  # seconds between the build's and QC's progress lines
    # Paper Figure 5: training records use only this many of each pool's 10 instructions (drawn by
    # seed); evaluation records use the whole pool, so the eval stage can score unseen instructions.
    # None: training uses all 10.
    train_instructions: int | None = None
    # Held-out policy (paper Figure 8): tasks never trained on in Stage II, evaluated zero-shot.
    held_out: list[str] = Field(default_factory=list)
    eval_only: list[str] = Field(default_factory=list)  # tasks whose every split is evaluation data
    # LLaVA-Instruct-150K's images (COCO train2017 files, local or s3://): None reads them from
    # <data.sources.llava>/images/; set it to use a COCO train2017 folder you already have.
    llava_image_dir: str | None = None

    @field_validator("llava_image_dir")
    @classmethod
    def _pin_llava_image_dir(cls, v: str | None) -> str | None:
        return _absolute_if_local(v) if v else v

    @field_validator("contamination_guard", mode="before")
    @classmethod
    def _off_is_not_false(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML reads a bare `off` as false

    @model_validator(mode="after")
    def _allow_needs_drop(self) -> "DataConfig":
        if self.contamination_allow and self.contamination_guard != "drop":
            raise ValueError(
                f"data.contamination_allow={self.contamination_allow} only applies when the guard drops records, "
                f"but data.contamination_guard={self.contamination_guard!r}: set data.contamination_guard=drop "
                "or data.contamination_allow=[]")
        return self


class ModelPrice(_Strict):
    """What one model costs, in US dollars per million tokens (your provider's price list)."""

    prompt_per_1m: float = Field(ge=0)
    completion_per_1m: float = Field(ge=0)


class RephraseConfig(_Strict):
    provider: Literal["auto", "template", "openai"] = "auto"  # auto: openai when base_url is set
    base_url: str | None = None  # any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, ...)
    model: str = "gpt-3.5-turbo-0301"
    temperature: float = 0.0
    prompt_version: str = "table10-v1"
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this environment variable only
    max_concurrency: int = execution_only(16)  # requests in flight per actor
    timeout_s: float = 30.0  # per request; a timeout is retried like a 5xx
    max_retries: int = 4  # retries per record after 429 / 5xx / timeout / malformed, then fallback:error:<kind>
    max_tokens: int = 256  # completion cap per request (also the tokens/min booking estimate)
    # Tasks whose short answers get rephrased; None: every task whose adapter says so (SPEC.rephrase
    # in ying/data/tasks/*, resolved by ying.data.tasks.rephrased_tasks), i.e. the VQA, KVQA,
    # reasoning and video QA tasks with short answers.
    tasks: list[str] | None = None
    # One limit for the whole cluster (a Ray actor); set them a little under the provider's own limits.
    rpm: float | None = None  # requests per minute; None: unlimited
    tpm: float | None = None  # tokens (prompt + completion) per minute; None: unlimited
    burst_s: float = 0.5  # how many seconds of the rate may be sent at once
    backoff_s: float = 0.5  # first retry delay, doubled per retry (with jitter); Retry-After wins when longer
    backoff_max_s: float = 30.0
    budget_tokens: int | None = None  # stop sending after this many tokens this run; the rest fall back ("budget")
    budget_usd: float | None = None  # stop sending after this much money this run (needs prices[model])
    # Per-model prices for budget_usd and the spend report. gpt-3.5-turbo-0301 (the paper's model) was
    # $0.002 / 1K tokens in and out; put your provider's current prices here for other models.
    prices: dict[str, ModelPrice] = Field(
        default_factory=lambda: {"gpt-3.5-turbo-0301": ModelPrice(prompt_per_1m=2.0, completion_per_1m=2.0)})
    retry_failed: bool = False  # re-send only the records whose cached outcome fell back (ying run --retry-failed)
    cache_dir: str | None = execution_only(None)  # default <run_dir>/rephrase/cache; local path or s3://...
    cache_flush_every: int = execution_only(64)  # object-store cache shards: entries per shard file (local: every entry)
    # Prompt owners: each prompt is routed by its hash to one owner actor, which alone sends it and caches
    # its answer (so no prompt is paid twice, whatever the count); each keeps max_concurrency requests in flight.
    actors: int = execution_only(2)
    batch_size: int = execution_only(64)  # rows per Ray Data batch; a batch yields its rows as they finish
    batches_in_flight_per_actor: int = execution_only(16)  # concurrent batches per Ray Data actor
    caption_tasks: list[str] = Field(default_factory=lambda: ["vqa-v2"])  # get COCO captions by meta image_id
    captions_per_image: int = 2  # COCO captions put in the prompt's Caption line
    coco_captions_file: str | None = None  # COCO captions_*.json; default: the run's own coco records
    progress_interval_s: float = execution_only(10.0)  # seconds between progress lines

    @model_validator(mode="after")
    def _check_budget_has_a_price(self) -> "RephraseConfig":
        if self.budget_usd is not None and self.model not in self.prices:
            raise ValueError(
                f"rephrase.budget_usd needs the price of rephrase.model={self.model!r}: add "
                f"rephrase.prices: {{{self.model}: {{prompt_per_1m: ..., completion_per_1m: ...}}}} in a YAML "
                f"file (--config), or use rephrase.budget_tokens")
        return self

    def price(self) -> ModelPrice | None:
        """The price of ``model``, if configured."""
        return self.prices.get(self.model)


class VisionConfig(_Strict):
    image_size: int
    patch_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    # Pixel normalisation (per RGB channel, after scaling to [0, 1]). BLIP-2 uses CLIP's; with
    # model.blip2_path set, both come from the checkpoint's preprocessor_config.json.
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


class QFormerConfig(_Strict):
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    cross_attention_frequency: int = 1


class LLMConfig(_Strict):
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512


class TokenizerConfig(_Strict):
    # "bpe": a byte-level BPE trained in milliseconds on Ying's own text (no download, covers Chinese);
    # "pretrained": the LLM's own tokenizer from `path`.
    kind: Literal["bpe", "pretrained"] = "bpe"
    vocab_size: int = 1024
    path: str | None = None


# Hub ids whose files are differences to LLaMA's weights, with the recipe their model cards give:
# config validation refuses them as model.llm_path (loaded as a LLaMA they give a broken model).
KNOWN_DELTA_WEIGHTS = {
    "IDEA-CCNL/Ziya-LLaMA-13B-v1": "Ziya-LLaMA-13B-v1",
    "IDEA-CCNL/Ziya-LLaMA-13B-Pretrain-v1": "Ziya-LLaMA-13B-Pretrain-v1",
}

_MERGE_RECIPE = (
    "(1) convert the original LLaMA-13B weights to the Hugging Face format (transformers' "
    "convert_llama_weights_to_hf.py --model_size 13B); (2) add the delta with Fengshenbang-LM's "
    "fengshen/utils/apply_delta.py: python3 -m apply_delta --base <llama-13b-hf> --target <merged-dir> "
    "--delta <the {name} download>; (3) set model.llm_path=<merged-dir> and model.tokenizer.path=<merged-dir>"
)


def delta_weights_problem(llm_path: str | None) -> str | None:
    """A config error when ``llm_path`` names delta weights (as a Hub id or a Hub cache folder)."""
    if not llm_path:
        return None
    normalized = llm_path.strip().rstrip("/").lower()
    for hub_id, name in KNOWN_DELTA_WEIGHTS.items():
        cache_folder = "models--" + hub_id.replace("/", "--")
        if normalized == hub_id.lower() or cache_folder.lower() in normalized:
            return (f"model.llm_path={llm_path!r} holds delta weights, not a usable LLM (loaded as a LLaMA it "
                    f"gives a broken model without an error). Merge them first: " + _MERGE_RECIPE.format(name=name))
    return None


class ModelConfig(_Strict):
    num_query_tokens: int = 32
    vision: VisionConfig
    qformer: QFormerConfig
    llm: LLMConfig
    tokenizer: TokenizerConfig = TokenizerConfig()
    # Pretrained weights: a local directory or Hub id. None means random init from the sizes above.
    # When set, the checkpoints decide the sizes above, the image size and normalisation and the
    # tokenizer (ying.model.pretrained.resolve_pretrained); the sizes written here then only serve
    # `ying plan-memory`, and one you set explicitly that disagrees with a checkpoint is an error.
    blip2_path: str | None = None  # vision encoder + Q-Former (BLIP2-OPT-2.7B in the paper)
    llm_path: str | None = None  # the LLaMA-family LLM (Ziya-13B in the paper)
    # The preset is the pretrained path itself (paper-cpu): refuse to start without both paths.
    require_pretrained: bool = False
    max_text_tokens: int = 128  # prompt + answer tokens per example, images excluded
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # weights are loaded directly in this dtype
    # LLM attention kernel: "auto" takes flash-attention-2 when the flash_attn package is installed
    # and training runs on GPUs, else PyTorch's scaled-dot-product attention ("sdpa").
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = execution_only("auto")


class StageConfig(_Strict):
    lr: float | None  # peak learning rate; Stage II: None takes the tune stage's search result
    warmup_steps: int
    max_steps: int | None = None  # optimizer steps; give this or epochs
    epochs: float | None = None  # passes over the stage's training records (converted to steps at run time)
    batch_size: int  # global batch per optimizer step (paper: 256) = micro_batch_size x workers x accumulation
    # Examples per device per forward pass; None: batch_size / num_workers (no gradient accumulation).
    # The rest of the global batch comes from gradient accumulation (e.g. 256 on 8 GPUs = 8 x 8 x 4).
    micro_batch_size: int | None = None
    trainable: list[str]  # parameter-name patterns that train in this stage (all else frozen)
    tasks: list[str] | None = None  # None: every built task not held out
    eval_every: int = 0  # validation every N optimizer steps; 0: only at the end
    val_examples: int = 256  # validation records, drawn evenly across the stage's tasks (seeded)
    # Resume checkpoints (optimizer, scheduler, data position, RNG; trainable weights only) every N
    # optimizer steps; 0: only at the end. A crash repeats at most this many steps.
    checkpoint_every: int = execution_only(0)


class PretrainConfig(StageConfig):
    """The text-only bilingual pretraining of a random-init LLM (the ``pretrain`` stage, before Stage I),
    on the mini-world's English and Chinese text about its own scenes (``ying.data.miniworld.text``).

    Skipped when the LLM is pretrained (``model.llm_path`` set) or ``enabled`` is false: Stage I then
    starts from the configured model as before.
    """

    enabled: bool = False
    texts: int = Field(4000, ge=1)  # generated training documents, half English, half Chinese
    validation_texts: int = Field(200, ge=1)
    lr: float | None = 1.0e-3
    warmup_steps: int = 20
    max_steps: int | None = 200
    batch_size: int = 32
    trainable: list[str] = Field(default_factory=lambda: ["language_model.*"])
    tasks: list[str] | None = Field(default_factory=lambda: ["text-en", "text-zh"])
    val_examples: int = 64


class TrainConfig(_Strict):
    num_workers: int = 2
    use_gpu: bool = False
    zero_stage: Literal[0, 1, 2, 3] = 2
    # ZeRO-3 only: build the model already partitioned across ranks (deepspeed.zero.Init), so no
    # process ever holds the whole model; pretrained weights are then loaded partition by partition.
    zero_init: bool = execution_only(False)
    gradient_checkpointing: bool = execution_only(False)  # recompute the LLM's activations in backward
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    shuffle_buffer: int = 16384  # rows per worker mixed in memory on top of the per-epoch file shuffle
    # Resources. Training workers and the Ray Data pipeline that feeds them (decode, resize,
    # tokenize, label masking) share the cluster: each gets an explicit share so neither starves.
    cpus_per_worker: float = execution_only(1.0)  # logical CPUs each training worker reserves
    torch_threads: int | None = execution_only(None)  # intra-op threads per worker; None: max(1, cpus_per_worker)
    data_cpus: float | None = execution_only(None)  # CPU cap for the ingest pipeline; None: what training leaves
    data_tasks: int = execution_only(2)  # most concurrent ingest tasks (read, decode, resize, tokenize) per dataset
    data_task_cpus: float = execution_only(1.0)  # logical CPUs each ingest task reserves
    prefetch_batches: int = execution_only(4)  # micro-batches each worker keeps ready ahead of the step
    # Read the next epoch's records (and the validation sample) on a thread while this epoch trains.
    # The first epoch's are always read while the worker sets up. Off where the CPUs that encode
    # records are the ones that train: see tiny.yaml.
    read_ahead: bool = execution_only(True)
    # Worker-group restarts from the last checkpoint after a worker or node dies; -1: without limit.
    max_failures: int = execution_only(3)
    # Ray Train's preemption watcher: an actor per fit that polls Ray for nodes being drained (spot
    # reclaims) and tells the controller before the node goes (a worker lost to a preemption is
    # charged to Ray's own preemption budget either way, not to max_failures). On one machine no node
    # is drained while the run lives, and the actor's process costs each fit ~1.5 CPU-seconds of
    # start-up (up to ~2 s of a 2-worker fit's start on 2 cores): see tiny.yaml.
    preemption_watcher: bool = execution_only(True)
    pretrain: PretrainConfig = PretrainConfig()  # text-only bilingual LLM pretraining (random-init LLMs only)
    stage1: StageConfig
    stage2: StageConfig


class TuneConfig(_Strict):
    """The Stage II learning-rate search (Ray Tune + ASHA), run when ``train.stage2.lr`` is None."""

    lrs: list[float] = Field(default_factory=list)  # a grid of peak learning rates ...
    lr_range: tuple[float, float] | None = None  # ... or num_samples draws, log-uniform in [low, high]
    num_samples: int = 1  # draws from lr_range (with a grid: repeats of it)
    trial_steps: int  # optimizer steps per trial (when ASHA lets it finish)
    report_every: int = 10  # steps between the validation reports ASHA decides on
    val_examples: int = 64  # validation records per report, spread over the Stage II tasks
    grace_period: int = 2  # reports every trial gets before ASHA may stop it
    reduction_factor: int = 2  # ASHA keeps the best 1/reduction_factor at each rung
    # Ray Train workers per trial; None: train.num_workers. With 1 a trial trains in its own Tune process,
    # which the next trial reuses: no worker group to start per trial (ying.tune.runner).
    num_workers: int | None = Field(None, ge=1)
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    # Trials at once, as far as the cluster's resources allow. Not execution-only: ASHA compares a trial
    # with those that reached a rung before it, so which trials run together decides which are stopped
    # (and can change the best lr); a change re-runs the search.
    max_concurrent_trials: int = 1


class AblationGrid(_Strict):
    """The values an ablation run tries (paper Appendix I; Table 5's Len column)."""

    # Figure 9: each task's training instructions are k drawn at random (seeded) from its pool: from
    # the first 8 for k <= 8 (9 and 10 stay unseen for the evaluation), from all 10 above; 10 = all.
    instructions_per_task: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 10])
    # Figure 10: how many Stage II tasks train (a seeded shuffle, the first n). Integers, or "paper":
    # the paper's 0/4/8/16/all of 27 tasks scaled to the run's task count (6 here: 0, 1, 2, 4, 6).
    task_counts: list[int | Literal["all"]] | Literal["paper"] = "paper"
    answers: bool = True  # train once on the raw short answers beside the rephrased ones
    # Every value is trained once per seed (the trial's training seed and Figure 10's shuffle); the
    # report shows the spread across them and says "inconclusive" where a difference is within it:
    # two seeds give a min-max, three or more a 95% confidence interval.
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        return v


class AblationsConfig(_Strict):
    """The paper's ablations as Ray Tune experiments, a DAG stage branching after Stage I."""

    enabled: bool = False
    grid: AblationGrid = AblationGrid()  # what the DAG's ablations stage runs (two seeds)
    # What workflows/ablations.py runs unless --grid reduced: three seeds, a 95% CI per value.
    full_grid: AblationGrid = AblationGrid(seeds=[0, 1, 2])
    trial_steps: int = 300  # optimizer steps per trial (paper: 5k)
    batch_size: int | None = None  # global batch per trial; None: train.stage2.batch_size (paper: 64)
    max_per_task: int | None = None  # training instances per task in every trial (paper: 5k); None: all
    lr: float | None = None  # peak lr of every trial; None: Stage II's (searched or set)
    # Ray Train workers per trial; None: train.num_workers. With 1 a trial trains in its own Tune process,
    # which the next trial reuses: no worker group to start per trial (ying.tune.runner).
    num_workers: int | None = Field(None, ge=1)
    eval_max_per_task: int = 40  # evaluation records per task and trial
    max_concurrent_trials: int = execution_only(1)  # trials at once, as far as the cluster's resources allow
    # Run beside Stage II (and the eval) where the cluster has room for both; False waits for them
    # (a 2-CPU machine cannot hold two trainings: their workers and ingest actors would deadlock).
    parallel: bool = execution_only(True)
    keep_checkpoints: bool = execution_only(False)  # keep each trial's checkpoints (deleted once evaluated)


VARIANT_NAMES = ("llava", "zh", "video")


class VariantRun(_Strict):
    """One of the paper's model variants: Stage II's recipe (batch, warm-up, trainable set) on other
    tasks, from another checkpoint (``ying.train.variants`` says which)."""

    max_steps: int | None = Field(None, ge=1)  # optimizer steps; None: train.stage2's
    lr: float | None = None  # peak lr; None: Stage II's (searched or set)
    tasks: list[str] | None = None  # None: the variant's own set (ying.train.variants.variant_tasks)
    # Ray Train workers; None: train.num_workers. With 1 the variant trains in a Ray task holding one
    # worker's resources, with no worker group to start (ying.train.stages.fit_stage).
    num_workers: int | None = Field(None, ge=1)


class VariantsConfig(_Strict):
    """The paper's variants (Tables 5-8), each a DAG stage, evaluated beside Ying-VLM on the same suites:

    - ``llava``: Stage II from Stage I on the LLaVA conversations only (Ying-VLM_LLaVA);
    - ``zh``: continual training from Stage II on the Chinese tasks' training splits (Ying-VLM_zh, Table 6);
    - ``video``: Stage II from Stage I on Stage II's mix plus the video tasks (Ying-VLM_video, Table 7).
    """

    enabled: list[Literal["llava", "zh", "video"]] = Field(default_factory=list)
    llava: VariantRun = VariantRun()
    zh: VariantRun = VariantRun()
    video: VariantRun = VariantRun()
    # Train beside each other where the cluster has room; False runs them one after another
    # (a 2-CPU machine holds one training at a time).
    parallel: bool = execution_only(True)


class JudgeConfig(_Strict):
    """The LLM judge (paper §4 Figure 4, Appendix G; Table 8). Off unless ``base_url`` is set."""

    base_url: str | None = None  # OpenAI-compatible endpoint, e.g. https://api.openai.com/v1; None: judge not configured
    model: str = "gpt-4-0613"  # the paper's judge
    api_key_env: str = "OPENAI_API_KEY"  # name of the environment variable holding the key (the key is never logged)
    temperature: float = 1.0  # Appendix G: temperature 1 ...
    samples: int = 3  # ... and three completions per order, both orders, six scores averaged
    max_examples: int = 300  # Figure 4: examples sampled from the KVQA tasks per baseline
    video_max_examples: int = 100  # Table 8: examples per video QA task
    timeout_s: float = 60.0
    max_retries: int = 2  # per request; a request that still fails counts as missing, never as a score
    concurrency: int = execution_only(4)  # requests in flight


class EvalConfig(_Strict):
    max_new_tokens: int = 24
    max_per_task: int = 200  # test instances scored per task
    batch_size: int = execution_only(32)  # examples per generation batch
    # Paper suites to run (ying.eval.suites.SUITES); a suite whose tasks were not built says "not run".
    suites: list[str] = ["kvqa", "hallucination", "chinese", "video", "generation_classification", "unseen_instructions"]
    caption_max_new_tokens: int = 48  # Table 5 captions are free descriptions, longer than answers
    # CHAIR object vocabulary: "auto" (the mini-world's shapes for mini-world sources, else the 80 COCO
    # objects with Lu et al.'s synonyms), a shipped name ("coco", "miniworld") or a JSON file path.
    chair_vocabulary: str = "auto"
    # COCO instances_*.json (one path or a list, e.g. val2014 and train2014) whose segmentation
    # annotations join the reference captions as CHAIR ground truth, as Rohrbach et al.'s code does.
    # Required for the hallucination suite on real COCO; the mini-world's scene file plays its part.
    chair_instances: str | list[str] | None = None
    # Other vision-to-text models to evaluate beside ours: name -> local dir of a transformers model
    # (Blip2ForConditionalGeneration, InstructBlipForConditionalGeneration, LlavaForConditionalGeneration, ...).
    hf_models: dict[str, str] = {}
    # Model actors per model in the Ray Data prediction pool; 1: one Ray task per model, in a pooled
    # process (no actor process to start per model: ying.eval.predictors.predict_examples).
    num_actors: int = execution_only(1)
    use_gpu: bool = False  # one GPU per model actor, model and batches on cuda (the paper preset's 13B model needs it)
    cache_dir: str | None = execution_only(None)  # predictions and judge responses; None: <run_dir>/cache/eval
    progress_interval_s: float = execution_only(10.0)  # seconds between progress lines while a model answers
    judge: JudgeConfig = JudgeConfig()

    @field_validator("chair_instances")
    @classmethod
    def _pin_instances(cls, v: str | list[str] | None) -> str | list[str] | None:
        # Ray workers don't share the driver's working directory (as data.sources).
        if isinstance(v, str):
            return _absolute_if_local(v)
        return [_absolute_if_local(p) for p in v] if v else v


class AutoscalingSettings(_Strict):
    """Serve's autoscaler for the model deployment (replaces ``serve.num_replicas`` when set)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0)  # per replica; about one full batch in flight


class ServeConfig(_Strict):
    # Where Serve's HTTP proxy listens. A host other than loopback requires a bearer token.
    host: str = "127.0.0.1"
    port: int = 8000
    app_name: str = "ying"  # the Serve application; `ying serve` and the DAG stage delete only this one
    route_prefix: str = "/"  # where the app's routes start, e.g. /ying
    # Bearer token: the YING_SERVE_TOKEN environment variable, else this file (a path readable where the
    # app is built, e.g. mounted on every node). Never put the token itself in a config or runtime_env.
    token_file: str | None = None
    keep_running: bool = False  # `--serve`: leave the app up after the run instead of checking and stopping it
    # Served checkpoints besides the run's stage1 and stage2: name -> checkpoint dir (local or s3://).
    models: dict[str, str] = Field(default_factory=dict)
    default_model: str = "stage2"  # the model a request without "model" gets
    # Request limits: a request over any of them is a 4xx naming the field.
    max_body_bytes: int = Field(20_000_000, gt=0)
    max_images: int = Field(8, ge=1)  # images per request (the paper samples 8 frames per video)
    max_image_pixels: int = Field(16_000_000, ge=1)  # per image, checked from the header before decoding
    max_tokens: int = Field(256, ge=1)  # the most a request may ask to generate
    default_max_tokens: int = Field(32, ge=1)  # when a request does not say
    # http(s) image URLs the server may fetch, as prefixes ("https://images.example.com/cats/");
    # empty: only data: URLs. Redirects are not followed.
    image_url_allowlist: list[str] = Field(default_factory=list)
    image_fetch_timeout_s: float = Field(10.0, gt=0)
    # Model replicas: resources, count or autoscaling, batching, queueing.
    num_replicas: int = execution_only(1, ge=1)  # ignored when autoscaling is set
    autoscaling: AutoscalingSettings | None = execution_only(None)
    num_cpus_per_replica: float = execution_only(1.0)
    num_gpus_per_replica: float = execution_only(0.0)  # > 0: the model runs on a GPU in bfloat16
    max_models_per_replica: int = execution_only(2)  # checkpoints kept loaded per replica (LRU, Serve multiplexing)
    # Continuous batching (ying.serve.engine.ContinuousBatcher): up to this many requests decode together;
    # a request joins at the next token and leaves when it ends.
    max_batch_size: int = execution_only(16)
    batch_wait_timeout_s: float = execution_only(0.01)  # an idle replica waits this long for a burst to gather
    max_ongoing_requests: int | None = execution_only(None)  # per model replica; None: 2 x max_batch_size
    max_queued_requests: int = execution_only(64)  # waiting for a model replica; past this: 503 + Retry-After
    retry_after_s: float = execution_only(1.0)  # the Retry-After a 503 carries
    ingress_replicas: int = execution_only(1)  # HTTP front replicas (validate and decode images)
    ingress_num_cpus: float = execution_only(0.25)
    health_check_period_s: float = execution_only(10.0)  # Serve runs the model on a tiny input this often
    health_check_timeout_s: float = execution_only(30.0)

    @model_validator(mode="after")
    def _check(self) -> "ServeConfig":
        problems = []
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < 2 * self.max_batch_size:
            problems.append(
                f"serve.max_ongoing_requests={self.max_ongoing_requests} must be at least 2 x serve.max_batch_size "
                f"({2 * self.max_batch_size}) so a full batch decodes while as many requests wait to join it; raise it "
                f"or leave it unset")
        if self.default_max_tokens > self.max_tokens:
            problems.append(f"serve.default_max_tokens={self.default_max_tokens} is over serve.max_tokens={self.max_tokens}")
        if self.autoscaling and self.autoscaling.min_replicas > self.autoscaling.max_replicas:
            problems.append("serve.autoscaling.min_replicas is over serve.autoscaling.max_replicas")
        if not self.route_prefix.startswith("/"):
            problems.append(f"serve.route_prefix={self.route_prefix!r} must start with '/'")
        for prefix in self.image_url_allowlist:
            if not prefix.startswith(("http://", "https://")) or prefix.count("/") < 3:
                problems.append(f"serve.image_url_allowlist entry {prefix!r} must look like https://host/path/")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def ongoing_requests(self) -> int:
        return self.max_ongoing_requests or 2 * self.max_batch_size


class YingConfig(_Strict):
    preset: str = "tiny"
    # Dotted keys the user set (a --config YAML or --set), as opposed to the preset's values.
    _user_keys: frozenset = PrivateAttr(default_factory=frozenset)

    def set_by_user(self, dotted: str) -> bool:
        """Whether the user set ``dotted`` (or a section above it) rather than taking the preset's value."""
        parts = dotted.split(".")
        return any(".".join(parts[:i]) in self._user_keys for i in range(1, len(parts) + 1))
    run: RunConfig = RunConfig()
    miniworld: MiniWorldConfig = MiniWorldConfig()
    data: DataConfig
    rephrase: RephraseConfig = Field(default_factory=RephraseConfig)
    model: ModelConfig
    train: TrainConfig
    tune: TuneConfig
    ablations: AblationsConfig = AblationsConfig()
    variants: VariantsConfig = VariantsConfig()
    eval: EvalConfig = EvalConfig()
    serve: ServeConfig = ServeConfig()

    @model_validator(mode="after")
    def _check_consistency(self) -> "YingConfig":
        problems = []
        unknown_held = set(self.data.held_out + self.data.eval_only) - set(self.data.tasks)
        if unknown_held:
            problems.append(
                f"data.held_out/eval_only name tasks that are not in data.tasks: {sorted(unknown_held)}"
            )
        if self.data.m3it and self.data.sources:
            problems.append(
                f"data.m3it={self.data.m3it} replaces the raw releases, so data.sources "
                f"({', '.join(sorted(self.data.sources))}) would not be read: drop data.sources, or data.m3it")
        if self.model.vision.image_size % self.model.vision.patch_size:
            problems.append(
                f"model.vision.image_size={self.model.vision.image_size} is not a multiple of "
                f"patch_size={self.model.vision.patch_size}"
            )
        if ("hallucination" in self.eval.suites and "coco" in self.data.tasks and "coco" in self.data.sources
                and not self.eval.chair_instances):
            problems.append(
                f"eval.suites has 'hallucination' on real COCO (data.sources.coco={self.data.sources['coco']}) but "
                "eval.chair_instances is not set: CHAIR's ground truth is the segmentation annotations with the "
                "captions (Rohrbach et al.); set eval.chair_instances=<coco>/annotations/instances_val2014.json, "
                "or drop 'hallucination' from eval.suites"
            )
        pretrain = self.train.pretrain.enabled and not self.model.llm_path  # else the stage is skipped
        for name in ("pretrain", "stage1", "stage2") if pretrain else ("stage1", "stage2"):
            stage: StageConfig = getattr(self.train, name)
            workers = max(self.train.num_workers, 1)
            micro = stage.micro_batch_size or stage.batch_size // workers
            if stage.batch_size % workers or micro < 1 or stage.batch_size % (micro * workers):
                problems.append(
                    f"train.{name}.batch_size={stage.batch_size} must be micro_batch_size "
                    f"({stage.micro_batch_size}) x train.num_workers ({self.train.num_workers}) x a whole number "
                    "of accumulation steps"
                )
            if name in ("pretrain", "stage1") and stage.lr is None:
                problems.append(f"train.{name}.lr must be set (only Stage II's can come from the tune stage)")
            if (stage.max_steps is None) == (stage.epochs is None):
                problems.append(f"train.{name}: set exactly one of max_steps and epochs")
            elif stage.max_steps is not None and stage.warmup_steps >= stage.max_steps:
                problems.append(f"train.{name}.warmup_steps must be smaller than max_steps")
        for name in self.variants.enabled:  # Stage II's batch on the variant's own workers
            workers = getattr(self.variants, name).num_workers
            stage2 = self.train.stage2
            if workers and (stage2.batch_size % workers
                            or stage2.batch_size % ((stage2.micro_batch_size or stage2.batch_size // workers) * workers)):
                problems.append(f"variants.{name}.num_workers={workers} must divide train.stage2.batch_size "
                                f"({stage2.batch_size}) into micro-batches of train.stage2.micro_batch_size "
                                f"({stage2.micro_batch_size}) and whole accumulation steps")
        if self.train.stage2.lr is None and not (self.tune.lrs or self.tune.lr_range):
            problems.append("train.stage2.lr is None, so the tune stage searches it: give tune.lrs or tune.lr_range")
        if self.model.require_pretrained and not (self.model.blip2_path and self.model.llm_path):
            missing = [k for k in ("blip2_path", "llm_path") if not getattr(self.model, k)]
            problems.append(
                f"preset {self.preset!r} trains from pretrained checkpoints, and model.{' and model.'.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set: --set model.blip2_path=<BLIP-2 folder> --set "
                "model.llm_path=<LLaMA-family folder> (`python tests/pretrained_checkpoints.py --out DIR` writes "
                "small ones)")
        if self.train.zero_init and self.train.zero_stage != 3:
            problems.append("train.zero_init builds a ZeRO-3 partitioned model: set train.zero_stage=3 or zero_init=false")
        problem = delta_weights_problem(self.model.llm_path)
        if problem:
            problems.append(problem)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def fingerprint_of(self, *sections: str) -> dict[str, Any]:
        """The parts of the config that a stage depends on, for its fingerprint."""
        full = self.to_dict()
        return {s: full[s] for s in sections}

    def result_view(self, *sections: str) -> dict[str, Any]:
        """Dotted sections of the config minus their execution-only settings: what decides a result."""
        tree = self.to_dict()
        for path in execution_only_paths():
            *parents, leaf = path.split(".")
            node: Any = tree
            for key in parents:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(leaf, None)
        out = {}
        for dotted in sections:
            node = tree
            for key in dotted.split("."):
                node = node[key]
            out[dotted] = node
        return out


def _set_dotted(tree: dict, dotted: str, raw_value: str) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
    # YAML parsing gives numbers, booleans, lists and null their natural types.
    node[keys[-1]] = yaml.safe_load(raw_value)


def _leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    """Dotted paths of the leaves of a nested mapping."""
    keys: set[str] = set()
    for k, v in tree.items():
        path = f"{prefix}.{k}" if prefix else str(k)
        keys |= _leaf_keys(v, path) if isinstance(v, dict) and v else {path}
    return keys


def _deep_merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(
    preset: str = "tiny",
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> YingConfig:
    """Preset, then a user YAML, then ``key.path=value`` overrides; every problem reported at once."""
    preset_file = PRESETS_DIR / f"{preset}.yaml"
    if not preset_file.exists():
        known = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown preset {preset!r}; known presets: {known}")
    tree = yaml.safe_load(preset_file.read_text()) or {}
    user_keys: set[str] = set()
    if config_file is not None:
        user = yaml.safe_load(Path(config_file).read_text()) or {}
        if not isinstance(user, dict):
            raise ConfigError(f"{config_file}: expected a mapping at the top level")
        tree = _deep_merge(tree, user)
        user_keys |= _leaf_keys(user)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        _set_dotted(tree, key.strip(), value)
        parsed = yaml.safe_load(value)
        user_keys |= _leaf_keys(parsed, key.strip()) if isinstance(parsed, dict) and parsed else {key.strip()}
    tree["preset"] = preset
    try:
        cfg = YingConfig.model_validate(tree)
        cfg._user_keys = frozenset(user_keys)
        return cfg
    except ValidationError as err:
        lines = [f"invalid config (preset {preset!r}{', file ' + str(config_file) if config_file else ''}):"]
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "<root>"
            lines.append(f"  {where}: {e['msg']}")
        raise ConfigError("\n".join(lines)) from None


def config_json(cfg: YingConfig) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True, indent=2)
