"""What every Video-LLM plug-in shares: a Hugging Face chat model whose prompt holds one video
placeholder, answered over a token set by our decoder loop (`compression.models.decoder_loop`)
and its generation layer (`compression.models.generation`).

A plug-in subclasses `ChatVideoLLM` and keeps only what is its family's own: loading, its
`VisionEncoder` (`compression.models.encoder`: frame preprocessing, tokens and contribution
scores, the same object a vision-only encode worker loads) and `prompt_sequence` (where the
token set's tokens go in the prompt and which positions they take). What lives here reads the
layout both HF families have: `model.model.language_model` (with `embed_tokens`),
`model.lm_head`, `model.config.text_config`, `model.config.video_token_id` and the model's
`generation_config`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from copy import deepcopy
from functools import cached_property
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from compression.config import MergeConfig
from compression.models.decoder_loop import LanguageModelParts, PromptSequence
from compression.models.generation import GenerationRun
from compression.models.interface import Answer, GenerationConfig, InvalidQuestion, Question, Turn
from compression.models.prefix_cache import PrefixCache
from compression.models.scheduler import ContinuousBatch
from compression.token_set import EncodedVideo, TokenSet

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from compression.models.encoder import VisionEncoder


# Private-use code points: chat-template markup never contains them, so they mark where a piece of
# user text goes in the rendered prompt (`ChatVideoLLM.prompt_ids`).
_PLACEHOLDER = "\ue000{}\ue001"
_PLACEHOLDER_PATTERN = re.compile("\ue000([0-9]+)\ue001")


def load_checkpoint(
    model_class: type, model: str, device: str | torch.device, dtype: torch.dtype | None
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """A checkpoint (hub id or local directory) as `model_class` with sdpa attention, moved to
    `device`, and its tokenizer. dtype defaults to bfloat16 on CUDA and float32 elsewhere."""
    from transformers import AutoTokenizer

    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    network = model_class.from_pretrained(model, dtype=dtype, attn_implementation="sdpa")
    return network.to(device), AutoTokenizer.from_pretrained(model)


# Frame times listed in the prompt at most: a long video's video-level set can keep tokens from
# hundreds of frames; beyond this many the list is thinned evenly (first and last kept).
MAX_LISTED_TIMES = 64


def clock(seconds: float) -> str:
    """mm:ss, or h:mm:ss from one hour on (whole seconds, rounded down)."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def timeline_text(token_set: TokenSet, span: tuple[float, float]) -> str:
    """The line that tells the model when what it sees happened (issue 14), e.g.
    "The video spans 12:40-13:20; the frames shown are at 12:40, 12:46, 12:51."

    Decision: as LLaVA-Video's time instruction and Qwen2.5-VL's absolute timestamps do, in
    plain words after the video and before the question; the times are those of the frames the
    token set still holds tokens from (a kept token's grid step -> the first frame of that
    step), not of every sampled frame, and the span is the part of the video the tokens were
    chosen from. Only digits, colons and commas: nothing a tokenizer reads as markup."""
    stamps = token_set.frame_timestamps
    times: list[float] = []
    if stamps:
        per_step = max(1, len(stamps) // token_set.grid[0])
        steps = sorted({int(t) for t in token_set.index[:, 0].tolist()})
        times = [stamps[t * per_step] for t in steps if t * per_step < len(stamps)]
    if len(times) > MAX_LISTED_TIMES:
        picks = np.linspace(0, len(times) - 1, MAX_LISTED_TIMES).round().astype(int)
        times = [times[i] for i in sorted(set(picks.tolist()))]
    start, end = span
    line = f"The video spans {clock(start)}-{clock(end)}"
    if times:
        line += "; the frames shown are at " + ", ".join(clock(t) for t in times)
    return line + "."


class EmbeddedPrompt(NamedTuple):
    """A question's chat prompt split at the video placeholder, embedded, with its token set."""

    prefix: list[int]  # prompt ids before the placeholder
    suffix: list[int]  # prompt ids after it
    text: torch.Tensor  # embeddings of prefix + suffix, [len(prefix) + len(suffix), d]
    visual: torch.Tensor  # the token set's tokens on the model's device, in the embeddings' dtype


class ChatVideoLLM(ABC):
    """The `VideoLLM` protocol minus what differs per family (see the module docstring)."""

    family: str

    def __init__(self, model: nn.Module, tokenizer, model_id: str, encoder: VisionEncoder) -> None:
        """model: the HF `...ForConditionalGeneration` on its device and dtype; tokenizer: its
        tokenizer, with a chat template that places one video token; model_id: stored in token
        sets and checked against them when answering; encoder: the family's encoder over
        `model.model`."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.encoder = encoder
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype

    # -- sizes the FLOPs formula and the callers need -----------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(self.model.config.text_config.hidden_size)

    @property
    def intermediate_size(self) -> int:
        return int(self.model.config.text_config.intermediate_size)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.text_config.num_hidden_layers)

    # -- encode -------------------------------------------------------------------------------
    @property
    def preprocessing(self):
        """How the encoder turns frames into pixels (the family's preprocessing settings)."""
        return self.encoder.preprocessing

    def encode(
        self, frames: np.ndarray | torch.Tensor, timestamps: Sequence[float] | None = None
    ) -> EncodedVideo:
        return self.encoder.encode(frames, timestamps)

    def encode_batch(
        self,
        videos: Sequence[np.ndarray | torch.Tensor],
        timestamps: Sequence[Sequence[float] | None] | None = None,
    ) -> list[EncodedVideo]:
        return self.encoder.encode_batch(videos, timestamps)

    # -- the prompt ---------------------------------------------------------------------------
    def _system_message(self, text: str) -> dict:
        """The system turn in the form the family's chat template reads (HF's multimodal
        content parts here; a template that wants a plain string overrides this)."""
        return {"role": "system", "content": [{"type": "text", "text": text}]}

    def chat_messages(self, question: Question, text: Callable[[str], str] = str) -> list[dict]:
        """The conversation in HF chat-template form: the system turn (if any), the earlier
        turns, the question; the video part opens the first user turn. `text` maps each piece
        of user-supplied text to what the template should print in its place."""
        messages = [self._system_message(text(question.system))] if question.system else []
        turns = [*question.history, Turn("user", question.text)]
        for i, turn in enumerate(turns):
            content: list[dict] = [{"type": "text", "text": text(turn.text)}]
            if i == 0 and question.time_span is not None:
                timeline = timeline_text(question.token_set, question.time_span)
                content.insert(0, {"type": "text", "text": timeline})
            if i == 0:
                content.insert(0, {"type": "video"})
            messages.append({"role": turn.role, "content": content})
        return messages

    def prompt_ids(self, question: Question) -> tuple[list[int], list[int]]:
        """Token ids of the chat prompt before and after the single video placeholder token
        (`model.config.video_token_id`), where the token set's tokens go.

        User-supplied text (question, system prompt, earlier turns) is text, never markup
        (decision, issue 12): the template is rendered with a placeholder in place of each piece,
        the template's own markup is tokenized as usual (its special tokens are meant), and each
        piece on its own with special-token parsing off, so "<video>" or "<|im_end|>" typed by a
        user cannot open a second video slot or end a turn. A tokenizer that has no other way to
        spell such a string than its control token (a word-level vocabulary that lists it as a
        word) makes that text an `InvalidQuestion` instead.
        """
        rendered, pieces, names = self._rendered_template(question)
        ids: list[int] = []
        for i, part in enumerate(_PLACEHOLDER_PATTERN.split(rendered)):
            if i % 2:  # the split keeps each placeholder's number at the odd positions
                ids += self._plain_text_ids(pieces[int(part)], names[int(part)])
            elif part:
                ids += self.tokenizer(part, add_special_tokens=False)["input_ids"]
        video_token = self.model.config.video_token_id
        slots = [i for i, token in enumerate(ids) if token == video_token]
        if len(slots) != 1:
            raise ValueError(
                f"the chat template must place exactly one video token, found {len(slots)}"
            )
        return ids[: slots[0]], ids[slots[0] + 1 :]

    def prompt_text(self, question: Question) -> str:
        """The chat prompt as text, the user's pieces in place (what `prompt_ids` tokenizes; for
        reading and for comparing against a reference template)."""
        rendered, pieces, _ = self._rendered_template(question)
        return _PLACEHOLDER_PATTERN.sub(lambda match: pieces[int(match.group(1))], rendered)

    def _rendered_template(self, question: Question) -> tuple[str, list[str], list[str]]:
        """The chat template rendered with a placeholder for each user-supplied piece, the
        pieces, and what each piece is (for the error that names it), in `chat_messages`' order."""
        if not isinstance(question.text, str) or not question.text.strip():
            raise InvalidQuestion("a question needs non-empty text")
        pieces: list[str] = []

        def placeholder(text: str) -> str:
            pieces.append(text)
            return _PLACEHOLDER.format(len(pieces) - 1)

        names = ["the system prompt"] if question.system else []
        names += [f"earlier turn {i + 1}" for i in range(len(question.history))]
        names.append("the question")
        rendered = self.tokenizer.apply_chat_template(
            self.chat_messages(question, placeholder), add_generation_prompt=True, tokenize=False
        )
        return rendered, pieces, names

    @cached_property
    def _text_tokenizer(self) -> Tokenizer:
        """A copy of the backend tokenizer that reads special-token strings as plain text (a copy:
        flipping the shared tokenizer's flag per call would race between threads)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TypeError(f"{type(self.tokenizer).__name__} is not a fast (tokenizers) tokenizer")
        copy = deepcopy(backend)
        copy.encode_special_tokens = True
        return copy

    @cached_property
    def _control_token_ids(self) -> frozenset[int]:
        """Ids that user text must never produce: the special tokens (not <unk>, which a
        word-level vocabulary gives every unknown word) and the video placeholder."""
        tokenizer = self.tokenizer
        ids = set(tokenizer.all_special_ids)
        ids.update(i for i, token in tokenizer.added_tokens_decoder.items() if token.special)
        ids.add(self.model.config.video_token_id)
        ids.discard(tokenizer.unk_token_id)
        return frozenset(ids)

    def _plain_text_ids(self, text: str, name: str) -> list[int]:
        ids = self._text_tokenizer.encode(text, add_special_tokens=False).ids
        reserved = sorted({i for i in ids if i in self._control_token_ids})
        if reserved:
            tokens = ", ".join(repr(self.tokenizer.convert_ids_to_tokens(i)) for i in reserved)
            raise InvalidQuestion(
                f"{name} contains {tokens}, which this model's tokenizer can only read as a "
                "control token; rephrase without it"
            )
        return ids

    def _check_token_set(self, token_set: TokenSet) -> None:
        if token_set.model_id and token_set.model_id != self.model_id:
            raise ValueError(
                f"token set was encoded by {token_set.model_id!r}, this model is {self.model_id!r}"
            )
        if token_set.hidden_size != self.hidden_size:
            raise ValueError(
                f"token set has hidden size {token_set.hidden_size}, the LLM {self.hidden_size}"
            )

    def _embed_prompt(self, question: Question) -> EmbeddedPrompt:
        """The question's prompt ids embedded, and its (checked) token set's tokens beside them:
        the pieces every `prompt_sequence` arranges."""
        self._check_token_set(question.token_set)
        prefix, suffix = self.prompt_ids(question)
        embed = self.model.model.language_model.embed_tokens
        text = embed(torch.tensor(prefix + suffix, dtype=torch.long, device=self.device))
        visual = question.token_set.tokens.to(device=self.device, dtype=text.dtype)
        return EmbeddedPrompt(prefix, suffix, text, visual)

    @abstractmethod
    def prompt_sequence(self, question: Question) -> PromptSequence:
        """The question as the decoder loop's input: embeddings, positions, the visual span."""

    # -- answer -------------------------------------------------------------------------------
    def language_model_parts(self) -> LanguageModelParts:
        return LanguageModelParts(
            language_model=self.model.model.language_model, lm_head=self.model.lm_head
        )

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """The tokenizer's EOS and every EOS id of the checkpoint's generation config
        (Qwen2-based chat models end turns with <|im_end|> and list <|endoftext|> too)."""
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(configured, int):
            configured = [configured]
        ids = set(configured or [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return frozenset(ids)

    def continuous_batch(self, prefix_cache_bytes: int = 0) -> ContinuousBatch:
        """A running decode batch over this model that questions join and leave between steps
        (`compression.models.scheduler`), with a per-video prefix cache of at most
        `prefix_cache_bytes` (0: no prefix reuse)."""
        return ContinuousBatch(
            self.language_model_parts(),
            self.prompt_sequence,
            decode=lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True),
            eos_token_ids=self.eos_token_ids,
            prefix_cache=PrefixCache(prefix_cache_bytes) if prefix_cache_bytes else None,
        )

    def _run(
        self, questions: Sequence[Question], merge: MergeConfig, generation: GenerationConfig
    ) -> GenerationRun:
        with torch.no_grad():
            sequences = [self.prompt_sequence(q) for q in questions]
        return GenerationRun(
            self.language_model_parts(),
            sequences,
            merge,
            generation,
            decode=lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True),
            eos_token_ids=self.eos_token_ids,
        )

    def answer(
        self,
        questions: Sequence[Question],
        merge: MergeConfig = MergeConfig(),
        generation: GenerationConfig = GenerationConfig(),
    ) -> list[Answer]:
        """Answer a batch of questions in one left-padded prefill and shared decoding steps.

        With merge.layer >= num_layers no layer follows the merge point: nothing is merged.
        """
        if not questions:
            return []
        return self._run(questions, merge, generation).run()

    def answer_stream(
        self,
        question: Question,
        merge: MergeConfig = MergeConfig(),
        generation: GenerationConfig = GenerationConfig(),
    ) -> Iterator[str | Answer]:
        """Text pieces as they are decoded, then the final `Answer`."""
        run = self._run([question], merge, generation)
        for pieces in run:
            if pieces[0]:
                yield pieces[0]
        yield run.answers[0]
