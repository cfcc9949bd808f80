"""The generation layer over the decoder loop (tiny LLaVA-OV, CPU, fp32): seeded sampling,
EOS, stop strings and streaming."""

from __future__ import annotations

import pytest
import torch
from loop_inputs import OFF, greedy, ids_text, make_sequence

from compression.config import MergeConfig
from compression.models.generation import GenerationRun, sample_token
from compression.models.interface import GenerationConfig

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def test_seeded_sampling_is_reproducible_and_batch_independent(llm, parts):
    sequences = [make_sequence(llm, 3, 8, 5, seed=11), make_sequence(llm, 1, 5, 7, seed=12)]
    merge = MergeConfig(layer=2)
    sample = {"temperature": 1.3, "top_p": 0.9, "top_k": 20, "seed": 7}
    batch = greedy(parts, sequences, merge, steps=10, **sample)
    again = greedy(parts, sequences, merge, steps=10, **sample)
    single = [greedy(parts, [s], merge, steps=10, **sample)[0] for s in sequences]
    assert [a.token_ids for a in batch] == [a.token_ids for a in again]
    assert [a.token_ids for a in batch] == [a.token_ids for a in single]
    # top_k = 1 leaves one candidate: sampling must then be greedy.
    top1 = greedy(parts, sequences, merge, steps=10, temperature=1.0, top_k=1, seed=3)
    assert [a.token_ids for a in top1] == [a.token_ids for a in greedy(parts, sequences, merge, 10)]


# -- stopping and streaming -------------------------------------------------------------------
def test_eos_stop_strings_and_streaming(llm, parts):
    seq = make_sequence(llm, 3, 8, 5, seed=13)
    reference = greedy(parts, [seq], OFF, steps=8)[0]
    assert reference.finish_reason == "length" and len(reference.token_ids) == 8
    ids = reference.token_ids
    cut = next(i for i in range(1, 8) if ids[i] not in ids[:i])  # first new token after the start

    ended = GenerationRun(
        parts,
        [seq],
        OFF,
        GenerationConfig(max_new_tokens=8),
        decode=ids_text,
        eos_token_ids={ids[cut]},
    ).run()[0]
    assert ended.token_ids == ids[:cut] and ended.finish_reason == "stop"

    stop = f" t{ids[cut]}"
    run = GenerationRun(
        parts,
        [seq],
        OFF,
        GenerationConfig(max_new_tokens=8, stop=(stop,)),
        decode=ids_text,
        eos_token_ids=(),
    )
    pieces = [p[0] for p in run]
    answer = run.answers[0]
    assert answer.finish_reason == "stop"
    assert answer.text == ids_text(ids[:cut])
    assert "".join(pieces) == answer.text
    assert stop not in "".join(pieces)


def test_streamed_pieces_concatenate_to_the_text(llm, parts):
    seq = make_sequence(llm, 2, 6, 4, seed=14)
    run = GenerationRun(
        parts, [seq], OFF, GenerationConfig(max_new_tokens=6), decode=ids_text, eos_token_ids=()
    )
    pieces = [p[0] for p in run]
    assert len(pieces) == 6
    assert "".join(pieces) == run.answers[0].text == ids_text(run.answers[0].token_ids)


# -- sampling ---------------------------------------------------------------------------------
def _logits(seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (torch.randn(128, generator=torch.Generator().manual_seed(seed)) * 8).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": 1e-45},  # float32's smallest subnormal: the division overflowed to inf
        {"temperature": 5e-324},  # float64's
        {"temperature": 1.0, "top_p": 1e-300},  # 0 in float32: even the best token was dropped
        {"temperature": 1.0, "top_p": 5e-324},
        {"temperature": 1e-45, "top_p": 1e-300, "top_k": 3},
    ],
)
def test_tiny_temperature_or_top_p_samples_the_best_token(settings: dict, dtype) -> None:
    generation = GenerationConfig(seed=0, **settings)
    for seed in range(5):
        logits = _logits(seed, dtype)
        generator = torch.Generator().manual_seed(seed)
        assert sample_token(logits, generation, generator) == int(logits.argmax())


def test_top_p_keeps_the_smallest_prefix_reaching_its_mass() -> None:
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    generator = torch.Generator().manual_seed(0)
    for top_p, support in ((0.6, {0, 1}), (0.5, {0}), (0.81, {0, 1, 2}), (1.0, {0, 1, 2, 3})):
        generation = GenerationConfig(temperature=1.0, top_p=top_p)
        drawn = {sample_token(logits, generation, generator) for _ in range(400)}
        assert drawn == support, top_p


def test_huge_logits_and_masked_tokens_sample_cleanly() -> None:
    logits = torch.tensor([3e38, -3e38, float("-inf"), 3e38])
    generation = GenerationConfig(temperature=0.01, seed=1)
    generator = torch.Generator().manual_seed(1)
    assert {sample_token(logits, generation, generator) for _ in range(50)} == {0, 3}
