"""The suite's own rules: where CI requires every tool (RETFOUND_REQUIRE_ALL=1), a skip for a missing tool fails,
module-wide skips included; a test that does not apply to the machine still skips."""
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

PROBE = '''
import pytest
{module_skip}
from tests.conftest import NOT_APPLICABLE

def test_needs_a_tool():
    pytest.importorskip("no_such_tool_xyz")

def test_not_for_this_machine():
    pytest.skip(f"{{NOT_APPLICABLE}} this machine has the hardware")
'''


def run_probe(tmp_path, require_all):
    """The probe's two tests, and a module that skips as a whole at collection."""
    (tmp_path / "test_probe.py").write_text(PROBE.format(module_skip=""))
    (tmp_path / "test_module_skip.py").write_text(PROBE.format(module_skip='pytest.importorskip("no_such_tool_xyz")'))
    env = dict(os.environ, RETFOUND_REQUIRE_ALL="1" if require_all else "0")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
                           "--continue-on-collection-errors", "--rootdir", str(tmp_path), str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("require_all, expected", [(False, "3 skipped"), (True, "1 failed, 1 skipped, 1 error")])
def test_a_missing_tool_fails_only_where_everything_is_required(tmp_path, require_all, expected):
    code, summary = run_probe(tmp_path, require_all)
    assert expected in summary and code == (1 if require_all else 0), summary
