"""The outer stage's cost beside HoliTom's and FastVID's published code, on the same tokens.

Synthetic video-like tokens (`bench_compress.synthetic_video`: a 196-token scene changing every 8
frames plus noise), F frames x 196 tokens of dimension d, float32, CPU, one process; every
measurement alternated with the others in each repetition (the order rotating), medians reported:

* matmul: one [N, d] x [d, N] float32 product of all N tokens (the yardstick);
* ours: one `compression.compress` call (retention pool + DPC-KNN + cluster means), retention 2%;
  ours dpc: `dpc_knn` alone on the recycle set R that `compress` clusters (the peers' convention,
  the default);
* holitom: HoliTom's `cluster_dpc_knn` + `merge_tokens_by_clustering` (its llava_arch.py, k = 7,
  BETA = 0.6) on the same recycle set R with the same number of clusters;
* fastvid: FastVID's whole outer block as published (DySeg + STPrune + DTM, the block of its
  LLaVA-OneVision `Qwen2Model.forward`, run on the N tokens with their defaults: c = 8, tau = 0.9,
  d = 0.4, p = 4, beta = 0.6); it clusters within frames, a different algorithm. fastvid dpc: its
  density step (k = 4) on the same global recycle set R, picking the same number of centres.

The peers' code is never copied into this project: `--peers-dir` is a directory holding checkouts
of github.com/cokeshao/HoliTom (as HoliTom/) and github.com/LunarShen/FastVID (as FastVID/). Their
functions are imported from there at run time: HoliTom's llava_arch.py with stand-ins for the three
`llava` helpers it imports but these functions do not call; FastVID's block is compiled from its
file's text between its "FastVID" markers (it is inline in the model's forward, not a function)
and run with stand-ins for the model attributes it reads. Without --peers-dir only ours runs.

Peak extra memory: the process's peak RSS during the call minus its RSS just before (the peak is
reset through /proc/self/clear_refs before each call). A peer whose R x R matrices would need more
than --peer-memory-gib (its cdist, mask and temporaries: about 5 x 4 R^2 bytes) is not run at that
length, and the table says so.

    .venv/bin/python bench/bench_outer_peers.py --peers-dir /tmp/peers [--frames 32 64 128]
        [--dim 3584] [--repeat 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import textwrap
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_compress import TOKENS_PER_FRAME, synthetic_video

from compression import CompressionConfig, compress
from compression.dpc_knn import dpc_knn
from compression.retention_pool import retention_pool

HOLITOM_FILE = "HoliTom/holitom/llava_arch.py"
FASTVID_FILE = (
    "FastVID/fastvid_llavaonevision/LLaVA-NeXT/llava/model/language_model/modeling_qwen2.py"
)
FASTVID_START = "############################### FastVID ###############################"
FASTVID_END = "##############################################################"
FASTVID_DENSITY = ("tmp_frm_hidden_states = token_filtered", "sampled_indexs = torch.topk(")


def load_holitom(peers_dir: Path) -> tuple[Callable, Callable]:
    """HoliTom's cluster_dpc_knn and merge_tokens_by_clustering, from its own file."""
    names = {
        "llava": {},
        "llava.constants": dict.fromkeys(
            [
                "IGNORE_INDEX",
                "IMAGE_TOKEN_INDEX",
                "DEFAULT_IMAGE_PATCH_TOKEN",
                "DEFAULT_IM_START_TOKEN",
                "DEFAULT_IM_END_TOKEN",
            ]
        ),
        "llava.mm_utils": {"get_anyres_image_grid_shape": None},
        "llava.utils": {"rank0_print": print, "rank_print": print},
    }
    for module, attrs in names.items():  # stand-ins, only for its imports to resolve
        stub = types.ModuleType(module)
        stub.__dict__.update(attrs)
        sys.modules.setdefault(module, stub)
    spec = importlib.util.spec_from_file_location("holitom_llava_arch", peers_dir / HOLITOM_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cls = module.LlavaMetaForCausalLM_holitom  # their methods never read self
    return cls.cluster_dpc_knn, cls.merge_tokens_by_clustering


def load_fastvid(peers_dir: Path) -> tuple[types.CodeType, types.CodeType, str]:
    """FastVID's outer block and its density step, compiled from its file's text."""
    path = peers_dir / FASTVID_FILE
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if FASTVID_START in line)
    stop = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == FASTVID_END)
    block = textwrap.dedent("\n".join(lines[start + 1 : stop]))
    first = next(i for i, line in enumerate(lines) if FASTVID_DENSITY[0] in line)
    last = next(i for i in range(first, len(lines)) if FASTVID_DENSITY[1] in lines[i])
    density = textwrap.dedent("\n".join(lines[first : last + 1]))
    where = f"{FASTVID_FILE} lines {start + 2}-{stop} (block), {first + 1}-{last + 1} (density)"
    return compile(block, str(path), "exec"), compile(density, str(path), "exec"), where


def run_fastvid_block(
    code: types.CodeType, tokens: torch.Tensor, scores: torch.Tensor, frames: int
):
    """FastVID's block with the model attributes it reads (its scripts' defaults, ratio 2%)."""
    n = tokens.shape[0]
    model = types.SimpleNamespace(
        video_token_len=n,
        frame_num=frames,
        video_start_idx=0,
        frame_attn_weights=scores,
        frame_global_features=tokens.view(frames, -1, tokens.shape[1]).mean(dim=1),
        fastvid_retention_ratio=0.02,
        fastvid_DySeg_c=8,
        fastvid_DySeg_tau=0.9,
        fastvid_STPrune_d=0.4,
        fastvid_DTM_p=4,
        fastvid_DTM_beta=0.6,
    )
    unit = torch.zeros(1, n, 1)
    scope = {
        "self": model,
        "torch": torch,
        "F": F,
        "hidden_states": tokens[None],
        "seq_length": n,
        "causal_mask": None,
        "position_embeddings": (unit, unit),
    }
    exec(code, scope)
    return scope["keep_indexs"]


def run_fastvid_density(code: types.CodeType, recycled: torch.Tensor, centres: int) -> torch.Tensor:
    scope = {
        "torch": torch,
        "token_filtered": recycled[None],
        "hidden_states_dim": recycled.shape[1],
        "device_type": recycled.device,
        "frame_context_num": centres,
    }
    exec(code, scope)
    return scope["sampled_indexs"][0]


def _rss_kib() -> tuple[int, int]:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0])


def measured(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(seconds, peak extra MiB over the RSS before the call, result)."""
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    before, _ = _rss_kib()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    _, peak = _rss_kib()
    return seconds, (peak - before) / 1024, result


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    sa, sb = set(a.tolist()), set(b.tolist())
    return len(sa & sb) / len(sa | sb)


def same_assignment(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of rows whose nearest centre is the same token under centre sets a and b."""

    def nearest(centres: torch.Tensor) -> torch.Tensor:
        labels = torch.cdist(x, x[centres]).argmin(dim=1)
        labels[centres] = torch.arange(centres.numel())
        return centres[labels]

    return float((nearest(a) == nearest(b)).float().mean())


def bench_length(frames: int, args: argparse.Namespace, peers: dict[str, Any]) -> dict[str, Any]:
    tokens, scores, index = synthetic_video(frames, args.dim, "cpu", torch.float32)
    n = tokens.shape[0]
    config = CompressionConfig(retention_ratio=0.02)
    capacity, _ = config.split_budget(n)
    pool = retention_pool(tokens, scores, capacity, config.tau)
    keep = torch.ones(n, dtype=torch.bool)
    keep[pool] = False
    recycled = tokens[keep]
    r = recycled.shape[0]
    centres = config.budget(n) - pool.numel()
    row: dict[str, Any] = {"frames": frames, "N": n, "R": r, "centres": centres, "skipped": []}
    peer_fits = 5 * 4 * r * r <= args.peer_memory_gib * 2**30

    cases: dict[str, Callable[[], Any]] = {
        "matmul": lambda: tokens @ tokens.T,
        "ours": lambda: compress(tokens, scores, index, config),
        "ours dpc": lambda: dpc_knn(recycled, centres, config.knn_k).centres,
    }
    if "holitom" in peers and peer_fits:
        knn, merge = peers["holitom"]

        def holitom() -> torch.Tensor:
            chosen, dist = knn(None, recycled[None], centres, k=7)
            merge(None, recycled[None], chosen, dist, centres, 0.6)
            return chosen[0]

        cases["holitom"] = holitom
    elif "holitom" in peers:
        row["skipped"].append("holitom")
    if "fastvid" in peers:
        block, density, _ = peers["fastvid"]
        cases["fastvid"] = lambda: run_fastvid_block(block, tokens, scores, frames)
        if peer_fits:
            cases["fastvid dpc"] = lambda: run_fastvid_density(density, recycled, centres)
        else:
            row["skipped"].append("fastvid dpc")

    times: dict[str, list[float]] = {name: [] for name in cases}
    peaks: dict[str, float] = {}
    results: dict[str, Any] = {}
    names = list(cases)
    for rep in range(args.repeat):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            seconds, peak, result = measured(cases[name])
            times[name].append(seconds)
            peaks[name] = max(peaks.get(name, 0.0), peak)
            results[name] = result
            print(f"  {frames} frames {name}: {seconds:.2f} s, +{peak:.0f} MiB", flush=True)
    row["median_s"] = {name: statistics.median(t) for name, t in times.items()}
    row["peak_mib"] = peaks

    # Agreement of the centres (on the same recycle set, same count), and of the assignments.
    ours = results["ours dpc"]
    exclude = dpc_knn(recycled, centres, config.knn_k, convention="exclude_self").centres
    agreement = {
        "ours exclude_self": (jaccard(ours, exclude), same_assignment(recycled, ours, exclude))
    }
    if "holitom" in results:
        theirs = results["holitom"]
        agreement["holitom"] = (jaccard(ours, theirs), same_assignment(recycled, ours, theirs))
        agreement["holitom vs exclude_self"] = (
            jaccard(exclude, theirs),
            same_assignment(recycled, exclude, theirs),
        )
    if "fastvid dpc" in results:
        ours4 = dpc_knn(recycled, centres, 4).centres  # FastVID's k
        theirs = results["fastvid dpc"]
        agreement["fastvid dpc (k=4)"] = (
            jaccard(ours4, theirs),
            same_assignment(recycled, ours4, theirs),
        )
    row["agreement"] = agreement
    return row


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| frames | N | R | method | median s | / matmul | / ours | peak extra MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        med = row["median_s"]
        for name, seconds in med.items():
            out.append(
                f"| {row['frames']} | {row['N']:,} | {row['R']:,} | {name} | {seconds:.2f} | "
                f"{seconds / med['matmul']:.2f} | {seconds / med['ours']:.2f} | "
                f"{row['peak_mib'][name]:.0f} |"
            )
        lead = f"| {row['frames']} | {row['N']:,} | {row['R']:,}"
        out += [f"{lead} | {name} | not run (memory) | | | |" for name in row["skipped"]]
    out += [
        "",
        "| frames | compared with ours (peers convention) | centre Jaccard | same assignment |",
        "|---|---|---|---|",
    ]
    for row in rows:
        for name, (jac, same) in row["agreement"].items():
            out.append(f"| {row['frames']} | {name} | {jac:.3f} | {same:.3f} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--dim", type=int, default=3584)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--peers-dir", type=Path, default=None)
    parser.add_argument("--peer-memory-gib", type=float, default=6.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)  # the peers' density noise
    peers: dict[str, Any] = {}
    if args.peers_dir is not None:
        peers["holitom"] = load_holitom(args.peers_dir)
        peers["fastvid"] = load_fastvid(args.peers_dir)
        print(f"FastVID code from {peers['fastvid'][2]}")
    rows = [bench_length(frames, args, peers) for frames in args.frames]
    print(
        f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, d = {args.dim}, {args.repeat} repetitions, "
        f"load average {os.getloadavg()[0]:.1f}, {TOKENS_PER_FRAME} tokens per frame\n"
    )
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
