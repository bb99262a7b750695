"""Interop tests run once per tiny HF model variant (tests/helpers/hf_models.py builds them)."""
import pytest

from helpers.hf_models import VARIANTS


@pytest.fixture(params=sorted(VARIANTS))
def variant(request) -> str:
    return request.param
