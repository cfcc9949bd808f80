"""The rows of an evaluation: which token sets, which in-LLM merge, how each row is labelled.

Sweep rows (labels as in the paper's Table S2; r = retention ratio, R = the in-LLM keep ratio;
K scaled to the model's depth by `compression.default_merge_layer`, given here for 28 layers):

| method          | outer stage (token set)          | in the LLM (MergeConfig)         | label    |
|-----------------|----------------------------------|----------------------------------|----------|
| full            | all tokens                       | none                             | 100%     |
| ours            | ours at r                        | text_aware at K = 18, keeps R    | r/(rR)   |
|                 |                                  | (or a schedule: one share a step)| r/.../.. |
| ours_no_merge   | ours at r (same sets as "ours")  | none                             | r        |
| ours_no_cluster | retention pool only at r         | none                             | r        |
| fastv           | all tokens (same sets as "full") | fastv at its K = 2, keeps r      | 100%/r   |
| holitom         | HoliTom's outer stage at r       | holitom at K = 18, keeps 50%     | r/(r/2)  |
| fastvid         | FastVID's outer stage at r       | none (FastVID has no inner stage)| r        |
| visionzip       | VisionZip-style at r             | none                             | r        |
| uniform, random | the baseline at r                | none                             | r        |

Decisions the docs leave open:

* "Ours w/o cluster" runs without the in-LLM merge, so it pairs with "Ours (w/o M)" and isolates
  what the cluster refill adds.
* K of every inner method is `compression.default_merge_layer(L, method)`: its published K of
  28 layers at the same relative depth, round(K_28 L / 28) within [1, L - 1] (ours 18, HoliTom
  18, FastV 2 on the 28-layer 7B models; 3, 3 and 1 on a 4-layer test model, which keeps a
  merge layer instead of silently skipping it). FastV runs at its OWN K (its "after layer 2",
  the setting of Table S2's FastV rows), not at ours: at K = 18 a FastV row costs 65-68% of the
  full model's FLOPs (Eq. S3, LLaVA-OV-7B, r = 1%..10%), at K = 2 9-16%. A preset's K of 28
  layers (Table S5, Fig. S1) is scaled by the same rule (`compression.config.scaled_layer`).
* HoliTom is its two stages with HoliTom's own defaults: the outer `holitom` token set at r, and
  the inner `holitom` merge at its K keeping 50% (its LLaVA-OV-7B scripts: HOLITOM_k=18,
  HOLITOM_r=0.5), labelled r/(r/2) as in Table S2. `--merge-layer`, `--keep-ratio`, `--lam` and
  `--merge-schedule` set ours only; `--fastv-layer` moves FastV's K.
* A merge schedule (Fig. S1) replaces ours' single step; its label lists the share of the video's
  tokens left after each step (keep ratios compose relatively, see `MergeConfig`).
* Every outer config carries the row's frame sampling (`CompressionConfig.frames`), so rows
  sampled at 64 and 128 frames (Table S4) index and key their own token sets.
* A row's `key` names it in the predictions and must be unique in a sweep: method@ratio, plus
  the preset's variant ("K=18", "tau=0.5") when a preset sweeps something else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from compression.config import PAPER_LAYERS, CompressionConfig, MergeConfig, default_merge_layer

SWEEP_METHODS: tuple[str, ...] = (
    "full",
    "fastv",
    "visionzip",
    "uniform",
    "random",
    "fastvid",
    "holitom",
    "ours_no_cluster",
    "ours_no_merge",
    "ours",
)
METHOD_LABELS: dict[str, str] = {
    "full": "Vanilla",
    "fastv": "FastV",
    "visionzip": "VisionZip-style",
    "uniform": "Uniform",
    "random": "Random",
    "fastvid": "FastVID",
    "holitom": "HoliTom",
    "ours_no_cluster": "Ours (w/o C)",
    "ours_no_merge": "Ours (w/o M)",
    "ours": "Ours",
}
# Outer-stage method of each sweep method (CompressionConfig.method).
_OUTER_METHOD: dict[str, str] = {
    "full": "full",
    "fastv": "full",
    "visionzip": "visionzip",
    "uniform": "uniform",
    "random": "random",
    "fastvid": "fastvid",
    "holitom": "holitom",
    "ours_no_cluster": "ours_no_cluster",
    "ours_no_merge": "ours",
    "ours": "ours",
}
HOLITOM_KEEP_RATIO = 0.5  # HoliTom's HOLITOM_r: half the visual tokens pruned (merged) at K
PAPER_RATIOS: tuple[float, ...] = (0.15, 0.10, 0.05, 0.02, 0.01)


def percent(ratio: float) -> str:
    """0.02 -> "2%", 0.075 -> "7.5%", 0.005 -> "0.5%"."""
    return f"{100 * ratio:.6g}%"


@dataclass(frozen=True)
class SweepEntry:
    """One row of the table: which token sets, which in-LLM merge, how it is labelled.

    variant: what else than method and ratio tells this row apart (a preset's swept setting,
        e.g. "K=18"); part of `key`. setting: the text of the table's second column when a
        preset sweeps something other than the retention ratio (default: `retention`).
    x / series: where the report's plot puts the row (default: at its ratio, on its method's
        line); x None leaves the row out of the lines (the full model is drawn as a level).
    """

    method: str
    ratio: float  # r; 1.0 for "full"
    outer: CompressionConfig
    merge: MergeConfig
    variant: str = ""
    setting: str | None = None
    x: float | None = None
    series: str | None = None

    @property
    def label(self) -> str:
        return METHOD_LABELS[self.method]

    @property
    def retention(self) -> str:
        """The share of the video's tokens entering the LLM, then left after each merge step:
        "2%/1%", FastV's "100%/2%", a two-step schedule's "2%/1%/0.5%"."""
        shares = [1.0 if self.outer.method == "full" else self.ratio]
        if self.merge.active:
            for _, keep_ratio in self.merge.schedule:
                shares.append(shares[-1] * keep_ratio)
        return "/".join(percent(share) for share in shares)

    @property
    def key(self) -> str:
        base = f"{self.method}@{self.ratio:g}"
        return f"{base}[{self.variant}]" if self.variant else base

    def identity(self) -> dict[str, Any]:
        """Everything that decides this row's answers (for a run's identity)."""
        return {
            "key": self.key,
            "outer": self.outer.to_dict(),
            "merge": {
                "method": self.merge.method,
                "schedule": [list(step) for step in self.merge.schedule],
                "lam": self.merge.lam,
            },
        }


def build_sweep(
    methods: Sequence[str],
    ratios: Sequence[float],
    *,
    base: CompressionConfig = CompressionConfig(),
    num_layers: int = PAPER_LAYERS,
    ours: MergeConfig | None = None,
    fastv_layer: int | None = None,
) -> list[SweepEntry]:
    """Rows in Table S2's order: the full model first, then by ratio (high to low), baselines
    before ours. `base` carries tau, cluster ratio, k, seed and the frame sampling of every
    outer config.

    num_layers: the LLM's depth, which scales each inner method's default K. ours: the paper's
    in-LLM merge (a text_aware `MergeConfig`, one step or a schedule; default: K scaled from 18,
    R = 0.5, lambda = 0.5). fastv_layer: FastV's K (default: 2 of 28, scaled). HoliTom's inner
    stage always runs with HoliTom's defaults (K 18 of 28, scaled; R = 0.5)."""
    unknown = [m for m in methods if m not in SWEEP_METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown sweep methods {unknown}; choose from {SWEEP_METHODS}")
    if not ratios and any(m != "full" for m in methods):
        raise ValueError("give at least one retention ratio")
    if ours is None:
        ours = MergeConfig(layer=default_merge_layer(num_layers))
    if ours.method != "text_aware":
        raise ValueError(f"ours runs the text_aware merge, got {ours.method!r}")
    if fastv_layer is None:
        fastv_layer = default_merge_layer(num_layers, "fastv")
    holitom_layer = default_merge_layer(num_layers, "holitom")
    for name, merge in (("ours", ours), ("fastv", MergeConfig("fastv", fastv_layer))):
        layers = [layer for layer, _ in merge.schedule]
        if layers[-1] >= num_layers:
            raise ValueError(
                f"{name}'s merge layers {layers} must lie below the model's {num_layers} layers"
            )
    full_outer = outer_config(base, "full", 1.0)
    entries = []
    if "full" in methods:
        entries.append(SweepEntry("full", 1.0, full_outer, MergeConfig(method="none")))
    for ratio in sorted(set(ratios), reverse=True):
        for method in SWEEP_METHODS:
            if method == "full" or method not in methods:
                continue
            if method == "fastv":
                merge = MergeConfig(method="fastv", layer=fastv_layer, keep_ratio=ratio)
                entries.append(SweepEntry(method, ratio, full_outer, merge))
                continue
            if method == "ours":
                merge = ours
            elif method == "holitom":
                merge = MergeConfig("holitom", holitom_layer, HOLITOM_KEEP_RATIO)
            else:
                merge = MergeConfig(method="none")
            entries.append(SweepEntry(method, ratio, outer_config(base, method, ratio), merge))
    return entries


def outer_config(base: CompressionConfig, method: str, ratio: float) -> CompressionConfig:
    """The outer config of a sweep method at ratio r, with `base`'s other settings."""
    return CompressionConfig(
        **{**base.to_dict(), "method": _OUTER_METHOD[method], "retention_ratio": ratio}
    )


def check_unique_keys(entries: Sequence[SweepEntry]) -> None:
    """Refuse a sweep in which two rows share a key (their predictions would be mixed)."""
    keys = [e.key for e in entries]
    doubled = sorted({k for k in keys if keys.count(k) > 1})
    if doubled:
        raise ValueError(f"sweep rows must be unique; repeated: {doubled}")


def unique_configs(entries: Sequence[SweepEntry]) -> list[CompressionConfig]:
    """The outer configs of the sweep, each once (full and FastV, ours and w/o M share)."""
    return list({e.outer.stable_hash(): e.outer for e in entries}.values())


def describe_merge(merge: MergeConfig) -> str:
    """The merge's steps in words, e.g. "K = 8 keeping 50%, then K = 16 keeping 50%"."""
    steps = ", then ".join(f"K = {k} keeping {percent(r)}" for k, r in merge.schedule)
    return steps + (f", lambda = {merge.lam:g}" if merge.method == "text_aware" else "")
