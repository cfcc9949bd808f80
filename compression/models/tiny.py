"""Tiny random-weight models of each supported family, for tests and the offline demo.

Built from a fixed seed on CPU in float32, so every process (test workers, Ray actors, the demo)
gets bit-identical weights without downloading anything. Each family has its own builder; they
share the offline word-level tokenizer below. Their names ("tiny-llava-ov", "tiny-qwen2.5-vl")
are registered in `compression.models.registry`.
The answers of these models are noise: use them for mechanics and equivalences only.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    SiglipVisionConfig,
)

TINY_SEED = 1234

PAD, UNK, EOS = "<pad>", "<unk>", "<|endoftext|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"

# Words the tiny tokenizer knows, so test questions tokenize to distinct ids (others -> <unk>).
_WORD_LIST = (
    "user assistant system what who where when why how which is are was the a an of in on at to "
    "and or not this that video frame scene person man woman dog cat car ball red blue green "
    "color many happens happening doing does do there it describe first last after before left "
    "right up down yes no one two three four five answer question briefly please ? . ,"
)
_WORDS = tuple(_WORD_LIST.split())

# Same prompt format as the LLaVA-OneVision -hf processors (Qwen2 chat markup, <video> first).
LLAVA_OV_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>\\n' }}{% endfor %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ part['text'] }}{% endfor %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def word_level_tokenizer(
    vocab_size: int, special_ids: dict[str, int], chat_template: str
) -> PreTrainedTokenizerFast:
    """An offline whitespace/word-level tokenizer with the given special tokens at fixed ids.

    Ids 0..4 are <pad>, <unk>, <|endoftext|>, <|im_start|>, <|im_end|>; then the known words;
    `special_ids` places model tokens (e.g. {"<video>": 121}); the rest are filler words.
    """
    fixed = [PAD, UNK, EOS, IM_START, IM_END]
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(fixed)}
    taken = set(vocab.values()) | set(special_ids.values())
    free = (i for i in range(vocab_size) if i not in taken)
    for word in _WORDS:
        vocab[word] = next(free)
    vocab.update(special_ids)
    for i in free:
        vocab[f"w{i}"] = i
    if len(vocab) != vocab_size or max(vocab.values()) != vocab_size - 1:
        raise ValueError(f"vocabulary does not fit {vocab_size} ids")
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        eos_token=IM_END,
        bos_token=None,
        additional_special_tokens=[EOS, IM_START, *special_ids],
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def _seeded_model(model_class: type, config, attn_implementation: str) -> torch.nn.Module:
    """`model_class(config)` initialised from TINY_SEED (the global RNG left as it was), in eval
    mode, generating until <|im_end|> (id 4 of `word_level_tokenizer`) and padding with id 0."""
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = model_class(config)
    model.generation_config.eos_token_id = 4
    model.generation_config.pad_token_id = 0
    return model.eval()


def tiny_llava_onevision_config(image_size: int = 70) -> LlavaOnevisionConfig:
    """Per NOTES-transformers; image_size 70 gives 5x5 patches, pooled (ceil) to 3x3 tokens."""
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=14,
        vision_use_head=False,
    )
    text = Qwen2Config(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        # Wider than HF's 0.02 so attention and logits are far from uniform: merges, argmaxes
        # and answers then depend on the inputs, which the equivalence tests need.
        initializer_range=0.1,
        eos_token_id=4,
        pad_token_id=0,
        bos_token_id=None,
    )
    return LlavaOnevisionConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=120,
        video_token_index=121,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        tie_word_embeddings=False,
    )


def build_tiny_llava_onevision(
    attn_implementation: str = "sdpa", image_size: int = 70
) -> tuple[LlavaOnevisionForConditionalGeneration, PreTrainedTokenizerFast]:
    """The tiny LLaVA-OneVision (fp32, CPU, eval mode) and its tokenizer, same in every process."""
    config = tiny_llava_onevision_config(image_size)
    model = _seeded_model(LlavaOnevisionForConditionalGeneration, config, attn_implementation)
    model.config.eos_token_id = 4
    tokenizer = word_level_tokenizer(128, {"<image>": 120, "<video>": 121}, LLAVA_OV_CHAT_TEMPLATE)
    return model, tokenizer


# --------------------------------------------------------------------------------------------
# Qwen2.5-VL
# --------------------------------------------------------------------------------------------
# The Qwen2.5-VL-Instruct chat markup (default system turn; the video wrapped in vision markers).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_QWEN_SPECIAL_IDS = {
    "<|image_pad|>": 190,
    "<|video_pad|>": 191,
    "<|vision_start|>": 192,
    "<|vision_end|>": 193,
}


def tiny_qwen2_5_vl_config() -> Qwen2_5_VLConfig:
    """Per NOTES-transformers. The ViT is initialised with a wider spread than HF's default
    (std 0.3, not 0.02) so its attention is far from uniform and the contribution scores differ
    from token to token; the text model uses std 0.1 for the same reason."""
    vision = {
        "depth": 4,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 4,
        "out_hidden_size": 64,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,
        "fullatt_block_indexes": [1, 3],
        "tokens_per_second": 2,
        "initializer_range": 0.3,
    }
    text = {
        "vocab_size": 200,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4},
        "initializer_range": 0.1,
        "eos_token_id": 4,
        "pad_token_id": 0,
        "bos_token_id": None,
    }
    return Qwen2_5_VLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=_QWEN_SPECIAL_IDS["<|image_pad|>"],
        video_token_id=_QWEN_SPECIAL_IDS["<|video_pad|>"],
        vision_start_token_id=_QWEN_SPECIAL_IDS["<|vision_start|>"],
        vision_end_token_id=_QWEN_SPECIAL_IDS["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def build_tiny_qwen2_5_vl(
    attn_implementation: str = "sdpa",
) -> tuple[Qwen2_5_VLForConditionalGeneration, PreTrainedTokenizerFast]:
    """The tiny Qwen2.5-VL (fp32, CPU, eval mode) and its tokenizer, same in every process."""
    model = _seeded_model(
        Qwen2_5_VLForConditionalGeneration, tiny_qwen2_5_vl_config(), attn_implementation
    )
    tokenizer = word_level_tokenizer(200, _QWEN_SPECIAL_IDS, QWEN2_5_VL_CHAT_TEMPLATE)
    return model, tokenizer
