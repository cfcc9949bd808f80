"""`tokenreel eval DATA ...`: multiple-choice video QA benchmarks, swept over methods x ratios.

DATA: a directory holding benchmark folders named after the benchmarks (``MVBench``,
``EgoSchema``, ``MLVU``, ``LongVideoBench``, ``Video-MME``; case, '-' and '_' ignored), each in
its published layout with its videos (see `jobs.benchmarks`); or name folders one by one with
``--benchmark NAME=PATH``. Token sets are indexed once per (video, outer method, ratio) into
the store + catalog and reused by later runs. Writes report.md, report.csv (Table S2's layout),
tasks.csv, predictions.jsonl and score_vs_retention.png into --out, and prints the table.

Exit status: 0 on success; 2 on invalid arguments or annotations; 130 when interrupted (rerun:
token sets indexed so far are reused).
"""

from __future__ import annotations

import argparse
import sys

from compression.config import CompressionConfig, MergeConfig, default_merge_layer
from jobs.cli_options import add_model_and_sampling_options
from jobs.eval.benchmarks import BENCHMARKS, AnnotationError
from jobs.eval.evaluate import MAX_NEW_TOKENS, PAPER_RATIOS, SWEEP_METHODS


def _names(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {unknown}; choose from {allowed}")
    return names


def _ratios(text: str) -> list[float]:
    try:
        ratios = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratios must be numbers, got {text!r}") from None
    if not ratios or any(not 0 < r <= 1 for r in ratios):
        raise argparse.ArgumentTypeError(f"ratios must lie in (0, 1], got {text!r}")
    return ratios


def _schedule(text: str) -> list[tuple[int, float]]:
    """The (layer K, keep ratio R) steps of "8:0.5,16:0.5", checked as a `MergeConfig` schedule."""
    steps = []
    for part in (p.strip() for p in text.split(",")):
        layer, sep, ratio = part.partition(":")
        try:
            steps.append((int(layer), float(ratio)))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"a merge schedule is K:R steps such as 8:0.5,16:0.5, got {text!r}"
            ) from None
        if not sep:
            raise argparse.ArgumentTypeError(f"each schedule step is K:R, got {part!r}")
    try:
        MergeConfig.from_schedule(steps)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return steps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = CompressionConfig()
    add = parser.add_argument
    add("data", metavar="DATA", nargs="?", help="directory holding the benchmark folders")
    add(
        "--benchmark",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help=f"a benchmark folder by name ({', '.join(BENCHMARKS)}); repeatable",
    )
    add(
        "--benchmarks",
        type=lambda t: _names(t, BENCHMARKS, "benchmarks"),
        default=None,
        help="comma-separated subset of the benchmarks found under DATA",
    )
    add("--limit", type=int, default=None, help="first N questions per benchmark (a smoke run)")
    add(
        "--methods",
        type=lambda t: _names(t, SWEEP_METHODS, "methods"),
        default=list(SWEEP_METHODS),
        help=f"comma-separated, from {','.join(SWEEP_METHODS)}",
    )
    add(
        "--ratios",
        type=_ratios,
        default=list(PAPER_RATIOS),
        help="comma-separated retention ratios (default 0.15,0.1,0.05,0.02,0.01)",
    )
    add_model_and_sampling_options(parser)
    add("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add("--seed", type=int, default=defaults.seed, help="seed of the random baseline")
    add(
        "--merge-layer",
        type=int,
        default=None,
        help="K (default: 18 of 28 layers, scaled to the model's depth)",
    )
    add("--keep-ratio", type=float, default=None, help="R, kept at layer K by ours (0.5)")
    add(
        "--merge-schedule",
        type=_schedule,
        default=None,
        metavar="K:R,K:R,...",
        help="ours merges at each layer K in turn, keeping R of the visual tokens that reach it "
        "(Fig. S1), instead of --merge-layer/--keep-ratio; e.g. 8:0.5,16:0.5",
    )
    add("--lam", type=float, default=0.5, help="lambda of the text-aware score (0.5)")
    add(
        "--fastv-layer",
        type=int,
        default=None,
        help="FastV's K (default: its own 2 of 28 layers, scaled to the model's depth)",
    )
    add("--batch-size", type=int, default=1, help="questions per forward (default 1, as the paper)")
    add("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    add("--decode-timeout", type=float, default=300.0, help="seconds per video decode (300)")
    add("--store", default=None, help="store URL (env TOKENREEL_STORE_URL; ./tokenreel-data)")
    add("--catalog", default=None, help="catalog URL (env TOKENREEL_CATALOG_URL)")
    add("--out", default="eval-report", help="report directory (default ./eval-report)")


def _benchmark_dirs(args: argparse.Namespace) -> dict[str, str]:
    from jobs.eval.benchmarks import discover_benchmarks

    dirs: dict[str, str] = {}
    if args.data:
        dirs.update({name: str(path) for name, path in discover_benchmarks(args.data).items()})
        if args.benchmarks:
            dirs = {name: path for name, path in dirs.items() if name in args.benchmarks}
    for spec in args.benchmark:
        name, sep, path = spec.partition("=")
        if not sep or name not in BENCHMARKS or not path:
            raise ValueError(f"--benchmark wants NAME=PATH with NAME in {BENCHMARKS}, got {spec!r}")
        dirs[name] = path
    if not dirs:
        raise ValueError(
            "no benchmark folder found: give DATA with benchmark folders in it, "
            "or --benchmark NAME=PATH"
        )
    return {name: dirs[name] for name in BENCHMARKS if name in dirs}


def _ours(args: argparse.Namespace, num_layers: int) -> MergeConfig:
    """Ours' in-LLM merge from the options: a schedule, or one step at K (default scaled from
    18) keeping R (default 0.5)."""
    if args.merge_schedule is not None:
        if args.merge_layer is not None or args.keep_ratio is not None:
            raise ValueError("give --merge-schedule or --merge-layer/--keep-ratio, not both")
        return MergeConfig.from_schedule(args.merge_schedule, lam=args.lam)
    layer = args.merge_layer
    if layer is None:
        layer = default_merge_layer(num_layers)
    elif not 0 < layer < num_layers:
        raise ValueError(f"--merge-layer must lie in [1, {num_layers - 1}] for this model")
    keep_ratio = 0.5 if args.keep_ratio is None else args.keep_ratio
    return MergeConfig("text_aware", layer, keep_ratio, args.lam)


def run(args: argparse.Namespace) -> int:
    import torch

    from compression.models import load_video_llm, model_frame_size, model_name
    from jobs.eval.benchmarks import load_benchmark
    from jobs.eval.evaluate import EvalSettings, build_sweep, run_evaluation
    from storage import open_store

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        benchmarks = [
            load_benchmark(name, path, limit=args.limit)
            for name, path in _benchmark_dirs(args).items()
        ]
        model = model_name(args.model)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        store = open_store(args.store, args.catalog)
        base = CompressionConfig(
            tau=args.tau, cluster_ratio=args.cluster_ratio, knn_k=args.knn_k, seed=args.seed
        )
        settings = EvalSettings(
            frames=args.frames,
            frame_size=args.frame_size if args.frame_size else model_frame_size(model),
            decode_timeout_s=args.decode_timeout,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
        )
        progress(f"loading {model} on {device}")
        llm = load_video_llm(model, device=device)
        entries = build_sweep(
            args.methods,
            args.ratios,
            base=base,
            num_layers=llm.num_layers,
            ours=_ours(args, llm.num_layers),
            fastv_layer=args.fastv_layer,
        )
        result = run_evaluation(
            benchmarks, llm, entries, settings, store=store, out_dir=args.out, progress=progress
        )
    except (ValueError, AnnotationError, FileNotFoundError) as exc:
        print(f"tokenreel eval: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "tokenreel eval: interrupted; rerun to reuse the token sets indexed so far",
            file=sys.stderr,
        )
        return 130
    from jobs.eval.report import table_rows

    cells = table_rows(result.rows, [b.display_name for b in benchmarks])
    print("\n".join("\t".join(row) for row in cells))
    for name, path in result.paths.items():
        print(f"{name}: {path}")
    return 0
