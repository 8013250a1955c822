import os
import shutil
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
os.environ.setdefault("GLOG_v", "3")  # MindSpore's own warnings, as the scripts quiet them
# subprocess runs of the scripts share one compile cache: each graph is compiled once per test session
SUBPROCESS_COMPILE_CACHE = os.path.join(_SESSION_HOME, "compile_cache")

MARKERS = {
    "vitl": "runs a full ViT-L (slow on CPU)",
    "msrun": "launches several processes with msrun",
    "slow": "end-to-end runs in fresh processes (the README's quickstart, signals, notebooks, benchmark) and the "
            "wider sizes of checks the default run makes on the smallest size of each kind",
}
# not a reason to skip: tests/parity.py's figures, selected by .ci/run to run again with the CPU's kernels limited
PARITY = "compares with upstream's PyTorch model at a bound the README states (the default run includes it)"


def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}; the default run skips it, .ci/run runs it")
    config.addinivalue_line("markers", f"parity: {PARITY}")


def pytest_collection_modifyitems(config, items):
    for item in items:  # a test that records parity figures (tests/parity.py) is a parity test
        if getattr(item.module, "assert_within", None) is not None or \
                getattr(item.module, "both_modes", None) is not None:
            item.add_marker(pytest.mark.parity)
    config._retfound_marker_counts = {name: sum(1 for item in items if item.get_closest_marker(name))
                                      for name in MARKERS}


def pytest_terminal_summary(terminalreporter, config):
    counts = getattr(config, "_retfound_marker_counts", {})
    if counts:
        terminalreporter.section("tests by marker (collected in this run)")
        for name, count in counts.items():
            terminalreporter.write_line(f"{name:<6} {count:>4}  {MARKERS[name]}")
    try:
        from tests.parity import FIGURES
    except ImportError:  # the run did not get far enough to import MindSpore
        return
    if FIGURES:
        terminalreporter.section("parity figures (max |diff| against the PyTorch reference, and the bound asserted)")
        for what, value, bound in FIGURES:
            terminalreporter.write_line(f"{what:<72} {value:.3e}  <= {bound:.1e}")
        if os.environ.get("RETFOUND_PARITY_FIGURES"):
            from tests.parity import write_figures
            write_figures(os.environ["RETFOUND_PARITY_FIGURES"])


# Skips whose reason starts with this are about the machine (a GPU backend that loads, a CPU with bfloat16
# kernels): the test does not apply. Every other skip is a missing tool, which RETFOUND_REQUIRE_ALL=1 (set by
# .ci/run) turns into a failure, module-wide skips at collection included.
NOT_APPLICABLE = "not applicable here:"


def _skip_reason(report):
    longrepr = report.longrepr
    return str(longrepr[-1]) if isinstance(longrepr, tuple) else str(longrepr)


def _fail_forbidden_skip(report):
    if os.environ.get("RETFOUND_REQUIRE_ALL") != "1" or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if NOT_APPLICABLE not in reason:
        report.outcome = "failed"
        report.longrepr = f"skipped where every tool is required (RETFOUND_REQUIRE_ALL=1): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_forbidden_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_forbidden_skip(outcome.get_result())


def require(condition, what):
    """Skip when a tool a test needs is missing; where CI provides every tool (RETFOUND_REQUIRE_ALL=1, set by
    .ci/run) the same absence is a failure, so no guarantee goes untested silently."""
    if condition:
        return
    if os.environ.get("RETFOUND_REQUIRE_ALL") == "1":
        pytest.fail(f"{what} is required here (RETFOUND_REQUIRE_ALL=1)")
    pytest.skip(f"{what} is not available")


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


@pytest.fixture
def hub(monkeypatch):
    """A loopback HuggingFace hub (gated repos accept helpers.TOKEN), used as HF_ENDPOINT for the test."""
    from tests.helpers import TOKEN
    from tests.hf_server import FakeHub, use_endpoint

    with FakeHub(token=TOKEN) as server:
        use_endpoint(monkeypatch, server.endpoint)
        yield server


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """A small 3-class data set (8 / 3 / 3 images per class and split, 40 px): shared, never written to."""
    from tests.helpers import make_dataset
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def trained_task(tmp_path_factory, dataset):
    """One training run of the 2-block ViT-Tiny (2 epochs, in this process) whose outputs feed the evaluation,
    resume, linear-probe, prediction, export and damaged-checkpoint tests: (task folder, argv). Tests that change
    its files work on a copy (copy_task)."""
    import main_finetune_mindspore
    from tests.helpers import small_argv
    out = str(tmp_path_factory.mktemp("trained"))
    argv = small_argv(dataset, out, epochs=2)
    assert main_finetune_mindspore.run(argv) == 0
    return os.path.join(out, "t"), argv


@pytest.fixture
def copy_task(trained_task, tmp_path):
    """A copy of the session's trained task folder a test may change: its path."""
    target = tmp_path / "copied" / "t"
    shutil.copytree(trained_task[0], target)
    return str(target)
