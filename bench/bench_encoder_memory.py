"""Memory of an indexing encode worker: the vision-only encoder (`load_video_encoder`) against the
whole Video-LLM (`load_video_llm`), both loading the same checkpoint from disk.

The checkpoint is LLaVA-OV-7B's architecture (`bench_answer.llava_ov_config`: SigLIP-so400m +
Qwen2-7B) with random weights, written here shard by shard in bf16 safetensors under the hub
checkpoints' key names (transformers' own reverse key conversion), so it is laid out like the
published one (~16 GB; ~2 GB in memory at a time while writing). Nothing is downloaded.

Each worker runs in a fresh Python process, one after the other (never together), that loads the
model in bf16 on CPU and encodes one video of --frames random 384 x 384 frames, then reports its
peak resident memory (VmHWM), RSS split into anonymous and file-mapped memory, its mapped address
space, the bytes of the tensors it holds, the load and encode times. A third process only imports
torch, transformers and tokenreel: the floor every worker pays. The vision-only process also
reports what it read from the checkpoint.

Two ways to hold the weights, one per run:

* default: as the loaders leave bf16 weights on CPU: memory-mapped from the safetensors files,
  resident only where encoding reads them. The whole model then maps its language model without
  ever reading it, so its RSS hides what a GPU worker pays;
* --materialize: every weight copied into the process's own memory after loading, which is what
  moving the model to a GPU (the whole model: every byte read, and held in GPU memory) or loading
  it in float32 (the CPU default) does. The whole model needs ~16.5 GB of RAM then: the script
  checks the machine's available memory first (keeping --margin-gib for others) and otherwise
  asks for --whole-text-layers N, which loads the whole model with only its first N of 28 decoder
  layers (same checkpoint; the other layers' tensors stay unread). The vision-only worker does not
  depend on it.

    .venv/bin/python bench/bench_encoder_memory.py --keep     # 7b, 2 frames, mapped weights
    .venv/bin/python bench/bench_encoder_memory.py --materialize --whole-text-layers 8
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent))

GIB, MIB = 1 << 30, 1 << 20


# -- the checkpoint ---------------------------------------------------------------------------
def random_value(name: str, meta: torch.Tensor) -> torch.Tensor:
    """Norm weights 1, biases 0, the rest N(0, 0.02): finite activations in bf16."""
    if meta.ndim == 1 and "norm" in name and name.endswith("weight"):
        return torch.ones(meta.shape, dtype=meta.dtype)
    if name.endswith("bias"):
        return torch.zeros(meta.shape, dtype=meta.dtype)
    return torch.empty(meta.shape, dtype=meta.dtype).normal_(0.0, 0.02)


def write_random_checkpoint(directory: Path, size: str, shard_bytes: int) -> dict:
    """A random-weight LLaVA-OV checkpoint of the given size: config, tokenizer, processor
    settings, and bf16 safetensors shards of at most shard_bytes with their index."""
    import safetensors.torch
    from bench_answer import llava_ov_config, llava_ov_tokenizer
    from transformers import LlavaOnevisionForConditionalGeneration
    from transformers.core_model_loading import revert_weight_conversion

    directory.mkdir(parents=True, exist_ok=True)
    config = llava_ov_config(size)
    config.save_pretrained(directory)
    llava_ov_tokenizer(config).save_pretrained(directory)
    side = config.vision_config.image_size
    (directory / "preprocessor_config.json").write_text(
        json.dumps({"size": {"height": side, "width": side}})
    )
    with torch.device("meta"):
        skeleton = LlavaOnevisionForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    # The hub's key names (e.g. `language_model.model.layers.0...`), as save_pretrained writes.
    named = revert_weight_conversion(skeleton, dict(skeleton.state_dict()))
    if config.tie_word_embeddings:
        named = {k: v for k, v in named.items() if not k.endswith("lm_head.weight")}
    shards: list[list[str]] = [[]]
    filled = 0
    for key in sorted(named):
        nbytes = named[key].numel() * named[key].element_size()
        if shards[-1] and filled + nbytes > shard_bytes:
            shards.append([])
            filled = 0
        shards[-1].append(key)
        filled += nbytes
    weight_map = {}
    for i, keys in enumerate(shards, start=1):
        filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        tensors = {key: random_value(key, named[key]) for key in keys}
        safetensors.torch.save_file(tensors, directory / filename, metadata={"format": "pt"})
        del tensors
        weight_map.update(dict.fromkeys(keys, filename))
    total = sum(v.numel() * v.element_size() for v in named.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return {"shards": len(shards), "tensors": len(weight_map), "bytes": total}


def whole_model_bytes(directory: Path, text_layers: int | None) -> int:
    """Bytes of the whole model's tensors with text_layers decoder layers (None: all)."""
    import safetensors

    index = json.loads((directory / "model.safetensors.index.json").read_text())
    total = index["metadata"]["total_size"]
    if text_layers is None:
        return total
    layers = json.loads((directory / "config.json").read_text())["text_config"]["num_hidden_layers"]
    per_layer = 0
    for key, filename in index["weight_map"].items():
        if key.startswith("language_model.model.layers.0."):
            with safetensors.safe_open(directory / filename, framework="pt") as handle:
                per_layer += 2 * math.prod(handle.get_slice(key).get_shape())  # bf16
    return total - (layers - text_layers) * per_layer


# -- one worker, in its own process ------------------------------------------------------------
def measure(
    mode: str, directory: str, frames: int, text_layers: int | None, materialize: bool
) -> dict:
    """Load (mode "vision" or "whole") in bf16 on CPU and encode one video; or only import
    (mode "imports"). Runs in a fresh process: its memory figures are this worker's alone.

    materialize: copy every weight into the process's own memory after loading, as moving the
    model to a GPU (or converting its dtype) reads and holds every byte; without it, bf16 weights
    stay memory-mapped from the safetensors files and only the pages encoding touches become
    resident (on CPU the whole model's language model is then mapped but never read)."""
    import numpy as np
    import transformers  # noqa: F401

    from compression.models import load_video_encoder, load_video_llm  # noqa: F401

    torch.set_num_threads(2)
    out: dict = {"mode": mode, "materialize": materialize}
    if mode != "imports":
        started = time.perf_counter()
        if mode == "vision":
            model = load_video_encoder(directory, dtype=torch.bfloat16)
            read = model.checkpoint_read
            out.update(
                read_tensors=len(read.tensors),
                read_bytes=read.bytes,
                read_files=read.files,
                skipped_tensors=read.skipped,
            )
            module = model.vision
        else:
            model = load_whole(directory, text_layers)
            module = model.model
        if materialize:
            with torch.no_grad():
                for tensor in [*module.parameters(), *module.buffers()]:
                    tensor.data = tensor.data.clone()
        out["load_s"] = time.perf_counter() - started
        tensors = list(module.state_dict().values())
        out["held_tensors"] = len(tensors)
        out["held_bytes"] = sum(t.numel() * t.element_size() for t in tensors)
        out["after_load"] = memory_status()
        video = np.random.default_rng(0).integers(0, 256, (frames, 384, 384, 3), dtype=np.uint8)
        started = time.perf_counter()
        encoded = model.encode(video)
        out["encode_s"] = time.perf_counter() - started
        out["tokens"] = list(encoded.tokens.shape)
        out["finite"] = bool(torch.isfinite(encoded.tokens.float()).all())
    out["at_end"] = memory_status()
    return out


def memory_status() -> dict:
    """This process's memory in MiB from /proc/self/status: peak RSS (VmHWM: of this program
    only; `ru_maxrss` would include the parent's RSS at fork), RSS now, its anonymous and
    file-mapped parts, and the mapped address space (VmSize)."""
    fields = {"VmHWM": "peak_rss", "VmRSS": "rss", "RssAnon": "rss_anon", "RssFile": "rss_file"}
    fields["VmSize"] = "mapped"
    out = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            name, _, value = line.partition(":")
            if name in fields:
                out[fields[name] + "_mib"] = round(int(value.split()[0]) / 1024, 1)
    return out


def load_whole(directory: str, text_layers: int | None):
    """The whole model as serving loads it (`load_video_llm`), or with only the first
    text_layers decoder layers (same checkpoint; the other layers' tensors stay unread)."""
    from compression.models import load_video_llm

    if text_layers is None:
        return load_video_llm(directory, dtype=torch.bfloat16)
    from transformers import AutoConfig, AutoTokenizer, LlavaOnevisionForConditionalGeneration

    from compression.models.llava_onevision import LlavaOneVision
    from compression.models.preprocess import FramePreprocessing

    config = AutoConfig.from_pretrained(directory)
    config.text_config.num_hidden_layers = text_layers
    network = LlavaOnevisionForConditionalGeneration.from_pretrained(
        directory, config=config, dtype=torch.bfloat16, attn_implementation="sdpa"
    )
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return LlavaOneVision(
        network, tokenizer, directory, FramePreprocessing.from_pretrained(directory)
    )


def run_worker(mode: str, args: argparse.Namespace, text_layers: int | None) -> dict:
    command = [
        sys.executable, __file__, "--worker", mode, "--checkpoint", str(args.checkpoint),
        "--frames", str(args.frames),
    ]  # fmt: skip
    if text_layers is not None:
        command += ["--whole-text-layers", str(text_layers)]
    if args.materialize:
        command.append("--materialize")
    env = dict(os.environ, PYTHONPATH=str(BENCH_DIR.parent))
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def available_bytes() -> int:
    import psutil

    return psutil.virtual_memory().available


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("7b", "0.5b"), default="7b")
    parser.add_argument("--checkpoint", type=Path, default=None, help="reused when it exists")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint afterwards")
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--shard-gib", type=float, default=4.0)
    parser.add_argument("--whole-text-layers", type=int, default=None)
    parser.add_argument("--margin-gib", type=float, default=4.0)
    parser.add_argument("--materialize", action="store_true", help="see `measure`")
    parser.add_argument("--worker", choices=("imports", "vision", "whole"), help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.worker:
        result = measure(
            args.worker, str(args.checkpoint), args.frames, args.whole_text_layers, args.materialize
        )
        print(json.dumps(result))
        return

    args.checkpoint = args.checkpoint or Path(f"/tmp/tokenreel-bench-llava-ov-{args.size}")
    created = not (args.checkpoint / "model.safetensors.index.json").exists()
    report: dict = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / GIB:.0f} GiB RAM",
        "torch": torch.__version__,
        "size": args.size,
        "frames": args.frames,
        "materialize": args.materialize,
    }
    try:
        if created:
            started = time.perf_counter()
            report["checkpoint"] = write_random_checkpoint(
                args.checkpoint, args.size, int(args.shard_gib * GIB)
            )
            report["checkpoint"]["write_s"] = time.perf_counter() - started
        results = {"imports": run_worker("imports", args, None)}
        results["vision"] = run_worker("vision", args, None)
        layers = args.whole_text_layers
        # Only materialized weights are all resident; mapped ones cost what encoding touches.
        need = whole_model_bytes(args.checkpoint, layers) if args.materialize else 0
        need += args.margin_gib * GIB
        if need > available_bytes():
            sys.exit(
                f"the whole model needs ~{need / GIB:.1f} GiB with the margin but "
                f"{available_bytes() / GIB:.1f} GiB are available: pass --whole-text-layers N"
            )
        results["whole"] = run_worker("whole", args, layers)
        results["whole"]["text_layers"] = layers or "all"
    finally:
        if created and not args.keep:
            shutil.rmtree(args.checkpoint, ignore_errors=True)
    report["results"] = results
    vision, whole = results["vision"], results["whole"]
    report["whole_over_vision_peak_rss"] = (
        whole["at_end"]["peak_rss_mib"] / vision["at_end"]["peak_rss_mib"]
    )
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
