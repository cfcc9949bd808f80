"""Load only a Video-LLM's vision side from its checkpoint: what an encode worker needs.

An encode worker runs the vision tower, the projector and the family's pooling, never the
language model (for LLaVA-OV-7B that is ~15 GB of the ~16 GB of weights). `load_vision_model`
builds the family's HF model on the meta device (no memory, no random init), keeps the
sub-modules the encoder names, and fills them with exactly their tensors from the checkpoint:

* sharded checkpoints: `model.safetensors.index.json`'s `weight_map` says which shard holds each
  tensor; only the shards holding a wanted tensor are opened (and, for a hub id, downloaded);
* `safetensors.safe_open(...).get_tensor(key)` reads one tensor at a time, only the wanted ones
  (a single-file checkpoint is fetched whole from the hub, but still only its vision tensors are
  read);
* checkpoint key names go through transformers' own key conversion for the model class (the same
  renamings `from_pretrained` applies: e.g. LLaVA-OV's `vision_tower.*` -> `model.vision_tower.*`,
  Qwen2.5-VL's `visual.*` -> `model.visual.*`), so hub checkpoints and checkpoints saved by the
  pinned transformers both load. A key that needs a tensor-level conversion (a `WeightConverter`:
  fused or split weights) is refused rather than loaded wrong;
* non-persistent buffers (rotary inverse frequencies, position ids) are not in checkpoints: they
  are recomputed by the model's own `initialize_weights`, which skips every tensor read from the
  checkpoint (transformers' `_is_hf_initialized` flag), as `from_pretrained` does.

What was read is recorded in a `CheckpointRead` (the documented hook: shard files opened, tensor
names and bytes), so callers and tests can check that no language-model tensor was touched.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import safetensors
import torch
from torch import nn

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


@dataclass
class CheckpointRead:
    """What `load_vision_model` read from the checkpoint.

    files: the safetensors files opened (names relative to the checkpoint);
    tensors: checkpoint key -> bytes of the tensor as stored, for every tensor read;
    skipped: how many tensors of the checkpoint were left unread.
    """

    files: list[str] = field(default_factory=list)
    tensors: dict[str, int] = field(default_factory=dict)
    skipped: int = 0

    @property
    def bytes(self) -> int:
        return sum(self.tensors.values())


def checkpoint_files(model: str) -> tuple[dict[str, str], Callable[[str], str]]:
    """(checkpoint key -> file name, a function that gives a file's local path) of a local
    directory or a hub id. Only the index (or the single file's header) is fetched here."""
    from transformers.utils import cached_file

    def local(filename: str) -> str:
        return cached_file(model, filename)

    index = cached_file(model, INDEX_FILE, _raise_exceptions_for_missing_entries=False)
    if index is not None:
        with open(index, encoding="utf-8") as handle:
            weight_map = json.load(handle)["weight_map"]
        if not isinstance(weight_map, dict):
            raise ValueError(f"{INDEX_FILE} has no weight_map")
        return dict(weight_map), local
    single = cached_file(model, SINGLE_FILE, _raise_exceptions_for_missing_entries=False)
    if single is None:
        raise FileNotFoundError(f"{model!r} has neither {INDEX_FILE} nor {SINGLE_FILE}")
    with safetensors.safe_open(single, framework="pt") as handle:
        keys = list(handle.keys())
    return dict.fromkeys(keys, SINGLE_FILE), local


def _model_key_names(skeleton: nn.Module, checkpoint_keys: Iterable[str]) -> dict[str, str]:
    """checkpoint key -> the skeleton's parameter name, by transformers' key conversion for
    this model class (what `from_pretrained` applies). Keys it maps to no parameter are
    dropped."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, rename_source_key

    transforms = get_model_conversion_mapping(skeleton)
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    meta_state = skeleton.state_dict()
    names = {}
    for key in checkpoint_keys:
        name, converted = rename_source_key(
            key, renamings, converters, skeleton.base_model_prefix, meta_state
        )
        if converted is not None:
            raise NotImplementedError(
                f"checkpoint tensor {key!r} needs a weight conversion ({converted}); "
                "load the whole model instead"
            )
        if name in meta_state:
            names[key] = name
    return names


def _drop_unwanted(module: nn.Module, keep: tuple[str, ...]) -> None:
    """Remove every direct child module and parameter of `module` not named in `keep`, so the
    language model cannot be used by mistake (accessing it raises AttributeError)."""
    for name in [n for n, _ in module.named_children() if n not in keep]:
        delattr(module, name)
    for name in [n for n, _ in module.named_parameters(recurse=False) if n not in keep]:
        delattr(module, name)


@torch.no_grad()
def load_vision_model(
    model_class: type,
    model: str,
    keep: tuple[str, ...],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[nn.Module, CheckpointRead]:
    """The inner HF model (`model_class(...).model`, e.g. `LlavaOnevisionModel`) of checkpoint
    `model` (a local directory or a hub id) holding only its children named in `keep`, loaded
    from the checkpoint; the rest (the language model, and the LM head outside the inner
    model) is never built or read. Returns it in eval mode on `device` with what was read.

    dtype defaults to bfloat16 on CUDA and float32 elsewhere, as the whole-model loader does.
    Raises if the checkpoint lacks a tensor the kept modules need.
    """
    from transformers import AutoConfig

    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = AutoConfig.from_pretrained(model)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        skeleton = model_class._from_config(config, dtype=dtype)
    inner = skeleton.model
    prefix = "model."
    wanted = {
        name
        for name in skeleton.state_dict()
        if name.startswith(prefix) and name[len(prefix) :].split(".")[0] in keep
    }
    weight_map, local_path = checkpoint_files(model)
    names = {k: n for k, n in _model_key_names(skeleton, weight_map).items() if n in wanted}
    missing = wanted - set(names.values())
    if missing:
        some = ", ".join(sorted(missing)[:5])
        raise ValueError(f"checkpoint {model!r} lacks {len(missing)} vision tensors: {some}")
    del skeleton  # the inner model stays referenced; the meta LM head goes

    record = CheckpointRead(skipped=len(weight_map) - len(names))
    targets = inner.state_dict()
    state: dict[str, torch.Tensor] = {}
    by_file: dict[str, list[str]] = {}
    for key in sorted(names):
        by_file.setdefault(weight_map[key], []).append(key)
    for filename, keys in sorted(by_file.items()):
        record.files.append(filename)
        with safetensors.safe_open(local_path(filename), framework="pt") as handle:
            for key in keys:
                tensor = handle.get_tensor(key)
                record.tensors[key] = tensor.numel() * tensor.element_size()
                target = names[key][len(prefix) :]
                state[target] = tensor.to(dtype=targets[target].dtype)

    _drop_unwanted(inner, keep)
    inner.load_state_dict(state, strict=True, assign=True)
    for tensor in inner.state_dict(keep_vars=True).values():
        tensor._is_hf_initialized = True  # initialize_weights must leave loaded tensors alone
    for name, buffer in list(inner.named_non_persistent_buffers()):
        owner, _, leaf = name.rpartition(".")
        inner.get_submodule(owner)._buffers[leaf] = torch.empty_like(buffer, device="cpu")
    inner.initialize_weights()  # recomputes exactly the non-persistent buffers
    return inner.to(device).eval(), record
