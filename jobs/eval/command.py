"""`tokenreel eval DATA ...`: video QA benchmarks, swept over methods x ratios, or a preset
that lays out one of the paper's tables (`--preset table-s2`; `--list-presets`).

DATA: a directory holding benchmark folders named after the benchmarks (``MVBench``,
``EgoSchema``, ``MLVU``, ``LongVideoBench``, ``Video-MME``, ``ActivityNet-QA``; case, '-' and
'_' ignored), each in its published layout with its videos (see `jobs.eval.benchmarks`); or
name folders one by one with ``--benchmark NAME=PATH``. Token sets are indexed once per (video,
outer config) into the store + catalog and reused by later runs. Writes report.md, report.csv
(the table's layout), tasks.csv, scores.png, predictions.jsonl (and judgements.jsonl for
ActivityNet-QA) into --out, and prints the table.

ActivityNet-QA's answers are judged through an OpenAI-compatible endpoint (`--judge-url`,
`--judge-model`, the key in the variable named by `--judge-key-env`; see `jobs.eval.judge`).

Resumable: answers and verdicts are appended to --out as they are made; the same command again
continues where a killed run stopped and writes the same report. A different setting into the
same --out is refused (exit 2): give another --out.

Exit status: 0 on success; 2 on invalid arguments, annotations or a run mismatch; 3 when the
judge endpoint fails; 130 when interrupted (rerun to continue).
"""

from __future__ import annotations

import argparse
import csv
import sys
from typing import TYPE_CHECKING, Any

from compression.config import CompressionConfig, MergeConfig, default_merge_layer
from jobs.cli_options import add_model_and_sampling_options
from jobs.eval.benchmarks import BENCHMARKS, AnnotationError
from jobs.eval.judge import Judge, JudgeError, JudgeSettings
from jobs.eval.sweep import PAPER_RATIOS, SWEEP_METHODS
from storage.command_options import add_store_options

if TYPE_CHECKING:
    from jobs.eval.presets import Preset

# Options that define a sweep themselves: they do not combine with a preset.
SWEEP_OPTIONS = {
    "methods": "--methods",
    "ratios": "--ratios",
    "merge_layer": "--merge-layer",
    "keep_ratio": "--keep-ratio",
    "merge_schedule": "--merge-schedule",
    "lam": "--lam",
    "fastv_layer": "--fastv-layer",
}


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
    judge = JudgeSettings()
    add = parser.add_argument
    add("data", metavar="DATA", nargs="?", help="directory holding the benchmark folders")
    add(
        "--preset",
        default=None,
        metavar="NAME",
        help="lay out one of the paper's tables (table-s1 .. table-s8, fig-s1; --list-presets; "
        "default: none, sweep --methods x --ratios)",
    )
    add("--list-presets", action="store_true", help="list the presets and exit")
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
        help="comma-separated subset of the benchmarks found under DATA (or of the preset's; "
        "default: all)",
    )
    add(
        "--limit",
        type=int,
        default=None,
        help="first N questions per benchmark (a smoke run; default: all)",
    )
    add(
        "--methods",
        type=lambda t: _names(t, SWEEP_METHODS, "methods"),
        default=None,
        help=f"comma-separated, from {','.join(SWEEP_METHODS)} (default: all)",
    )
    add(
        "--ratios",
        type=_ratios,
        default=None,
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
    add("--keep-ratio", type=float, default=None, help="R, kept at layer K by ours (default 0.5)")
    add(
        "--merge-schedule",
        type=_schedule,
        default=None,
        metavar="K:R,K:R,...",
        help="ours merges at each layer K in turn, keeping R of the visual tokens that reach it "
        "(Fig. S1), instead of --merge-layer/--keep-ratio; e.g. 8:0.5,16:0.5 (default: one step)",
    )
    add("--lam", type=float, default=None, help="lambda of the text-aware score (default 0.5)")
    add(
        "--fastv-layer",
        type=int,
        default=None,
        help="FastV's K (default: its own 2 of 28 layers, scaled to the model's depth)",
    )
    add("--batch-size", type=int, default=1, help="questions per forward (default 1, as the paper)")
    add(
        "--max-new-tokens",
        type=int,
        default=None,
        help="answer length for every benchmark (default: lmms-eval's per benchmark)",
    )
    add("--decode-timeout", type=float, default=300.0, help="seconds per video decode (300)")
    add_store_options(parser)
    add("--out", default="eval-report", help="report directory (default ./eval-report)")
    add("--judge-url", default=judge.url, help=f"OpenAI-compatible base URL ({judge.url})")
    add("--judge-model", default=judge.model, help=f"judge model ({judge.model}, as the paper)")
    add(
        "--judge-key-env",
        default=judge.key_env,
        metavar="VAR",
        help=f"environment variable holding the judge's API key ({judge.key_env})",
    )
    add(
        "--judge-concurrency",
        type=int,
        default=judge.concurrency,
        help=f"judge requests in flight ({judge.concurrency})",
    )
    add(
        "--judge-attempts",
        type=int,
        default=judge.max_attempts,
        help=f"requests per answer before giving up ({judge.max_attempts})",
    )


def _benchmark_dirs(args: argparse.Namespace, allowed: tuple[str, ...]) -> dict[str, str]:
    """The benchmark folders to run, among `allowed` (a preset's benchmarks, or all)."""
    from jobs.eval.benchmarks import discover_benchmarks

    wanted = [b for b in allowed if args.benchmarks is None or b in args.benchmarks]
    if not wanted:
        raise ValueError(f"--benchmarks {args.benchmarks} has none of {list(allowed)}")
    dirs: dict[str, str] = {}
    if args.data:
        found = discover_benchmarks(args.data)
        dirs.update({name: str(path) for name, path in found.items() if name in wanted})
    for spec in args.benchmark:
        name, sep, path = spec.partition("=")
        if not sep or name not in BENCHMARKS or not path:
            raise ValueError(f"--benchmark wants NAME=PATH with NAME in {BENCHMARKS}, got {spec!r}")
        if name not in allowed:
            raise ValueError(f"--benchmark {name}: not among this run's benchmarks {list(allowed)}")
        dirs[name] = path
    if not dirs:
        raise ValueError(
            f"no benchmark folder found for {wanted}: give DATA with benchmark folders in it, "
            "or --benchmark NAME=PATH"
        )
    return {name: dirs[name] for name in BENCHMARKS if name in dirs}


def _ours(args: argparse.Namespace, num_layers: int) -> MergeConfig:
    """Ours' in-LLM merge from the options: a schedule, or one step at K (default scaled from
    18) keeping R (default 0.5)."""
    lam = 0.5 if args.lam is None else args.lam
    if args.merge_schedule is not None:
        if args.merge_layer is not None or args.keep_ratio is not None:
            raise ValueError("give --merge-schedule or --merge-layer/--keep-ratio, not both")
        return MergeConfig.from_schedule(args.merge_schedule, lam=lam)
    layer = args.merge_layer
    if layer is None:
        layer = default_merge_layer(num_layers)
    elif not 0 < layer < num_layers:
        raise ValueError(f"--merge-layer must lie in [1, {num_layers - 1}] for this model")
    keep_ratio = 0.5 if args.keep_ratio is None else args.keep_ratio
    return MergeConfig("text_aware", layer, keep_ratio, lam)


def _judge_settings(args: argparse.Namespace) -> JudgeSettings:
    return JudgeSettings(
        url=args.judge_url,
        model=args.judge_model,
        key_env=args.judge_key_env,
        concurrency=args.judge_concurrency,
        max_attempts=args.judge_attempts,
    )


def run(args: argparse.Namespace) -> int:
    from jobs.eval.presets import get_preset, list_presets

    if args.list_presets:
        print(list_presets())
        return 0
    import torch

    from compression.models import load_video_llm, model_frame_size, model_name
    from jobs.eval.benchmarks import load_benchmark
    from jobs.eval.evaluate import EvalSettings, run_evaluation
    from jobs.eval.sweep import build_sweep
    from storage import open_store

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    judge = None
    try:
        preset = get_preset(args.preset) if args.preset else None
        if preset is not None:
            given = [
                flag for name, flag in SWEEP_OPTIONS.items() if getattr(args, name) is not None
            ]
            if given:
                raise ValueError(f"{', '.join(given)} do not combine with --preset (it sets them)")
        allowed = preset.benchmarks if preset else BENCHMARKS
        benchmarks = [
            load_benchmark(name, path, limit=args.limit)
            for name, path in _benchmark_dirs(args, allowed).items()
        ]
        if any(b.open_ended for b in benchmarks):
            judge = Judge(_judge_settings(args))
            if not judge.has_key and args.judge_url == JudgeSettings().url:
                raise ValueError(
                    f"ActivityNet-QA is judged through {args.judge_url}: set "
                    f"{args.judge_key_env} to its API key, or give --judge-url of another endpoint"
                )
        model = model_name(args.model)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        store = open_store(args.store, args.catalog)
        base = CompressionConfig(
            tau=args.tau,
            cluster_ratio=args.cluster_ratio,
            knn_k=args.knn_k,
            dpc_knn_convention=args.dpc_knn_convention,
            seed=args.seed,
            frames=args.frames,
        )
        settings = EvalSettings(
            frame_size=args.frame_size if args.frame_size else model_frame_size(model),
            decode_timeout_s=args.decode_timeout,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
        )
        progress(f"loading {model} on {device}")
        llm = load_video_llm(model, device=device)
        layout: dict[str, Any] = {}
        if preset is not None:
            entries = preset.entries(base, llm.num_layers)
            layout = {
                "title": f"{preset.title} ({llm.model_id})",
                "setting_header": preset.setting_header,
                "plot_x_label": preset.plot_x_label,
                "notes": [_preset_note(preset, llm.family, llm.num_layers)],
            }
        else:
            entries = build_sweep(
                args.methods or list(SWEEP_METHODS),
                args.ratios or list(PAPER_RATIOS),
                base=base,
                num_layers=llm.num_layers,
                ours=_ours(args, llm.num_layers),
                fastv_layer=args.fastv_layer,
            )
        result = run_evaluation(
            benchmarks,
            llm,
            entries,
            settings,
            store=store,
            out_dir=args.out,
            progress=progress,
            judge=judge,
            **layout,
        )
    except (ValueError, AnnotationError, FileNotFoundError) as exc:
        print(f"tokenreel eval: {exc}", file=sys.stderr)
        return 2
    except JudgeError as exc:
        print(f"tokenreel eval: {exc}; rerun to continue judging", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("tokenreel eval: interrupted; rerun to continue where it stopped", file=sys.stderr)
        return 130
    finally:
        if judge is not None:
            judge.close()
    with result.paths["csv"].open(newline="", encoding="utf-8") as table:
        print("\n".join("\t".join(row) for row in csv.reader(table)))
    for name, path in result.paths.items():
        print(f"{name}: {path}")
    return 0


def _preset_note(preset: Preset, family: str, num_layers: int) -> str:
    note = f"preset {preset.name}: {preset.description} (paper's model: {preset.paper_model})"
    if family != preset.family:
        note += f"; this run's model is a {family} model, not the table's"
    if num_layers != 28:
        note += f"; K given on 28 layers, scaled to this model's {num_layers}"
    return note
