"""Tests for circuits.tracr_compile: (where tracr is installed) the conversion reproduces
tracr's outputs and the shipped weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from circuits import tracr_compile
from circuits.tracr_models import DATA_DIR, PROGRAMS, load_tracr, tracr_program


@pytest.mark.slow
def test_conversion_reproduces_tracr_and_the_shipped_weights() -> None:
    pytest.importorskip("tracr")
    for name in PROGRAMS:
        assembled = tracr_compile.compile_program(name)
        meta, tensors = tracr_compile.convert(name, assembled)
        program = tracr_program(name)
        assert meta["spec"] == program.spec.model_dump()
        shipped = load_file(str(DATA_DIR / f"tracr_{name}.safetensors"))
        assert shipped.keys() == tensors.keys()
        assert all(torch.equal(shipped[key], tensors[key]) for key in shipped)
        model = load_tracr(name)
        checks = tracr_compile.verify_conversion(assembled, model, program, program.batch())
        assert checks["residual_max_abs_diff"] < 1e-5
        if program.numerical:
            assert checks["output_max_abs_diff"] < 1e-6
        else:
            assert checks["token_agreement"] == 1.0
