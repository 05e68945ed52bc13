"""Pretrained BLIP-2 and LLM checkpoints: their sizes into the config, their tensors into Ying-VLM.

Two jobs, both driven by ``model.blip2_path`` (vision tower, Q-Former, query tokens) and
``model.llm_path`` (the LLaMA-family LLM and its tokenizer):

- ``resolve_pretrained(cfg)``, on the driver before anything runs: the checkpoints decide the
  sizes (``config.json``), the image size and normalisation (``preprocessor_config.json``) and the
  tokenizer (the LLM's folder). A preset's sizes only serve random init and ``plan-memory``; a
  size the user set explicitly that disagrees with a checkpoint is an error naming both.
- ``load_pretrained_parts(model, ...)``, in each training worker: every tensor the checkpoints hold
  is copied into the (already built, possibly ZeRO-3 partitioned) model, one module at a time. Under
  ZeRO-3 each module's parameters are gathered, rank 0 writes them, and DeepSpeed re-partitions
  them on exit, so no rank ever holds more than one module's weights beyond its own partition.
  The other ranks read nothing. Safetensors are memory-mapped: host memory holds one tensor at a time.

A checkpoint is a local folder or a Hub id (resolved through the Hugging Face cache, which
downloads on first use where the machine has network).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Iterator

__all__ = ["resolve_pretrained", "pretrained_problems", "load_pretrained_parts", "CheckpointTensors", "checkpoint_file",
           "BLIP2_PARTS", "LLM_PREFIX"]

# Our parameter-name prefixes that come from the BLIP-2 checkpoint (its OPT language model and its
# projection into OPT are not ours), and where the LLM checkpoint's names go in Ying-VLM.
BLIP2_PARTS = ("vision_model.", "qformer.", "query_tokens")
LLM_PREFIX = "language_model."


def _is_hub_id(path: str) -> bool:
    return not (path.startswith(("/", ".", "~")) or "://" in path or os.path.exists(path)) and path.count("/") == 1


def checkpoint_file(path: str, name: str, key: str, required: bool = True) -> str | None:
    """Local path of ``name`` in the checkpoint ``path`` (a folder or a Hub id); ``key`` names the setting."""
    if "://" in path:
        raise ValueError(f"{key}={path}: pretrained checkpoints are read from a local folder (on every node) or a "
                         "Hub id; copy it to local disk or a shared mount")
    if not _is_hub_id(path):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{key}={path}: no such directory")
        file = os.path.join(path, name)
        if os.path.exists(file):
            return file
        if required:
            raise FileNotFoundError(f"{key}={path} has no {name}: not a checkpoint saved with save_pretrained")
        return None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return hf_hub_download(path, name)
    except LocalEntryNotFoundError as e:  # (an EntryNotFoundError too) the Hub out of reach, nothing cached
        raise FileNotFoundError(f"{key}={path}: {name} is not in the Hugging Face cache and the Hub could not be "
                                f"reached ({e}); download the checkpoint and point {key} at its folder") from e
    except EntryNotFoundError:
        if required:
            raise FileNotFoundError(f"{key}={path} (a Hub id) has no {name}") from None
        return None
    except Exception as e:  # offline, unknown repo, gated: say which setting and why
        raise FileNotFoundError(f"{key}={path}: could not fetch {name} from the Hugging Face Hub ({type(e).__name__}: "
                                f"{e}); download the checkpoint and point {key} at its folder") from e


def pretrained_problems(cfg) -> list[str]:
    """What keeps ``model.blip2_path`` / ``model.llm_path`` from being read, one line each (before Ray starts)."""
    m = cfg.model
    wanted = {}
    if m.blip2_path:
        wanted[("model.blip2_path", m.blip2_path)] = [("config.json",), ("preprocessor_config.json",)]
    if m.llm_path:
        wanted[("model.llm_path", m.llm_path)] = [("config.json",), ("tokenizer.json", "tokenizer.model")]
    problems: list[str] = []
    for (key, path), files in wanted.items():
        if _is_hub_id(path):
            continue  # fetched (or found in the Hugging Face cache) when the run reads it, not here
        for names in files:
            try:
                if not any(checkpoint_file(path, name, key, required=False) for name in names):
                    why = ("Ying uses the LLM's own tokenizer: save it beside the weights (tokenizer.save_pretrained)"
                           if "tokenizer.json" in names else "not a folder saved with save_pretrained")
                    problems.append(f"{key}={path} has no {' or '.join(names)}: {why}")
            except (OSError, ValueError) as e:  # no such folder, an s3:// path, the Hub out of reach
                text = " ".join(str(e).split())  # one line, whatever the Hub client said
                problems.append(text if len(text) < 400 else text[:400] + " ...")
                break  # the same reason would hold for the folder's other files
    return problems


def _read_json(path: str, name: str, key: str) -> dict:
    with open(checkpoint_file(path, name, key)) as f:
        return json.load(f)


# --- sizes into the config -------------------------------------------------------------------

# (our field under model.<section>, the checkpoint config's field)
_VISION = [("image_size", "image_size"), ("patch_size", "patch_size"), ("hidden_size", "hidden_size"),
           ("num_layers", "num_hidden_layers"), ("num_heads", "num_attention_heads"),
           ("intermediate_size", "intermediate_size")]
_QFORMER = [("hidden_size", "hidden_size"), ("num_layers", "num_hidden_layers"),
            ("num_heads", "num_attention_heads"), ("intermediate_size", "intermediate_size"),
            ("cross_attention_frequency", "cross_attention_frequency")]
_LLM = [("hidden_size", "hidden_size"), ("num_layers", "num_hidden_layers"), ("num_heads", "num_attention_heads"),
        ("intermediate_size", "intermediate_size"), ("max_position_embeddings", "max_position_embeddings")]


def _preprocessor_size(pre: dict, where: str) -> int:
    size = pre.get("size")
    if isinstance(size, int):
        return size
    if isinstance(size, dict) and "height" in size and size.get("height") == size.get("width", size["height"]):
        return int(size["height"])
    if isinstance(size, dict) and "shortest_edge" in size:
        return int(size["shortest_edge"])
    raise ValueError(f"{where}: can't read a square image size from size={size!r}")


def resolve_pretrained(cfg):
    """``cfg`` with the model's sizes, image processing and tokenizer taken from its checkpoints.

    Returns ``cfg`` itself when neither path is set. Raises ``ConfigError`` listing every size that
    the user set explicitly and that disagrees with a checkpoint.
    """
    from transformers import Blip2Config, LlamaConfig

    from ying.config import ConfigError

    m = cfg.model
    if not m.blip2_path and not m.llm_path:
        return cfg
    updates: dict[str, dict] = {"vision": {}, "qformer": {}, "llm": {}}
    top: dict = {}
    sources: dict[str, str] = {}  # our dotted key -> where the checkpoint says it
    if m.blip2_path:
        where = os.path.join(m.blip2_path, "config.json")
        blip2 = Blip2Config.from_dict(_read_json(m.blip2_path, "config.json", "model.blip2_path"))
        for ours, theirs in _VISION:
            updates["vision"][ours] = getattr(blip2.vision_config, theirs)
            sources[f"model.vision.{ours}"] = f"{where} (vision_config.{theirs})"
        for ours, theirs in _QFORMER:
            updates["qformer"][ours] = getattr(blip2.qformer_config, theirs)
            sources[f"model.qformer.{ours}"] = f"{where} (qformer_config.{theirs})"
        top["num_query_tokens"] = blip2.num_query_tokens
        sources["model.num_query_tokens"] = f"{where} (num_query_tokens)"
        pre_where = os.path.join(m.blip2_path, "preprocessor_config.json")
        pre = _read_json(m.blip2_path, "preprocessor_config.json", "model.blip2_path")
        size = _preprocessor_size(pre, pre_where)
        if size != blip2.vision_config.image_size:
            raise ConfigError(f"{pre_where} resizes images to {size} px but {where} says the vision tower takes "
                              f"{blip2.vision_config.image_size} px: the checkpoint is inconsistent")
        for ours in ("image_mean", "image_std"):
            if ours in pre:
                updates["vision"][ours] = tuple(float(x) for x in pre[ours])
                sources[f"model.vision.{ours}"] = f"{pre_where} ({ours})"
    if m.llm_path:
        where = os.path.join(m.llm_path, "config.json")
        llm = LlamaConfig.from_dict(_read_json(m.llm_path, "config.json", "model.llm_path"))
        for ours, theirs in _LLM:
            updates["llm"][ours] = getattr(llm, theirs)
            sources[f"model.llm.{ours}"] = f"{where} ({theirs})"
        if not any(checkpoint_file(m.llm_path, f, "model.llm_path", required=False)
                   for f in ("tokenizer.json", "tokenizer.model")):
            raise ConfigError(f"model.llm_path={m.llm_path} has no tokenizer (tokenizer.json or tokenizer.model): "
                              "Ying uses the LLM's own tokenizer; save it beside the weights "
                              "(tokenizer.save_pretrained) or set model.tokenizer.path to its folder")

    problems = []
    current = m.model_dump()
    for section, values in updates.items():
        for field, value in values.items():
            key = f"model.{section}.{field}"
            ours = current[section][field]
            if cfg.set_by_user(key) and _differs(ours, value):
                problems.append(f"{key}={_show(ours)} (set by you) but {sources[key]} is {_show(value)}")
    for field, value in top.items():
        key = f"model.{field}"
        if cfg.set_by_user(key) and current[field] != value:
            problems.append(f"{key}={current[field]} (set by you) but {sources[key]} is {value}")
    if problems:
        raise ConfigError("the model's sizes come from its checkpoints; these settings disagree with them:\n  "
                          + "\n  ".join(problems) + "\nDrop those settings, or point model.blip2_path / "
                          "model.llm_path at checkpoints of those sizes")

    model_update = {section: getattr(m, section).model_copy(update=values) for section, values in updates.items()
                    if values}
    model_update.update(top)
    if m.llm_path:
        path = m.tokenizer.path if cfg.set_by_user("model.tokenizer.path") and m.tokenizer.path else m.llm_path
        model_update["tokenizer"] = m.tokenizer.model_copy(update={"kind": "pretrained", "path": path})
    # Validated again: the resolved sizes must still make a model (image size a multiple of the patch).
    resolved = cfg.model_copy(update={"model": m.model_copy(update=model_update)})
    type(cfg).model_validate(resolved.to_dict())
    return resolved


def _differs(a, b) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return len(a) != len(b) or any(abs(float(x) - float(y)) > 1e-9 for x, y in zip(a, b))
    return a != b


def _show(v) -> str:
    return f"[{', '.join(f'{x:g}' for x in v)}]" if isinstance(v, (list, tuple)) else str(v)


# --- tensors into the model ------------------------------------------------------------------

class CheckpointTensors:
    """The tensors of a ``save_pretrained`` folder, read one at a time: ``model.safetensors``, a
    sharded ``model.safetensors.index.json``, or (older releases) ``pytorch_model.bin`` shards."""

    def __init__(self, path: str, key: str):
        self.path, self.key = path, key
        self._open: dict[str, object] = {}  # file -> its open handle (memory-mapped), opened once
        self._where: dict[str, str] = {}  # tensor name -> file
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            index = checkpoint_file(path, index_name, key, required=False)
            if index:
                with open(index) as f:
                    weight_map = json.load(f)["weight_map"]
                files = {name: checkpoint_file(path, name, key) for name in sorted(set(weight_map.values()))}
                self._where = {t: files[name] for t, name in weight_map.items()}
                break
        else:
            single = (checkpoint_file(path, "model.safetensors", key, required=False)
                      or checkpoint_file(path, "pytorch_model.bin", key, required=False))
            if single is None:
                raise FileNotFoundError(f"{key}={path} holds no weights (model.safetensors, a sharded index or "
                                        "pytorch_model.bin)")
            self._where = {name: single for name in self._handle(single).keys()}

    def _handle(self, file: str):
        """A safetensors handle, or a ``.bin`` state dict memory-mapped: tensors are read when asked for."""
        if file not in self._open:
            if file.endswith(".safetensors"):
                from safetensors import safe_open

                self._open[file] = safe_open(file, framework="pt")
            else:
                import torch

                self._open[file] = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
        return self._open[file]

    def names(self) -> list[str]:
        return list(self._where)

    def get(self, name: str):
        file = self._where[name]
        handle = self._handle(file)
        return handle.get_tensor(name) if file.endswith(".safetensors") else handle[name]


@dataclass
class _Target:
    """Where one of our parameters comes from: a checkpoint tensor (None: initialise it)."""

    source: CheckpointTensors | None
    name: str | None


@contextlib.contextmanager
def _writable(params: list, partitioned: bool) -> Iterator[bool]:
    """Inside: the whole ``params``; yields whether this rank writes them (ZeRO-3: rank 0, then scattered)."""
    if not partitioned:
        yield True
        return
    import deepspeed
    import torch.distributed as dist

    with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
        yield dist.get_rank() == 0
    # A parameter assigned after its module was built (BLIP-2's fused qkv bias) escapes zero.Init and is
    # whole on every rank: rank 0's value goes to the others (deepspeed.initialize partitions it later).
    for p in params:
        if not hasattr(p, "ds_id"):
            dist.broadcast(p.data, src=0)


def _targets(model, blip2: CheckpointTensors | None, llm: CheckpointTensors | None) -> dict[str, _Target]:
    targets = {}
    blip2_names = set(blip2.names()) if blip2 else set()
    llm_names = set(llm.names()) if llm else set()
    missing = []
    for name, _ in model.named_parameters():
        if blip2 is not None and name.startswith(BLIP2_PARTS):
            if name not in blip2_names:
                missing.append(f"{name} (not in {blip2.path})")
            targets[name] = _Target(blip2, name)
        elif llm is not None and name.startswith(LLM_PREFIX):
            theirs = name[len(LLM_PREFIX):]
            if theirs not in llm_names:
                if theirs == "lm_head.weight" and "model.embed_tokens.weight" in llm_names:
                    theirs = "model.embed_tokens.weight"  # a tied LM head: the checkpoint stores the embedding once
                else:
                    missing.append(f"{theirs} (not in {llm.path})")
            targets[name] = _Target(llm, theirs)
        else:
            targets[name] = _Target(None, None)
    if missing:
        raise ValueError(f"the checkpoints lack {len(missing)} tensors Ying-VLM needs, e.g. {missing[:4]}: they are "
                         "not a BLIP-2 (model.blip2_path) and a LLaMA-family causal LM (model.llm_path) of the sizes "
                         "in their config.json")
    return targets


def load_pretrained_parts(model, blip2_path: str | None, llm_path: str | None, *, partitioned: bool = False) -> dict:
    """Fill ``model`` (built with uninitialised weights) from the checkpoints; initialise the rest.

    - a checkpoint tensor is copied as is (cast to the model's dtype); a shape that differs is an error,
      except the LLM's vocabulary rows: the checkpoint's rows come first, and the rows of tokens Ying
      added (``<image>``, a pad) start at the mean of the trained rows;
    - every parameter no checkpoint holds (always the language projection) is initialised by the
      model's own rules (``_init_weights``), on rank 0 under ZeRO-3.

    Returns ``{"loaded": n, "initialised": [names]}``.
    """
    import torch

    blip2 = CheckpointTensors(blip2_path, "model.blip2_path") if blip2_path else None
    llm = CheckpointTensors(llm_path, "model.llm_path") if llm_path else None
    targets = _targets(model, blip2, llm)
    loaded, initialised = 0, []
    for module_name, module in model.named_modules():
        direct = list(module.named_parameters(recurse=False))
        if not direct:
            continue
        prefix = f"{module_name}." if module_name else ""
        fresh = [n for n, _ in direct if targets[prefix + n].source is None]
        with _writable([p for _, p in direct], partitioned) as writer, torch.no_grad():
            if not writer:
                continue
            if fresh:
                model._init_weights(module)
                initialised.extend(prefix + n for n in fresh)
            for local, param in direct:
                target = targets[prefix + local]
                if target.source is None:
                    continue
                tensor = target.source.get(target.name)
                if tensor.shape == param.shape:
                    param.copy_(tensor)
                elif (tensor.ndim == 2 and tensor.shape[1] == param.shape[1] and tensor.shape[0] < param.shape[0]
                      and target.name.endswith(("embed_tokens.weight", "lm_head.weight"))):
                    n = tensor.shape[0]  # (V_checkpoint, D) into (V_ours, D)
                    param[:n].copy_(tensor)
                    param[n:].copy_(tensor.float().mean(dim=0, keepdim=True).expand(param.shape[0] - n, -1))
                else:
                    raise ValueError(f"{target.source.key}={target.source.path}: {target.name} has shape "
                                     f"{tuple(tensor.shape)}, Ying-VLM's {prefix + local} is {tuple(param.shape)}")
                loaded += 1
    return {"loaded": loaded, "initialised": initialised}
