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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
    frames_per_video: int = 8  # the paper samples 8 frames uniformly
    max_image_pixels: int = 64_000_000  # larger images are rejected as decompression bombs
    max_per_split: int | None = None  # cap instances per task and split (the paper samples subsets)
    # Paper Figure 5: training records use only this many of each pool's 10 instructions (drawn by
    # seed); evaluation records use the whole pool, so the eval stage can score unseen instructions.
    # None: training uses all 10.
    train_instructions: int | None = None
    # Held-out policy (paper Figure 8): tasks never trained on in Stage II, evaluated zero-shot.
    held_out: list[str] = Field(default_factory=list)
    eval_only: list[str] = Field(default_factory=list)  # tasks whose every split is evaluation data


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
    tasks: list[str] = Field(default_factory=list)  # tasks whose short answers get rephrased
    # One limit for the whole cluster (a Ray actor); set them a little under the provider's own limits.
    rpm: float | None = None  # requests per minute; None: unlimited
    tpm: float | None = None  # tokens (prompt + completion) per minute; None: unlimited
    burst_s: float = 0.5  # how many seconds of the rate may be sent at once
    backoff_s: float = 0.5  # first retry delay, doubled per retry (with jitter); Retry-After wins when longer
    backoff_max_s: float = 30.0
    budget_tokens: int | None = None  # stop sending after this many tokens this run; the rest fall back ("budget")
    retry_failed: bool = False  # re-send only the records whose cached outcome fell back (ying run --retry-failed)
    cache_dir: str | None = execution_only(None)  # default <run_dir>/rephrase/cache; local path or s3://...
    cache_flush_every: int = execution_only(64)  # object-store cache shards: entries per shard file (local: every entry)
    actors: int = execution_only(2)  # rephrase actors (each keeps max_concurrency requests in flight)
    batch_size: int = execution_only(64)  # rows per Ray Data batch
    batches_in_flight_per_actor: int = execution_only(4)  # concurrent batches per actor, so one slow request stalls no batch
    caption_tasks: list[str] = Field(default_factory=lambda: ["vqa-v2"])  # get COCO captions by meta image_id
    captions_per_image: int = 2  # COCO captions put in the prompt's Caption line
    coco_captions_file: str | None = None  # COCO captions_*.json; default: the run's own coco records
    progress_interval_s: float = execution_only(10.0)  # seconds between progress lines


class VisionConfig(_Strict):
    image_size: int
    patch_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int


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


class ModelConfig(_Strict):
    num_query_tokens: int = 32
    vision: VisionConfig
    qformer: QFormerConfig
    llm: LLMConfig
    tokenizer: TokenizerConfig = TokenizerConfig()
    # Pretrained weights: a local directory or Hub id. None means random init from the sizes above.
    blip2_path: str | None = None  # vision encoder + Q-Former (BLIP2-OPT-2.7B in the paper)
    llm_path: str | None = None  # the LLaMA-family LLM (Ziya-13B in the paper)
    max_text_tokens: int = 128  # prompt + answer tokens per example, images excluded
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class StageConfig(_Strict):
    lr: float  # peak learning rate
    warmup_steps: int
    max_steps: int | None = None  # optimizer steps; give this or epochs
    epochs: float | None = None  # passes over the stage's training records (converted to steps at run time)
    batch_size: int  # global batch, split across workers
    trainable: list[str]  # parameter-name patterns that train in this stage (all else frozen)
    tasks: list[str] | None = None  # None: every built task not held out
    eval_every: int = 0  # 0: only at the end
    checkpoint_every: int = 0  # 0: only at the end


class TrainConfig(_Strict):
    num_workers: int = 2
    use_gpu: bool = False
    zero_stage: Literal[0, 1, 2, 3] = 2
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    shuffle_buffer: int = 16384  # records per worker mixed in memory while streaming the training split
    stage1: StageConfig
    stage2: StageConfig


class TuneConfig(_Strict):
    lrs: list[float]  # Stage II peak learning rates searched
    trial_steps: int  # optimizer steps per trial
    metric: str = "val_loss"  # chosen on held-out validation data
    mode: Literal["min", "max"] = "min"


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
    # COCO instances_*.json whose annotations join the reference captions as CHAIR ground truth
    # (Rohrbach et al. use both); None: captions (and, for the mini-world, its scene file) only.
    chair_instances: str | None = None
    # Other vision-to-text models to evaluate beside ours: name -> local dir of a transformers model
    # (Blip2ForConditionalGeneration, InstructBlipForConditionalGeneration, LlavaForConditionalGeneration, ...).
    hf_models: dict[str, str] = {}
    num_actors: int = execution_only(1)  # model actors per model in the Ray Data prediction pool
    use_gpu: bool = False  # one GPU per model actor, model and batches on cuda (the paper preset's 13B model needs it)
    cache_dir: str | None = execution_only(None)  # predictions and judge responses; None: <run_dir>/cache/eval
    judge: JudgeConfig = JudgeConfig()


class ServeConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 20_000_000
    keep_running: bool = False  # `--serve`: leave the app up after the run instead of checking and stopping it


class YingConfig(_Strict):
    preset: str = "tiny"
    run: RunConfig = RunConfig()
    miniworld: MiniWorldConfig = MiniWorldConfig()
    data: DataConfig
    rephrase: RephraseConfig = RephraseConfig()
    model: ModelConfig
    train: TrainConfig
    tune: TuneConfig
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
        if self.model.vision.image_size % self.model.vision.patch_size:
            problems.append(
                f"model.vision.image_size={self.model.vision.image_size} is not a multiple of "
                f"patch_size={self.model.vision.patch_size}"
            )
        for name in ("stage1", "stage2"):
            stage: StageConfig = getattr(self.train, name)
            if stage.batch_size % max(self.train.num_workers, 1):
                problems.append(
                    f"train.{name}.batch_size={stage.batch_size} must divide evenly across "
                    f"train.num_workers={self.train.num_workers}"
                )
            if (stage.max_steps is None) == (stage.epochs is None):
                problems.append(f"train.{name}: set exactly one of max_steps and epochs")
            elif stage.max_steps is not None and stage.warmup_steps >= stage.max_steps:
                problems.append(f"train.{name}.warmup_steps must be smaller than max_steps")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def fingerprint_of(self, *sections: str) -> dict[str, Any]:
        """The parts of the config that a stage depends on, for its fingerprint."""
        full = self.to_dict()
        return {s: full[s] for s in sections}


def _set_dotted(tree: dict, dotted: str, raw_value: str) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
    # YAML parsing gives numbers, booleans, lists and null their natural types.
    node[keys[-1]] = yaml.safe_load(raw_value)


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
    if config_file is not None:
        user = yaml.safe_load(Path(config_file).read_text()) or {}
        if not isinstance(user, dict):
            raise ConfigError(f"{config_file}: expected a mapping at the top level")
        tree = _deep_merge(tree, user)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        _set_dotted(tree, key.strip(), value)
    tree["preset"] = preset
    try:
        return YingConfig.model_validate(tree)
    except ValidationError as err:
        lines = [f"invalid config (preset {preset!r}{', file ' + str(config_file) if config_file else ''}):"]
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "<root>"
            lines.append(f"  {where}: {e['msg']}")
        raise ConfigError("\n".join(lines)) from None


def config_json(cfg: YingConfig) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True, indent=2)
