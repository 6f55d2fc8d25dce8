import pytest

from myvae.module import _likelihood


@pytest.fixture(params=["row loops", "torch operations"])
def fused_likelihood_path(request, monkeypatch):
    """Run a test of the fused likelihood once with the compiled row loops (the CPU default) and once without."""
    monkeypatch.setattr(_likelihood, "_ROW_LOOPS", request.param == "row loops")
    return request.param
