"""Fixtures of the model-side tests: the tiny LLaVA-OV with each attention implementation the
decoder loop supports, and its language-model parts."""

from __future__ import annotations

import pytest

from compression.models.decoder_loop import LanguageModelParts
from compression.models.tiny import build_tiny_llava_onevision


@pytest.fixture(scope="module")
def models() -> dict:
    """The tiny LLaVA-OV with each attention implementation the loop supports."""
    return {impl: build_tiny_llava_onevision(impl)[0] for impl in ("sdpa", "eager")}


@pytest.fixture
def llm(models, request):
    """sdpa unless a test is parametrized with `implementation`."""
    return models[getattr(request, "param", "sdpa")]


@pytest.fixture
def parts(llm):
    return LanguageModelParts(llm.model.language_model, llm.lm_head)
