import os
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Tests never reach HuggingFace. huggingface_hub reads these at import, so they are set before any test
# module imports it: a dead loopback port as endpoint, and a throw-away HF_HOME.
_SESSION_HOME = tempfile.mkdtemp(prefix="retfound_ms_tests_")
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
os.environ["HF_HOME"] = os.path.join(_SESSION_HOME, "hf_home")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_TOKEN", None)
os.environ.pop("HF_HUB_OFFLINE", None)
# MindSpore writes rank_<n>/om/analyze_fail.ir beside the process on a compile error: keep the checkout clean
os.environ.setdefault("MS_OM_PATH", os.path.join(_SESSION_HOME, "mindspore"))


def pytest_configure(config):
    config.addinivalue_line("markers", "vitl: runs a full ViT-L (slow on CPU); deselect with -m 'not vitl'")
    config.addinivalue_line("markers", "msrun: launches several processes with msrun")


@pytest.fixture(autouse=True)
def _isolated_caches(monkeypatch, tmp_path):
    """Each test gets its own converted-weights cache and HuggingFace cache, and no compile cache (many runs
    share one pytest process; tests that want it pass --compile_cache_dir)."""
    monkeypatch.setenv("RETFOUND_MS_CACHE", str(tmp_path / "ms_cache"))
    monkeypatch.setenv("RETFOUND_MS_COMPILE_CACHE", "off")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    try:
        import huggingface_hub.constants as hf_constants
    except ImportError:
        return
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))


def pytest_terminal_summary(terminalreporter):
    try:
        from tests.parity import FIGURES
    except Exception:
        return
    if FIGURES:
        terminalreporter.section("parity figures (max |diff| against the PyTorch reference)")
        for what, value in FIGURES:
            terminalreporter.write_line(f"{what:<70} {value:.3e}")


@pytest.fixture
def hub(monkeypatch):
    """A loopback HuggingFace hub (gated repos accept helpers.TOKEN), used as HF_ENDPOINT for the test."""
    from tests.helpers import TOKEN
    from tests.hf_server import FakeHub, use_endpoint

    with FakeHub(token=TOKEN) as server:
        use_endpoint(monkeypatch, server.endpoint)
        yield server
