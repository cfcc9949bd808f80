"""Presets: the rows, columns and benchmarks of each table of the paper's supplement, for
``tokenreel eval DATA --preset NAME`` (``--list-presets`` lists them).

A preset fixes what its table sweeps (methods, ratios, and K, tau, cluster ratio, lambda,
frames or a merge grid) and its benchmarks; the other options still apply: ``--benchmarks``
narrows the benchmarks, ``--limit``, ``--model``, ``--store``, ``--batch-size`` work as usual,
and ``--tau``, ``--cluster-ratio``, ``--knn-k``, ``--frames`` and ``--seed`` set the outer
settings a preset does not sweep (the paper's defaults unless given). The options that define a
sweep themselves (``--methods``, ``--ratios``, ``--merge-layer``, ``--keep-ratio``,
``--merge-schedule``, ``--lam``, ``--fastv-layer``) do not combine with a preset.

Token sets are keyed by their outer config (method, ratio, tau, cluster ratio, k, frames, frame
size), so rows that differ only inside the LLM (K, lambda, R, FastV over the full set, Ours and
Ours w/o M) share theirs, a sweep over K or lambda indexes nothing beyond the one set per video
its rows share, and presets run one after another into one store reuse each other's sets
(Table S6's tau = 0.7 row and Table S7's ratio 0.3 row are Table S2's "Ours (w/o M)" at 2%).

Which rows are which, read off the supplement: Table S5's K = 18 row, Table S8's lambda = 0.5
row and Table S2's "Ours 2%/1%" row hold the same numbers, so Tables S5 and S8 vary Ours with
its in-LLM merge at 2%; Table S6's tau = 0.7 row and Table S7's ratio 0.3 row hold Table S2's
"Ours (w/o M) 2%" numbers, so Tables S6 and S7 vary the outer stage alone at 2%.

K is given on the paper's 28-layer LLM and scaled to the model's depth
(`compression.config.scaled_layer`); the setting column shows "21→3" when a smaller model moves
it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from compression.config import CompressionConfig, MergeConfig, default_merge_layer, scaled_layer
from jobs.eval.sweep import (
    SweepEntry,
    build_sweep,
    check_unique_keys,
    outer_config,
    percent,
)

MULTIPLE_CHOICE = ("mvbench", "egoschema", "mlvu", "longvideobench", "videomme")
TABLE_RATIO = 0.02  # the ablations' retention (Tables S4-S8, Fig. S1)
LAYERS_28 = (2, 7, 14, 18, 21)  # Table S5's K


@dataclass(frozen=True)
class Preset:
    """One table: `rows(base, num_layers)` builds its sweep rows (the function's docstring says
    what the paper's table holds and where the preset departs from it)."""

    name: str
    rows: Callable[[CompressionConfig, int], list[SweepEntry]]
    benchmarks: tuple[str, ...]
    paper_model: str
    family: str
    setting_header: str = "Retention Ratio"
    plot_x_label: str | None = None

    @property
    def title(self) -> str:
        return (self.rows.__doc__ or self.name).strip().splitlines()[0]

    @property
    def description(self) -> str:
        return " ".join((self.rows.__doc__ or "").split())

    def entries(self, base: CompressionConfig, num_layers: int) -> list[SweepEntry]:
        entries = self.rows(base, num_layers)
        check_unique_keys(entries)
        return entries


def _vanilla(base: CompressionConfig, setting: str | None = "-") -> SweepEntry:
    [full] = build_sweep(["full"], [], base=base)
    return dataclasses.replace(full, setting=setting)


def _ours_merge(
    num_layers: int, *, layer_28: int | None = None, keep: float = 0.5, lam: float = 0.5
) -> MergeConfig:
    layer = (
        default_merge_layer(num_layers) if layer_28 is None else scaled_layer(layer_28, num_layers)
    )
    return MergeConfig("text_aware", layer, keep, lam)


def _layer_text(layer_28: int, num_layers: int) -> str:
    scaled = scaled_layer(layer_28, num_layers)
    return str(layer_28) if scaled == layer_28 else f"{layer_28}→{scaled}"


def table_s1(base: CompressionConfig, num_layers: int) -> list[SweepEntry]:
    """Table S1: Qwen2.5-VL-7B at 2% and 1% retention.

    The paper's rows: Qwen2.5-VL (100%); at 2% and at 1%: VisionZip, FastVID, Ours (w/o M), Ours;
    columns MVBench, EgoSchema, MLVU, LongVideoBench, VideoMME, Avg., %. The paper labels Ours
    "2%"/"1%"; it runs with its in-LLM merge here and is labelled "2%/1%"/"1%/0.5%", as in
    Table S2. Run it with a Qwen2.5-VL model (--model).
    """
    return build_sweep(
        ["full", "visionzip", "fastvid", "ours_no_merge", "ours"],
        [0.02, 0.01],
        base=base,
        num_layers=num_layers,
    )


def table_s2(base: CompressionConfig, num_layers: int) -> list[SweepEntry]:
    """Table S2: LLaVA-OV-7B from 15% to 1% retention against the baselines.

    The paper's rows: LLaVA-OV-7B (100%); at 15%: VisionZip, DyToK, FastVID, HoliTom, Ours; at
    10%, 5%, 2% and 1%: FastV (100%/r), VisionZip, LLaVA-Scissor (10% and 5% only), DyToK,
    FastVID, HoliTom (r/(r/2)), Ours (w/o M), Ours (r/(r/2)); five benchmarks, Avg., %.
    Departures: DyToK and LLaVA-Scissor are not implemented and their rows are left out;
    VisionZip is our VisionZip-style outer stage on the same tokens.
    """
    high = build_sweep(
        ["full", "visionzip", "fastvid", "holitom", "ours"],
        [0.15],
        base=base,
        num_layers=num_layers,
    )
    rest = build_sweep(
        ["fastv", "visionzip", "fastvid", "holitom", "ours_no_merge", "ours"],
        [0.10, 0.05, 0.02, 0.01],
        base=base,
        num_layers=num_layers,
    )
    return high + rest


def table_s3(base: CompressionConfig, num_layers: int) -> list[SweepEntry]:
    """Table S3: ActivityNet-QA (open-ended, judged) at 2% retention.

    The paper's rows: LLaVA-OV-7B (100%), + VisionZip, + FastVid, + HoliTom, + Ours, all
    labelled 2%; columns Accuracy and Score (GPT-3.5-Turbo as judge). HoliTom and Ours run their
    in-LLM stages as in Table S2 and are labelled 2%/1%.
    """
    return build_sweep(
        ["full", "visionzip", "fastvid", "holitom", "ours"],
        [TABLE_RATIO],
        base=base,
        num_layers=num_layers,
    )


def table_s4(base: CompressionConfig, num_layers: int) -> list[SweepEntry]:
    """Table S4: 64, 96 and 128 frames at 2% retention, HoliTom against Ours.

    The paper's rows: Vanilla at 16 frames; HoliTom and Ours at 64, 96 and 128 frames; five
    benchmarks and Avg. (no % column in the paper). The table says only "2% token retention":
    HoliTom and Ours run their in-LLM stages as in Table S2's 2% rows (2%/1%).
    """
    entries = [_vanilla(dataclasses.replace(base, frames=16), "16")]
    for frames in (64, 96, 128):
        sampled = dataclasses.replace(base, frames=frames)
        for entry in build_sweep(
            ["holitom", "ours"], [TABLE_RATIO], base=sampled, num_layers=num_layers
        ):
            entries.append(
                dataclasses.replace(
                    entry, variant=f"frames={frames}", setting=str(frames), x=float(frames)
                )
            )
    return entries


def table_s5(base: CompressionConfig, num_layers: int) -> list[SweepEntry]:
    """Table S5: the merge layer K of Ours (2%/1%).

    The paper's rows: Vanilla; Ours with K = 2, 7, 14, 18, 21 (of 28 layers), R = 50%,
    lambda = 0.5; five benchmarks, Avg., %. All rows share one token set per video.
    """
    outer = outer_config(base, "ours", TABLE_RATIO)
    return [_vanilla(base)] + [
        SweepEntry(
            "ours",
            TABLE_RATIO,
            outer,
            _ours_merge(num_layers, layer_28=k),
            variant=f"K={k}",
            setting=_layer_text(k, num_layers),
            x=float(k),
        )
        for k in LAYERS_28
    ]


def table_s6(base: CompressionConfig, num_layers: int) -> list[SweepEntry]:
    """Table S6: the retention pool's similarity threshold tau (Ours w/o M, 2%).

    The paper's rows: Vanilla; Ours with tau = 0.5, 0.6, 0.7, 0.8, 0.9 (its tau = 0.7 row is
    Table S2's Ours (w/o M) at 2%, so no in-LLM merge); five benchmarks, Avg., %. Each tau is
    its own outer config: only those are indexed.
    """
    return [_vanilla(base)] + [
        SweepEntry(
            "ours_no_merge",
            TABLE_RATIO,
            outer_config(dataclasses.replace(base, tau=tau), "ours", TABLE_RATIO),
            MergeConfig(method="none"),
            variant=f"tau={tau:g}",
            setting=f"{tau:g}",
            x=tau,
        )
        for tau in (0.5, 0.6, 0.7, 0.8, 0.9)
    ]


def table_s7(base: CompressionConfig, num_layers: int) -> list[SweepEntry]:
    """Table S7: the cluster ratio c (Ours w/o M, 2%).

    The paper's rows: Vanilla; Ours with cluster ratio 0.1 to 0.7 in steps of 0.1 (its 0.3 row
    is Table S2's Ours (w/o M) at 2%, so no in-LLM merge); five benchmarks, Avg., %.
    """
    ratios = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    return [_vanilla(base)] + [
        SweepEntry(
            "ours_no_merge",
            TABLE_RATIO,
            outer_config(dataclasses.replace(base, cluster_ratio=c), "ours", TABLE_RATIO),
            MergeConfig(method="none"),
            variant=f"c={c:g}",
            setting=f"{c:g}",
            x=c,
        )
        for c in ratios
    ]


def table_s8(base: CompressionConfig, num_layers: int) -> list[SweepEntry]:
    """Table S8: lambda of the text-aware score (Ours 2%/1%).

    The paper's rows: Vanilla; Ours with lambda = 0, 0.25, 0.5, 0.75, 1 (K = 18, R = 50%);
    five benchmarks, Avg., %. All rows share one token set per video.
    """
    outer = outer_config(base, "ours", TABLE_RATIO)
    return [_vanilla(base)] + [
        SweepEntry(
            "ours",
            TABLE_RATIO,
            outer,
            _ours_merge(num_layers, lam=lam),
            variant=f"lam={lam:g}",
            setting=f"{lam:g}",
            x=lam,
        )
        for lam in (0.0, 0.25, 0.5, 0.75, 1.0)
    ]


def fig_s1(base: CompressionConfig, num_layers: int) -> list[SweepEntry]:
    """Fig. S1: pruning ratios at different layers (Ours at 2%, one merge step).

    The figure plots performance for different in-LLM pruning ratios at different layers; its
    values and exact grid are not in the supplement's text. The preset runs Ours at 2% with one
    merge step at K = 2, 7, 14, 18, 21 (Table S5's layers, of 28) pruning 25%, 50% or 75% of the
    visual tokens (R = 75%, 50%, 25%), lambda = 0.5, plus Vanilla; the FLOPs columns give the
    cost side. All rows share one token set per video. Other layer schedules: --merge-schedule.
    """
    outer = outer_config(base, "ours", TABLE_RATIO)
    entries = [_vanilla(base)]
    for keep in (0.75, 0.5, 0.25):
        pruned = percent(1 - keep)
        for k in LAYERS_28:
            merge = _ours_merge(num_layers, layer_28=k, keep=keep)
            entries.append(
                SweepEntry(
                    "ours",
                    TABLE_RATIO,
                    outer,
                    merge,
                    variant=f"K={k},R={keep:g}",
                    setting=f"{_layer_text(k, num_layers)} / {pruned}",
                    x=float(k),
                    series=f"pruning {pruned}",
                )
            )
    return entries


_LLAVA_OV = ("LLaVA-OV-7B", "llava_onevision")
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("table-s1", table_s1, MULTIPLE_CHOICE, "Qwen2.5-VL-7B", "qwen2_5_vl"),
        Preset("table-s2", table_s2, MULTIPLE_CHOICE, *_LLAVA_OV),
        Preset("table-s3", table_s3, ("activitynetqa",), *_LLAVA_OV),
        Preset("table-s4", table_s4, MULTIPLE_CHOICE, *_LLAVA_OV, "Frames", "frames per video"),
        Preset("table-s5", table_s5, MULTIPLE_CHOICE, *_LLAVA_OV, "K", "merge layer K (of 28)"),
        Preset("table-s6", table_s6, MULTIPLE_CHOICE, *_LLAVA_OV, "τ", "tau"),
        Preset("table-s7", table_s7, MULTIPLE_CHOICE, *_LLAVA_OV, "Ratio", "cluster ratio"),
        Preset("table-s8", table_s8, MULTIPLE_CHOICE, *_LLAVA_OV, "λ", "lambda"),
        Preset(
            "fig-s1", fig_s1, MULTIPLE_CHOICE, *_LLAVA_OV, "K / pruned", "merge layer K (of 28)"
        ),
    )
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; one of {', '.join(PRESETS)}")
    return PRESETS[name]


def list_presets() -> str:
    """One line per preset: name, title, benchmarks, the paper's model."""
    return "\n".join(
        f"{p.name:<10} {p.title} [{', '.join(p.benchmarks)}; paper: {p.paper_model}]"
        for p in PRESETS.values()
    )
