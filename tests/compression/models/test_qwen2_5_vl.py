"""Qwen2.5-VL plug-in on the tiny random model (CPU, fp32): preprocessing against the HF
processor, contribution scores against an eager reference, and the answer path against the HF
model's own forward / generate."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import json

import numpy as np
import pytest
import torch
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as hf_qwen
from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as hf_pil
from transformers.vision_utils import get_vision_window_index

# Submodules, not `compression` itself: with tests/ on sys.path, tests/compression can shadow
# the package's __init__ as a namespace package (the editable install's finder runs later).
from compression.config import CompressionConfig, MergeConfig
from compression.models import GenerationConfig, Question, VideoLLM
from compression.models.decoder_loop import decode_step, prefill
from compression.models.qwen2_5_vl import (
    CLIP_MEAN,
    CLIP_STD,
    Qwen2_5_VL,
    VideoPreprocessing,
    preprocess_video,
    smart_resize,
)
from compression.outer_stage import compress_video

NONE = MergeConfig(method="none")
SECONDS = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]  # 2 fps: 1 s per temporal step, ids 2 apart


def frames(count: int, height: int = 112, width: int = 112, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def llm() -> Qwen2_5_VL:
    return Qwen2_5_VL.tiny()


@pytest.fixture(scope="module")
def short(llm: Qwen2_5_VL):
    """4 frames -> 2 temporal steps of 4 x 4 merged tokens: temporal ids 0, 2 stay below the
    spatial extent, so transformers 5.23's text-start rule agrees with the original one."""
    encoded = llm.encode(frames(4), SECONDS[:4])
    return encoded, compress_video(encoded, CompressionConfig(method="full"))


@pytest.fixture(scope="module")
def long(llm: Qwen2_5_VL):
    """6 frames -> 3 temporal steps (ids 0, 2, 4): the two rules disagree after this video."""
    encoded = llm.encode(frames(6, seed=1), SECONDS)
    return encoded, compress_video(encoded, CompressionConfig(method="full"))


# --------------------------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------------------------
def test_defaults_are_the_video_processors() -> None:
    """Our defaults equal `Qwen2VLVideoProcessor`'s class attributes, read from its source (the
    module imports torchvision, which cannot be installed here)."""
    path = inspect.getsourcefile(hf_pil).replace("image_processing_pil_", "video_processing_")
    with open(path, encoding="utf-8") as handle:
        source = handle.read()
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Processor"))
    attrs = {
        target.id: ast.get_source_segment(source, node.value)
        for node in cls.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    size = eval(attrs["size"], {})
    ours = VideoPreprocessing()
    assert (ours.min_pixels, ours.max_pixels) == (size["shortest_edge"], size["longest_edge"])
    for name in ("patch_size", "temporal_patch_size", "merge_size"):
        assert getattr(ours, name) == int(attrs[name])
    assert attrs["image_mean"] == "OPENAI_CLIP_MEAN" and attrs["image_std"] == "OPENAI_CLIP_STD"
    assert tuple(OPENAI_CLIP_MEAN) == CLIP_MEAN and tuple(OPENAI_CLIP_STD) == CLIP_STD
    assert ours.patch_dim == 1176


SIZES = [(56, 84), (100, 90), (30, 400), (1080, 1920), (7, 9), (10, 1500)]


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("limits", [(56 * 56, 28 * 28 * 1280), (128 * 28 * 28, 768 * 28 * 28)])
def test_smart_resize_matches_transformers(height: int, width: int, limits: tuple) -> None:
    assert smart_resize(height, width, 28, *limits) == hf_pil.smart_resize(
        height, width, 28, *limits
    )


def test_patches_equal_the_image_processor_on_a_still_video() -> None:
    """A video of two identical frames is what the image processor makes of one image (it
    repeats the image over the temporal patch); no resize is needed at 56 x 84."""
    settings = VideoPreprocessing(min_pixels=56 * 56, max_pixels=28 * 28 * 200)
    image = frames(1, 56, 84)[0]
    reference = hf_pil.Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 200)(
        images=[image], return_tensors="pt"
    )
    pixels, grid = preprocess_video(np.stack([image, image]), settings)
    assert list(reference["image_grid_thw"][0]) == list(grid) == [1, 4, 6]
    torch.testing.assert_close(pixels, reference["pixel_values"], rtol=0, atol=1e-6)


def test_resize_stays_within_a_grey_level_of_pil_bicubic() -> None:
    settings = VideoPreprocessing(min_pixels=56 * 56, max_pixels=28 * 28 * 200)
    yy, xx = np.mgrid[0:300, 0:200]
    smooth = 128 + 100 * np.sin(yy / 15.0) * np.cos(xx / 11.0)
    image = np.repeat(smooth[..., None], 3, axis=2).astype(np.uint8)
    reference = hf_pil.Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 200)(
        images=[image], return_tensors="pt"
    )
    pixels, grid = preprocess_video(np.stack([image, image]), settings)
    assert list(reference["image_grid_thw"][0]) == list(grid)
    grey_levels = (pixels - reference["pixel_values"]).abs() * 255 * max(CLIP_STD)
    assert grey_levels.max() < 1.5 and grey_levels.mean() < 0.5


def test_odd_frame_count_repeats_the_last_frame() -> None:
    video = frames(3, 56, 56)
    settings = VideoPreprocessing(min_pixels=56 * 56)
    odd, grid = preprocess_video(video, settings)
    padded, padded_grid = preprocess_video(np.concatenate([video, video[-1:]]), settings)
    assert grid == padded_grid == (2, 4, 4)
    assert torch.equal(odd, padded)


def test_settings_from_a_processor_dict() -> None:
    settings = VideoPreprocessing.from_dict(
        {"size": {"shortest_edge": 3136, "longest_edge": 12845056}, "patch_size": 14}
    )
    assert (settings.min_pixels, settings.max_pixels, settings.merge_size) == (3136, 12845056, 2)


def test_bad_frames_are_rejected(llm: Qwen2_5_VL) -> None:
    with pytest.raises(ValueError, match="uint8"):
        llm.encode(np.zeros((2, 56, 56, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="timestamps"):
        llm.encode(frames(2, 56, 56), [0.0])


# --------------------------------------------------------------------------------------------
# encode and contribution scores
# --------------------------------------------------------------------------------------------
def test_encode_output(llm: Qwen2_5_VL, short) -> None:
    encoded, _ = short
    assert isinstance(llm, VideoLLM)
    assert encoded.grid == (2, 4, 4) and encoded.tokens.shape == (32, llm.hidden_size)
    assert encoded.index[:5].tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 0, 3], [0, 1, 0]]
    assert encoded.index[16].tolist() == [1, 0, 0]
    assert encoded.extras == {"seconds_per_grid_t": pytest.approx(1.0)}
    assert encoded.scores.shape == (32,) and torch.isfinite(encoded.scores).all()
    assert 0 < encoded.score_s <= encoded.encode_s
    assert llm.model.model.visual.config._attn_implementation == "sdpa"


def eager_reference_scores(llm: Qwen2_5_VL, video: np.ndarray) -> torch.Tensor:
    """Full attention probabilities of the last full-attention block (HF's eager attention
    function), mean over heads and queries per frame, then each merged token's mean over the
    four patches that the window permutation placed anywhere in the sequence."""
    visual = llm.model.model.visual
    pixels, grid = preprocess_video(video, llm.preprocessing)
    grid_thw = torch.tensor([grid])
    block = visual.blocks[max(visual.fullatt_block_indexes)]
    captured = {}

    def capture(module, args, kwargs):
        captured.update(hidden=args[0], **kwargs)

    handle = block.register_forward_pre_hook(capture, with_kwargs=True)
    with torch.no_grad():
        visual(pixels, grid_thw=grid_thw)
        handle.remove()
        x = block.norm1(captured["hidden"])
        attention = block.attn
        qkv = attention.qkv(x).reshape(x.shape[0], 3, attention.num_heads, -1)
        cos, sin = captured["position_embeddings"]
        q, k = hf_qwen.apply_rotary_pos_emb_vision(qkv[:, 0], qkv[:, 1], cos, sin)
        bounds = captured["cu_seqlens"].tolist()
        per_patch = []
        for a, b in itertools.pairwise(bounds):
            qs, ks = (t[a:b].transpose(0, 1)[None] for t in (q, k))
            _, probs = hf_qwen.eager_attention_forward(
                attention, qs, ks, ks, None, attention.scaling
            )
            per_patch.append(probs[0].mean(dim=(0, 1)))
    per_patch = torch.cat(per_patch)
    window_index, _ = get_vision_window_index(grid_thw, 2, visual.window_size, visual.patch_size)
    merged = torch.zeros(len(window_index))
    for position, score in enumerate(per_patch):
        merged[window_index[position // 4]] += score / 4
    return merged


@pytest.mark.parametrize("count,size", [(4, (112, 112)), (3, (84, 112))])
def test_scores_equal_an_eager_reference(llm: Qwen2_5_VL, count: int, size: tuple) -> None:
    video = frames(count, *size, seed=count)
    encoded = llm.encode(video)
    torch.testing.assert_close(
        encoded.scores, eager_reference_scores(llm, video), rtol=0, atol=1e-6
    )
    assert encoded.scores.std() > 0.1 * encoded.scores.mean()  # not uniform: the test can fail
    chunked = Qwen2_5_VL(llm.model, llm.tokenizer, llm.model_id, llm.preprocessing, score_chunk=7)
    torch.testing.assert_close(chunked.encode(video).scores, encoded.scores, rtol=0, atol=1e-7)


def test_encode_batch_equals_one_by_one(llm: Qwen2_5_VL) -> None:
    videos = [frames(4, seed=5), frames(3, 84, 112, seed=6)]
    batch = llm.encode_batch(videos, [SECONDS[:4], None])
    for video, stamps, together in zip(videos, [SECONDS[:4], None], batch, strict=True):
        alone = llm.encode(video, stamps)
        assert together.grid == alone.grid and together.extras == alone.extras
        torch.testing.assert_close(together.tokens, alone.tokens, rtol=0, atol=1e-5)
        torch.testing.assert_close(together.scores, alone.scores, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# answer path against the HF model
# --------------------------------------------------------------------------------------------
def hf_inputs(llm: Qwen2_5_VL, question: Question, video: np.ndarray, seconds: float):
    """The HF model's own multimodal inputs for the same prompt and video."""
    prefix, suffix = llm.prompt_ids(question)
    pixels, grid = preprocess_video(video, llm.preprocessing)
    count = grid[0] * grid[1] * grid[2] // 4
    ids = torch.tensor([prefix + [llm.model.config.video_token_id] * count + suffix])
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == llm.model.config.video_token_id).int() * 2,
        "pixel_values_videos": pixels,
        "video_grid_thw": torch.tensor([grid]),
        "second_per_grid_ts": torch.tensor([seconds]),
    }


def our_logits(llm: Qwen2_5_VL, question: Question, merge: MergeConfig = NONE):
    with torch.no_grad():
        sequence = llm.prompt_sequence(question)
        return sequence, prefill(llm.language_model_parts(), [sequence], merge)


def test_full_video_logits_equal_hf_forward_with_our_positions(llm: Qwen2_5_VL, long) -> None:
    """Long video (rules disagree): HF given OUR 3D position ids gives our logits."""
    _, token_set = long
    question = Question(token_set, "what happens in the video ?")
    sequence, state = our_logits(llm, question)
    inputs = hf_inputs(llm, question, frames(6, seed=1), 1.0)
    with torch.no_grad():
        hf = llm.model(**inputs, position_ids=sequence.positions[:, None]).logits[:, -1]
        hf_own = llm.model(**inputs).logits[:, -1]
    torch.testing.assert_close(state.logits, hf, rtol=0, atol=1e-5)
    assert (state.logits - hf_own).abs().max() > 1e-3  # its own rule does change the result


def test_full_video_logits_equal_hf_own_forward_where_rules_agree(llm: Qwen2_5_VL, short) -> None:
    _, token_set = short
    question = Question(token_set, "what color is the car ?", system="answer briefly")
    _, state = our_logits(llm, question)
    with torch.no_grad():
        hf = llm.model(**hf_inputs(llm, question, frames(4), 1.0)).logits[:, -1]
    torch.testing.assert_close(state.logits, hf, rtol=0, atol=1e-5)


def test_greedy_answer_equals_hf_generate(llm: Qwen2_5_VL, short) -> None:
    """Where the rules agree (short video) HF's generate decodes at the same positions."""
    _, token_set = short
    question = Question(token_set, "describe the video")
    answer = llm.answer([question], NONE, GenerationConfig(max_new_tokens=8))[0]
    inputs = hf_inputs(llm, question, frames(4), 1.0)
    with torch.no_grad():
        out = llm.model.generate(**inputs, max_new_tokens=8, do_sample=False, eos_token_id=4)
    generated = [t for t in out[0, inputs["input_ids"].shape[1] :].tolist() if t != 4]
    assert answer.token_ids == generated
    assert answer.prompt_tokens == inputs["input_ids"].shape[1]


def test_cached_decoding_equals_a_recompute(llm: Qwen2_5_VL, long) -> None:
    _, token_set = long
    sequence, state = our_logits(llm, Question(token_set, "who is in the video ?"))
    parts = llm.language_model_parts()
    embed = llm.model.model.language_model.embed_tokens
    tokens = [int(state.logits[0].argmax())]
    with torch.no_grad():
        for step in range(1, 4):
            cached = decode_step(parts, state, torch.tensor(tokens[-1:]))
            extra = torch.arange(step) + sequence.positions[0, -1] + 1
            longer = dataclasses.replace(
                sequence,
                embeds=torch.cat([sequence.embeds, embed(torch.tensor(tokens))]),
                positions=torch.cat([sequence.positions, extra.expand(3, -1)], dim=1),
            )
            recomputed = prefill(parts, [longer], NONE).logits
            torch.testing.assert_close(cached, recomputed, rtol=0, atol=1e-5)
            tokens.append(int(cached[0].argmax()))


# --------------------------------------------------------------------------------------------
# merge inside the LLM, batching, streaming
# --------------------------------------------------------------------------------------------
def test_merge_keeping_everything_changes_nothing(llm: Qwen2_5_VL, long) -> None:
    question = Question(long[1], "what is on the left ?")
    _, plain = our_logits(llm, question)
    _, merged = our_logits(llm, question, MergeConfig(layer=2, keep_ratio=1.0))
    torch.testing.assert_close(merged.logits, plain.logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["text_aware", "fastv"])
def test_merge_shortens_layers_from_k(llm: Qwen2_5_VL, long, method: str) -> None:
    token_set = compress_video(long[0], CompressionConfig(retention_ratio=0.5))
    question = Question(token_set, "what is the man doing ?")
    merge = MergeConfig(method=method, layer=2, keep_ratio=0.3)
    sequence, state = our_logits(llm, question, merge)
    visual, total = token_set.kept_count, sequence.length
    kept = -(-3 * visual // 10)  # ceil(0.3 * |V|)
    text = total - visual
    assert state.stats[0].layer_tokens == [total, total, kept + text, kept + text]
    assert state.stats[0].layer_visual_tokens == [visual, visual, kept, kept]
    cached = [layer.keys.shape[-2] for layer in state.cache.layers]
    assert cached == [total, total, kept + text, kept + text]
    answer = llm.answer([question], merge, GenerationConfig(max_new_tokens=3))[0]
    assert answer.visual_tokens_in == visual and answer.visual_tokens_after_merge == kept
    assert answer.kept_visual is not None and len(answer.kept_visual) == kept
    assert answer.layer_tokens == [total, total, kept + text, kept + text]


@pytest.mark.parametrize("merge", [NONE, MergeConfig(layer=2, keep_ratio=0.4)])
def test_batch_equals_one_by_one(llm: Qwen2_5_VL, short, long, merge: MergeConfig) -> None:
    compressed = compress_video(long[0], CompressionConfig(retention_ratio=0.4))
    questions = [
        Question(short[1], "what color is the ball ?"),
        Question(compressed, "how many people are there in this scene ?", system="be brief"),
        Question(long[1], "yes or no ?"),
    ]
    generation = GenerationConfig(max_new_tokens=5)
    together = llm.answer(questions, merge, generation)
    for question, batched in zip(questions, together, strict=True):
        alone = llm.answer([question], merge, generation)[0]
        assert batched.token_ids == alone.token_ids and batched.text == alone.text
        assert batched.layer_tokens == alone.layer_tokens
        if merge.active:
            assert torch.equal(batched.kept_visual, alone.kept_visual)


def test_stream_ends_with_the_answer_its_pieces_spell(llm: Qwen2_5_VL, long) -> None:
    question = Question(long[1], "describe the scene")
    merge, generation = MergeConfig(layer=2), GenerationConfig(max_new_tokens=6)
    *pieces, final = list(llm.answer_stream(question, merge, generation))
    assert all(isinstance(p, str) for p in pieces)
    assert "".join(pieces) == final.text
    assert final.token_ids == llm.answer([question], merge, generation)[0].token_ids


def test_foreign_token_sets_are_rejected(llm: Qwen2_5_VL, short) -> None:
    foreign = short[1].with_metadata(model_id="another-model")
    with pytest.raises(ValueError, match="encoded by"):
        llm.answer([Question(foreign, "what ?")])


def test_checkpoint_directory_loads_through_load_video_llm(llm: Qwen2_5_VL, tmp_path) -> None:
    """The real `from_pretrained` path: a saved checkpoint (weights, tokenizer with its chat
    template, video processor settings) dispatched on model_type gives the same model."""
    from compression.models import load_video_llm

    llm.model.save_pretrained(tmp_path)
    llm.tokenizer.save_pretrained(tmp_path)
    settings = {"size": {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}, "merge_size": 2}
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(settings))
    loaded = load_video_llm(str(tmp_path))
    assert isinstance(loaded, Qwen2_5_VL) and loaded.model_id == str(tmp_path)
    assert loaded.preprocessing == llm.preprocessing
    assert loaded.model.config._attn_implementation == "sdpa"
    video = frames(2, seed=9)
    ours, theirs = llm.encode(video), loaded.encode(video)
    torch.testing.assert_close(theirs.tokens, ours.tokens, rtol=0, atol=0)
    token_set = compress_video(ours, CompressionConfig(method="full"))
    question = Question(token_set, "what is it ?")
    assert loaded.prompt_ids(question) == llm.prompt_ids(question)
    generation = GenerationConfig(max_new_tokens=4)
    expected = llm.answer([question], NONE, generation)[0].token_ids
    assert loaded.answer([question], NONE, generation)[0].token_ids == expected
