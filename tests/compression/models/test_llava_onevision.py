"""The LLaVA-OneVision plug-in on the tiny random model (CPU, fp32): encoding and contribution
scores against HF/eager attention, answers against HF's forward and generate, batching,
streaming, loading by name and from a local checkpoint directory."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from compression import CompressionConfig, MergeConfig, compress_video
from compression.models import (
    TINY_LLAVA_OV,
    Answer,
    GenerationConfig,
    Question,
    VideoLLM,
    load_video_llm,
)
from compression.models.decoder_loop import prefill
from compression.models.llava_onevision import LlavaOneVision
from compression.models.preprocess import preprocess_frames
from compression.models.tiny import build_tiny_llava_onevision
from compression.token_set import TokenKind, TokenSet, grid_index

pytestmark = pytest.mark.usefixtures("single_torch_thread")
OFF = MergeConfig(method="none")
GREEDY = GenerationConfig(max_new_tokens=6)


@pytest.fixture(scope="module")
def plugin() -> LlavaOneVision:
    return LlavaOneVision.tiny()


@pytest.fixture(scope="module")
def videos() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = [(4, 50, 60), (2, 90, 70), (3, 70, 70)]
    return [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in shapes]


@pytest.fixture(scope="module")
def encoded(plugin, videos):
    return plugin.encode_batch(videos, [[0.5 * i for i in range(len(v))] for v in videos])


def full_token_set(plugin, video) -> TokenSet:
    """Every token, original order (what answering without any compression sees)."""
    n = video.tokens.shape[0]
    return TokenSet(
        tokens=video.tokens,
        index=video.index,
        kind=torch.full((n,), int(TokenKind.SELECTED), dtype=torch.int8),
        size=torch.ones(n, dtype=torch.int32),
        grid=video.grid,
        config=CompressionConfig(method="full"),
        model_id=plugin.model_id,
    )


def hf_inputs(plugin, question, video_frames):
    """input_ids with one <video> token per video feature (+ the newline), as HF's processor
    expands them, and the pixel tensor."""
    prefix, suffix = plugin.prompt_ids(question)
    count = question.token_set.kept_count + 1
    ids = torch.tensor([prefix + [plugin.model.config.video_token_id] * count + suffix])
    return ids, preprocess_frames(video_frames, plugin.preprocessing)[None]


# -- encode -----------------------------------------------------------------------------------
def test_protocol_and_sizes(plugin):
    assert isinstance(plugin, VideoLLM)
    assert (plugin.hidden_size, plugin.intermediate_size, plugin.num_layers) == (64, 128, 4)
    assert plugin.model_id == TINY_LLAVA_OV and plugin.family == "llava_onevision"
    assert plugin.encoder.frame_grid == (3, 3)  # 70 px / 14 = 5 patches, pooled with ceil to 3


def test_encode_gives_pooled_tokens_in_original_order(plugin, videos, encoded):
    for frames, video in zip(videos, encoded, strict=True):
        f = len(frames)
        assert video.grid == (f, 3, 3)
        assert video.tokens.shape == (f * 9, 64)
        assert torch.equal(video.index, grid_index(video.grid))
        assert video.scores.shape == (f * 9,) and video.scores.dtype == torch.float32
        assert video.frame_timestamps == tuple(0.5 * i for i in range(f))
        assert 0 < video.score_s <= video.encode_s
    pixels = preprocess_frames(videos[0], plugin.preprocessing)[None]
    with torch.no_grad():
        features = plugin.model.model.get_video_features(pixels).pooler_output[0]
    torch.testing.assert_close(encoded[0].tokens, features[:-1])  # newline dropped


@pytest.mark.parametrize("reduction", ["mean", "max"])
def test_scores_equal_eager_attention(plugin, videos, encoded, reduction):
    eager, _ = build_tiny_llava_onevision(attn_implementation="eager")
    scorer = LlavaOneVision(eager, plugin.tokenizer, TINY_LLAVA_OV, head_reduction=reduction)
    ours = scorer.encode(videos[1]).scores
    pixels = preprocess_frames(videos[1], plugin.preprocessing)
    with torch.no_grad():
        attentions = eager.model.vision_tower(pixels, output_attentions=True).attentions
    received = attentions[-1].mean(dim=2)  # [F, heads, N]: mean over the frame's queries
    per_token = received.mean(dim=1) if reduction == "mean" else received.amax(dim=1)
    expected = eager.model.apply_pooling(per_token[..., None])[..., 0].reshape(-1)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    assert ours.std() > 0.05 * ours.mean()  # the tiny model's scores do differ between tokens
    if reduction == "mean":
        torch.testing.assert_close(encoded[1].scores, expected, atol=1e-5, rtol=1e-5)


def test_encode_batch_equals_one_by_one_in_small_chunks(plugin, videos, encoded):
    chunked = LlavaOneVision(
        plugin.model, plugin.tokenizer, TINY_LLAVA_OV, max_frames_per_forward=2, score_chunk=7
    )
    for frames, batch_video in zip(videos, encoded, strict=True):
        alone = chunked.encode(frames)
        torch.testing.assert_close(alone.tokens, batch_video.tokens, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(alone.scores, batch_video.scores, atol=1e-6, rtol=1e-5)


# -- answer -----------------------------------------------------------------------------------
def test_full_token_set_equals_hf_forward_and_generate(plugin, videos, encoded):
    question = Question(full_token_set(plugin, encoded[0]), "what is the dog doing ?")
    ids, pixels = hf_inputs(plugin, question, videos[0])
    sequence = plugin.prompt_sequence(question)
    assert sequence.length == ids.shape[1]
    with torch.no_grad():
        expected = plugin.model(input_ids=ids, pixel_values_videos=pixels).logits[0, -1]
        generated = plugin.model.generate(
            input_ids=ids, pixel_values_videos=pixels, max_new_tokens=6, do_sample=False
        )[0, ids.shape[1] :].tolist()
    ours = prefill(plugin.language_model_parts(), [sequence], OFF).logits[0]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    answer = plugin.answer([question], OFF, GREEDY)[0]
    eos = plugin.eos_token_ids
    expected_ids = generated[: next((i for i, t in enumerate(generated) if t in eos), 6)]
    assert answer.token_ids == expected_ids
    assert len(expected_ids) >= 3  # the comparison covers several decoding steps


def test_answer_over_a_compressed_token_set_fills_every_field(plugin, encoded):
    token_set = compress_video(encoded[0], CompressionConfig(retention_ratio=0.5))
    token_set = token_set.with_metadata(model_id=plugin.model_id)
    question = Question(token_set, "who is there ?", system="answer briefly")
    answer = plugin.answer([question], MergeConfig(layer=2, keep_ratio=0.5), GREEDY)[0]
    visual = token_set.kept_count
    kept = math.ceil(0.5 * visual)
    prompt = answer.prompt_tokens
    assert answer.visual_tokens_in == visual and answer.visual_tokens_after_merge == kept
    assert answer.layer_visual_tokens == [visual, visual, kept, kept]
    assert answer.layer_tokens == [prompt, prompt, prompt - visual + kept, prompt - visual + kept]
    assert answer.kept_visual.tolist() == sorted(answer.kept_visual.tolist())
    assert len(answer.kept_visual) == kept and int(answer.kept_visual.max()) < visual
    assert answer.finish_reason in ("stop", "length") and len(answer.token_ids) <= 6
    assert answer.text == plugin.tokenizer.decode(answer.token_ids, skip_special_tokens=True)
    assert answer.prefill_s > 0 and answer.decode_s >= 0


def test_merge_at_or_past_the_last_layer_merges_nothing(plugin, encoded):
    question = Question(full_token_set(plugin, encoded[2]), "describe the video")
    late = plugin.answer([question], MergeConfig(layer=4, keep_ratio=0.1), GREEDY)[0]
    plain = plugin.answer([question], OFF, GREEDY)[0]
    assert late.kept_visual is None and late.layer_tokens == plain.layer_tokens
    assert late.token_ids == plain.token_ids


@pytest.mark.parametrize("merge", [OFF, MergeConfig(layer=2, keep_ratio=0.5)])
def test_batched_questions_equal_one_by_one(plugin, encoded, merge):
    texts = ["what is the dog doing ?", "who", "how many red cars are there ? answer briefly"]
    questions = [
        Question(full_token_set(plugin, video), text)
        for video, text in zip(encoded, texts, strict=True)
    ]
    batch = plugin.answer(questions, merge, GenerationConfig(max_new_tokens=8))
    for question, answer in zip(questions, batch, strict=True):
        alone = plugin.answer([question], merge, GenerationConfig(max_new_tokens=8))[0]
        assert answer.token_ids == alone.token_ids
        assert answer.layer_tokens == alone.layer_tokens


def test_answer_stream_yields_the_text_then_the_answer(plugin, encoded):
    question = Question(full_token_set(plugin, encoded[1]), "what happens first ?")
    events = list(plugin.answer_stream(question, MergeConfig(layer=2), GREEDY))
    final = events[-1]
    assert isinstance(final, Answer)
    assert all(isinstance(e, str) and e for e in events[:-1])
    assert "".join(events[:-1]) == final.text
    assert final.token_ids == plugin.answer([question], MergeConfig(layer=2), GREEDY)[0].token_ids


def test_mismatched_token_sets_and_questions_are_rejected(plugin, encoded):
    token_set = full_token_set(plugin, encoded[0])
    with pytest.raises(ValueError, match="encoded by"):
        plugin.answer([Question(token_set.with_metadata(model_id="other"), "who")])
    narrow = TokenSet(
        tokens=torch.zeros(2, 8),
        index=torch.zeros(2, 3, dtype=torch.int32),
        kind=torch.zeros(2, dtype=torch.int8),
        size=torch.ones(2, dtype=torch.int32),
        grid=(1, 2, 2),
    )
    with pytest.raises(ValueError, match="hidden size"):
        plugin.answer([Question(narrow, "who")])
    with pytest.raises(ValueError, match="non-empty"):
        plugin.answer([Question(token_set, "  ")])
    assert plugin.answer([]) == []


# -- loading ----------------------------------------------------------------------------------
def test_load_video_llm_by_name_and_from_a_local_checkpoint(tmp_path, plugin, encoded):
    assert isinstance(load_video_llm(TINY_LLAVA_OV), LlavaOneVision)
    plugin.model.save_pretrained(tmp_path)
    tokenizer = plugin.tokenizer
    tokenizer.save_pretrained(tmp_path)
    # The -hf checkpoints keep the video-aware chat template with the processor.
    (tmp_path / "chat_template.json").write_text(
        json.dumps({"chat_template": tokenizer.chat_template})
    )
    size = plugin.model.config.vision_config.image_size
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"size": {"height": size, "width": size}, "image_mean": [0.5] * 3})
    )
    loaded = load_video_llm(str(tmp_path))
    assert isinstance(loaded, LlavaOneVision) and loaded.model_id == str(tmp_path)
    assert loaded.dtype == torch.float32 and loaded.preprocessing.size == (size, size)
    question = Question(full_token_set(plugin, encoded[2]), "who is there ?")
    original = plugin.answer([question], OFF, GREEDY)[0]
    question.token_set = question.token_set.with_metadata(model_id=str(tmp_path))
    assert loaded.answer([question], OFF, GREEDY)[0].token_ids == original.token_ids


def test_load_video_llm_rejects_other_families(tmp_path):
    from transformers import Qwen2Config

    Qwen2Config(hidden_size=8, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="qwen2"):
        load_video_llm(str(tmp_path))
    with pytest.raises(ValueError):
        load_video_llm("")
