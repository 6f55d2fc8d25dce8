import pytest
import torch

from myvae.module import _likelihood


@pytest.fixture(params=["row loops", "torch operations"])
def fused_likelihood_path(request, monkeypatch):
    """Run a test of the fused likelihood once with the compiled row loops (the CPU default) and once without."""
    monkeypatch.setattr(_likelihood, "_ROW_LOOPS", request.param == "row loops")
    return request.param


@pytest.fixture(
    params=[
        "cpu",
        pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
    ]
)
def device(request) -> torch.device:
    """The device a single-precision computation runs on: the CPU, and a CUDA GPU where there is one."""
    return torch.device(request.param)
