"""Shared fixtures: the exported transformer models."""

from __future__ import annotations

import onnx_ir as ir
import pytest

from tests.helpers import EXPORTED_MODELS, FIXTURES


@pytest.fixture(params=EXPORTED_MODELS)
def exported_model(request) -> tuple[str, ir.Model]:
    """Each exported transformer fixture as (name, model)."""
    return request.param, ir.load(FIXTURES / f"{request.param}.onnx")
