"""Plain-dataclass configuration of the two compression stages.

`CompressionConfig` is the outer, query-independent stage (done once per video at indexing time);
its `stable_hash()` keys every cached token set, so a cache entry is never reused across settings,
and a field added later (`LEGACY_VALUES`) leaves the hashes of configs stored before it unchanged.
`MergeConfig` is the inner, query-dependent stage (per question, inside the LLM): one merge step
at layer K or a schedule of steps, and `default_merge_layer` the one rule for K of each inner
method on a model of any depth. Defaults are the paper's (METHOD.md section 7), and each inner
baseline's own (METHOD.md section 8).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal

OuterMethod = Literal[
    "ours", "ours_no_cluster", "uniform", "random", "visionzip", "holitom", "fastvid", "full"
]
InnerMethod = Literal["text_aware", "fastv", "holitom", "none"]
# How DPC-KNN counts neighbours and the densest token's delta (compression/dpc_knn.py).
DpcConvention = Literal["peers", "exclude_self"]
DPC_CONVENTIONS: tuple[str, ...] = ("peers", "exclude_self")

# The paper's K = 18 of LLaVA-OV-7B's 28 decoder layers (METHOD.md section 7).
PAPER_MERGE_LAYER, PAPER_LAYERS = 18, 28
# Each inner method's published K on that 28-layer LLM: ours 18; FastV prunes after layer 2
# (its paper and code, K=2); HoliTom merges at 18 (its LLaVA-OV-7B scripts: HOLITOM_k=18).
PUBLISHED_MERGE_LAYERS: dict[str, int] = {
    "text_aware": PAPER_MERGE_LAYER,
    "fastv": 2,
    "holitom": 18,
}

OUTER_METHODS: tuple[str, ...] = (
    "ours",
    "ours_no_cluster",
    "uniform",
    "random",
    "visionzip",
    "holitom",
    "fastvid",
    "full",
)
INNER_METHODS: tuple[str, ...] = ("text_aware", "fastv", "holitom", "none")
# Inner methods that rank by the attention inside layer K - 1 (FastV's rule; HoliTom follows it)
# rather than at the input of layer K (ours): their K must be at least 1.
SCORED_BEFORE_K: tuple[str, ...] = ("fastv", "holitom")


# Fields added to CompressionConfig after token sets were first stored, each with its LEGACY
# VALUE: the behaviour of the code before the field existed. `from_dict` fills a missing field
# with its legacy value (a stored config means what it meant when it was written) and
# `stable_hash` leaves out a field that holds its legacy value, so every config stored before a
# field existed keeps its hash and its cached token sets, while a config that differs in the new
# field (e.g. a new default) gets a new hash and never reuses them. The fields of the version-1
# files (tests/storage/data/token_set_v1.*) are always hashed; a field added from now on goes
# here, with the value that reproduces the earlier behaviour.
LEGACY_VALUES: dict[str, Any] = {
    # DPC-KNN excluded a token from its own k nearest neighbours before the option existed.
    "dpc_knn_convention": "exclude_self",
    # Chunked indexing (issue 14): a whole video in one pass, as before.
    "chunk_seconds": None,
    "fps": None,
    "chunk_ratio_factor": 4.0,
}


def _check_cosine(name: str, value: float) -> None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (is_number and math.isfinite(value) and -1.0 <= value <= 1.0):
        raise ValueError(f"{name} is a cosine-similarity threshold in [-1, 1], got {value!r}")


def _check_positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_ratio(name: str, value: float, *, allow_zero: bool = False) -> None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    low_ok = is_number and (value >= 0.0 if allow_zero else value > 0.0)
    if not (low_ok and math.isfinite(value) and value <= 1.0):
        bound = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{name} must be a finite number in {bound}, got {value!r}")


@dataclass(frozen=True)
class CompressionConfig:
    """Settings of the outer stage: global retention pool + DPC-KNN cluster refill.

    retention_ratio: r, the share of the video's tokens that enter the LLM (M = max(1, round(r N))).
    tau: a candidate joins the pool only if its max cosine similarity to the pool is below tau.
    cluster_ratio: c, share of the budget M given to cluster tokens (M_c = round(c M)).
    knn_k: k of the DPC-KNN local density (not given by the paper; 7, self counted as the
        peers count it, see dpc_knn_convention).
    dpc_knn_convention: "peers" (default: the token is among its own k nearest, and the
        densest token's delta is the largest distance of all pairs, as TCFormer, PruneVid,
        HoliTom and FastVID do) or "exclude_self" (the earlier convention, and the legacy value
        of configs stored before this field existed); compression/dpc_knn.py says why.
    method: which outer method builds the token set ("ours" is the paper's; the others are the
        baselines compared against it on the same tokens; "full" keeps every token).
    seed: only used by the "random" baseline.
    visionzip_dominant_ratio: VisionZip-style baseline: share of each frame's budget spent on
        dominant (highest-score) tokens; the rest are contextual merged tokens.
    holitom_*: the HoliTom baseline (compression/holitom.py; defaults are HoliTom's own):
        tau, the consecutive-frame cosine above which a token is static (T); beta, the centre's
        weight in a merged token (BETA); k, the DPC-KNN neighbour cap (K); max_window, the
        longest static window in frames (MAX_WINDOW_SIZE).
    fastvid_*: the FastVID baseline (compression/fastvid.py; defaults are FastVID's own):
        segments, the least number of segments (DySeg c); tau, the frame similarity below which
        the video is always cut (DySeg tau); context_ratio, the share of the budget given to
        density anchor tokens (STPrune d); anchor_interval, frames between anchor frames (DTM
        p); beta, the least weight of an anchor in its merged token (DTM beta).
    frames / frame_size: how the video was sampled before encoding (F frames; short side in
        pixels, None = the model's own input size). `compress` does not read them, but they
        change the tokens, so they belong to the key: token sets of the same video sampled at 16
        and at 32 frames must never be taken for one another.
    chunk_seconds / fps / chunk_ratio_factor: chunked indexing (issue 14, `jobs.index.chunks`).
        chunk_seconds: None indexes the whole video in one pass (as before); S cuts a video
        longer than S into consecutive S-second windows, each sampled (`frames` per window, or
        `fps` frames per second of video), encoded and compressed into a chunk token set, and the
        video-level token set is `compression.hierarchy.pool_token_sets` over the chunk sets at
        this config's ratio. chunk_ratio_factor: k, chunk sets keep min(1, k r) of their tokens
        (decision: 4, see `chunk_config`). They change the tokens, so they are part of the key;
        at their legacy values (`LEGACY_VALUES`: unchunked) they are left out of the hash, so
        every key made before they existed is unchanged.
    """

    retention_ratio: float = 0.02
    tau: float = 0.7
    cluster_ratio: float = 0.3
    knn_k: int = 7
    method: OuterMethod = "ours"
    seed: int = 0
    visionzip_dominant_ratio: float = 0.8
    holitom_tau: float = 0.8
    holitom_beta: float = 0.6
    holitom_k: int = 7
    holitom_max_window: int = 1024
    fastvid_segments: int = 8
    fastvid_tau: float = 0.9
    fastvid_context_ratio: float = 0.4
    fastvid_anchor_interval: int = 4
    fastvid_beta: float = 0.6
    frames: int = 32
    frame_size: int | None = None
    dpc_knn_convention: DpcConvention = "peers"
    chunk_seconds: float | None = None
    fps: float | None = None
    chunk_ratio_factor: float = 4.0

    def __post_init__(self) -> None:
        if self.method not in OUTER_METHODS:
            raise ValueError(f"unknown compression method {self.method!r}; one of {OUTER_METHODS}")
        _check_ratio("retention_ratio", self.retention_ratio)
        if not (isinstance(self.tau, (int, float)) and math.isfinite(self.tau)):
            raise ValueError(f"tau must be a finite number, got {self.tau!r}")
        if not -1.0 <= self.tau <= 1.0:
            raise ValueError(f"tau is a cosine-similarity threshold in [-1, 1], got {self.tau!r}")
        _check_ratio("cluster_ratio", self.cluster_ratio, allow_zero=True)
        _check_ratio("visionzip_dominant_ratio", self.visionzip_dominant_ratio, allow_zero=True)
        if not isinstance(self.knn_k, int) or self.knn_k < 1:
            raise ValueError(f"knn_k must be a positive integer, got {self.knn_k!r}")
        if self.dpc_knn_convention not in DPC_CONVENTIONS:
            raise ValueError(
                f"unknown dpc_knn_convention {self.dpc_knn_convention!r}; one of {DPC_CONVENTIONS}"
            )
        self._check_peer_settings()
        if not isinstance(self.frames, int) or not 1 <= self.frames <= 1024:
            raise ValueError(f"frames must be an integer in [1, 1024], got {self.frames!r}")
        if self.frame_size is not None and (
            not isinstance(self.frame_size, int) or not 1 <= self.frame_size <= 8192
        ):
            raise ValueError(f"frame_size must be None or in [1, 8192], got {self.frame_size!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        self._check_chunking()

    def _check_chunking(self) -> None:
        def positive(name: str, value: object, upper: float) -> None:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or not 0 < value <= upper:  # type: ignore[operator]
                raise ValueError(f"{name} must be a number in (0, {upper:g}], got {value!r}")

        if self.chunk_seconds is None:
            if self.fps is not None or self.chunk_ratio_factor != 4.0:
                raise ValueError("fps and chunk_ratio_factor apply to chunked indexing only")
            return
        if self.method != "ours":
            raise ValueError(
                f"chunked indexing pools chunk sets with the paper's method one level up; "
                f"method {self.method!r} has no hierarchical form"
            )
        positive("chunk_seconds", self.chunk_seconds, 86_400.0)
        positive("chunk_ratio_factor", self.chunk_ratio_factor, 1_000.0)
        if self.chunk_ratio_factor < 1:
            raise ValueError(f"chunk_ratio_factor must be >= 1, got {self.chunk_ratio_factor!r}")
        if self.fps is not None:
            positive("fps", self.fps, 240.0)
            if self.fps * self.chunk_seconds > 1024:
                raise ValueError(
                    f"fps x chunk_seconds = {self.fps * self.chunk_seconds:g} frames per window; "
                    "at most 1024"
                )

    def chunk_config(self) -> CompressionConfig:
        """The config a chunk set is compressed under: this one at ratio min(1, k r).

        Decision (issue 14): chunk sets at the video's own ratio r hold about M tokens together,
        so the video-level pool could only trim rounding and never undo redundancy across chunks
        (a static scene would keep one token per chunk); at k r the video-level pool really
        chooses among k M candidates. bench_hierarchy measured k = 4: the video-level SELECTED
        tokens then equal the flat pool's exactly (Jaccard 1.000 in all runs, 0.80-0.98 at k = 1),
        for 4x the storage of the chunk sets (still k r of the video's tokens, 8% at r = 2%).
        """
        ratio = min(1.0, self.chunk_ratio_factor * self.retention_ratio)
        return dataclasses.replace(self, retention_ratio=ratio)

    def _check_peer_settings(self) -> None:
        for name in ("holitom_tau", "fastvid_tau"):
            _check_cosine(name, getattr(self, name))
        for name in (
            "holitom_beta",
            "fastvid_context_ratio",
            "fastvid_beta",
        ):
            _check_ratio(name, getattr(self, name), allow_zero=True)
        for name in (
            "holitom_k",
            "holitom_max_window",
            "fastvid_segments",
            "fastvid_anchor_interval",
        ):
            _check_positive_int(name, getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionConfig:
        """The config `data` (a stored `to_dict`) describes; a field added after it was written
        takes its legacy value (`LEGACY_VALUES`), not today's default."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown CompressionConfig fields: {sorted(unknown)}")
        return cls(**{**LEGACY_VALUES, **data})

    def stable_hash(self) -> str:
        """A hash that is the same for equal settings on every machine and Python version.

        Fields holding their legacy value (`LEGACY_VALUES`) are left out, so the hash of a config
        stored before such a field existed does not change."""
        hashed = {
            name: value
            for name, value in self.to_dict().items()
            if name not in LEGACY_VALUES or value != LEGACY_VALUES[name]
        }
        canonical = json.dumps(hashed, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def budget(self, n_tokens: int) -> int:
        """M = max(1, round(r * N)), never more than N (METHOD.md section 2)."""
        if n_tokens <= 0:
            raise ValueError(f"a video needs at least one token, got {n_tokens}")
        return min(n_tokens, max(1, round(self.retention_ratio * n_tokens)))

    def split_budget(self, n_tokens: int) -> tuple[int, int]:
        """(M_s, M_c): selected-pool capacity and cluster count, M_c = round(c * M), M_s = M - M_c.

        Python's round (half to even), like `budget`.
        """
        total = self.budget(n_tokens)
        clusters = round(self.cluster_ratio * total)
        return total - clusters, clusters


def _as_step(step: object) -> tuple[Any, Any]:
    if isinstance(step, (str, bytes)) or not isinstance(step, Sequence) or len(step) != 2:
        raise ValueError(f"a merge step is a (layer, keep_ratio) pair, got {step!r}")
    return step[0], step[1]


def kept_share(keep_ratio: float, n_visual: int) -> int:
    """ceil(R * n) of n visual tokens, at least 1 when there is any (one merge step)."""
    if n_visual <= 0:
        return 0
    return max(1, min(n_visual, math.ceil(keep_ratio * n_visual - 1e-9)))


@dataclass(frozen=True)
class MergeConfig:
    """Settings of the inner, query-dependent stage inside the LLM (METHOD.md sections 5, 8).

    method: "text_aware" (the paper's, Eq. 9 at the input of layer K, dropped tokens merged
        size-weighted), "fastv" (FastV: the last token's attention inside layer K - 1 ranks the
        visual tokens, the rest are pruned from layer K on), "holitom" (HoliTom's inner stage:
        FastV's ranking, each dropped token averaged into its most similar kept token, as
        HoliTom's code does), or "none" (vanilla: every layer sees every visual token).
    layer: K of the first (or only) step; layers 0..K-1 see all visual tokens, layers K.. the
        merged set. None (the default) takes the method's published K on a 28-layer LLM
        (`PUBLISHED_MERGE_LAYERS`: 18, FastV 2, HoliTom 18); `default_merge_layer` scales it.
    keep_ratio: R of the first step; ceil(R * |V|) visual tokens are kept at layer K.
    lam: lambda, the weight of the text-visual similarity against the attention term
        (text_aware only).
    later_steps: further (layer, keep_ratio) steps after the first, for a layer schedule
        (Fig. S1); `schedule` is all steps, `from_schedule` builds a config from them.

    A schedule [(K_1, R_1), ..., (K_n, R_n)] has strictly increasing layers; step s runs the
    method at layer K_s on the visual tokens that reach it. Decision: keep ratios are RELATIVE,
    step s keeps ceil(R_s * n_{s-1}) of the n_{s-1} visual tokens left by the step before (n_0 =
    the tokens entering the LLM), so the share left after step s is R_1 ... R_s. Why: Fig. S1
    and its text study a pruning ratio per layer ("selecting appropriate pruning ratios
    according to layer depth"; deeper layers tolerate higher ratios): a ratio is what a layer
    does to the tokens it receives, as the paper's single R is relative to the tokens entering
    the LLM ("2%/1%"). It also makes a schedule exactly its steps applied in turn, and every
    ratio in (0, 1] valid at every step. A one-step config, `MergeConfig(layer=18,
    keep_ratio=0.5)`, means what it always meant.
    """

    method: InnerMethod = "text_aware"
    layer: int | None = None
    keep_ratio: float = 0.5
    lam: float = 0.5
    later_steps: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        if self.method not in INNER_METHODS:
            raise ValueError(f"unknown merge method {self.method!r}; one of {INNER_METHODS}")
        if self.layer is None:
            object.__setattr__(
                self, "layer", PUBLISHED_MERGE_LAYERS.get(self.method, PAPER_MERGE_LAYER)
            )
        _check_ratio("lam", self.lam, allow_zero=True)
        if isinstance(self.later_steps, (str, bytes)) or not isinstance(self.later_steps, Sequence):
            raise ValueError(
                f"later_steps must be a sequence of (layer, keep_ratio) pairs, "
                f"got {self.later_steps!r}"
            )
        steps = [self._checked_step((self.layer, self.keep_ratio))]
        steps += [self._checked_step(step) for step in self.later_steps]
        object.__setattr__(self, "later_steps", tuple(steps[1:]))
        layers = [layer for layer, _ in steps]
        if any(b <= a for a, b in pairwise(layers)):
            raise ValueError(f"schedule layers must be strictly increasing, got {layers}")

    def _checked_step(self, step: object) -> tuple[int, float]:
        layer, keep_ratio = _as_step(step)
        if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
            raise ValueError(f"layer K must be a non-negative integer, got {layer!r}")
        if self.method in SCORED_BEFORE_K and layer < 1:
            raise ValueError(
                f"{self.method} ranks by the attention inside layer K - 1: K must be at least 1, "
                f"got {layer}"
            )
        _check_ratio("keep_ratio", keep_ratio)
        return layer, keep_ratio

    @classmethod
    def from_schedule(
        cls,
        steps: Sequence[tuple[int, float]],
        method: InnerMethod = "text_aware",
        lam: float = 0.5,
    ) -> MergeConfig:
        """A config running `method` at each (layer, keep_ratio) step in turn."""
        steps = list(steps)
        if not steps:
            raise ValueError("a merge schedule needs at least one (layer, keep_ratio) step")
        layer, keep_ratio = _as_step(steps[0])
        return cls(method, layer, keep_ratio, lam, tuple(steps[1:]))

    @property
    def schedule(self) -> tuple[tuple[int, float], ...]:
        """Every (layer, keep_ratio) step, the first one included, in layer order."""
        return ((self.layer, self.keep_ratio), *self.later_steps)

    @property
    def active(self) -> bool:
        return self.method != "none"

    def kept_counts(self, n_visual: int) -> list[int]:
        """Visual tokens left after each step in turn (each keeps ceil(R_s n_{s-1}))."""
        counts, n = [], n_visual
        for _, keep_ratio in self.schedule:
            n = kept_share(keep_ratio, n)
            counts.append(n)
        return counts

    def kept_count(self, n_visual: int) -> int:
        """Visual tokens left after the whole schedule: ceil(R * |V|) for one step, at least 1
        when there is any visual token."""
        return self.kept_counts(n_visual)[-1]


def default_merge_layer(num_layers: int, method: str = "text_aware") -> int:
    """K of `method` for a model of `num_layers` decoder layers: its published K of 28 layers
    (`PUBLISHED_MERGE_LAYERS`: the paper's 18, FastV's 2, HoliTom's 18) at the same relative
    depth, round(K_28 * L / 28), within [1, L - 1] so that a merge always happens, at least one
    layer sees the merged sequence, and FastV/HoliTom have a layer K - 1 to rank with (a 4-layer
    test model merges at 3 and runs FastV at 1; a 24-layer one at 15 and 2). The service, the
    evaluator and the visualiser all take this default."""
    if method not in PUBLISHED_MERGE_LAYERS:
        raise ValueError(f"no merge layer for inner method {method!r}")
    return scaled_layer(PUBLISHED_MERGE_LAYERS[method], num_layers)


def scaled_layer(layer_28: int, num_layers: int) -> int:
    """A layer K given on the paper's 28-layer LLM, at the same relative depth of a model of
    `num_layers` layers (round(K_28 * L / 28)), within [1, num_layers - 1]: the rule
    `default_merge_layer` applies to each method's published K, for any K (the evaluator's
    presets give their K on 28 layers)."""
    if not isinstance(layer_28, int) or not 0 <= layer_28 < PAPER_LAYERS:
        raise ValueError(f"a layer of the 28-layer LLM lies in [0, 27], got {layer_28!r}")
    if not isinstance(num_layers, int) or num_layers < 2:
        raise ValueError(f"a merge inside the LLM needs at least 2 layers, got {num_layers!r}")
    return min(num_layers - 1, max(1, round(layer_28 * num_layers / PAPER_LAYERS)))
