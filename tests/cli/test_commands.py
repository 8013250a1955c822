"""The command lines a person reads: grouped help with defaults for every script, console entry points installed
by pip, MindSpore's own log quiet unless --verbose."""
import os
import subprocess
import sys

import pytest

import benchmark_mindspore
import convert_weights_example
import export_mindspore
import mae_visualize_mindspore
import main_finetune_mindspore
import main_pretrain_mindspore
import predict_mindspore
import selfcheck_mindspore
from tests.conftest import require
from tests.helpers import ROOT
from util_mindspore.cli import commands as cli
from util_mindspore.cli import startup

SCRIPTS = {main_finetune_mindspore: ("data", "model", "training", "augmentation", "outputs"),
           main_pretrain_mindspore: ("data", "model", "training", "outputs"),
           predict_mindspore: ("data", "runtime", "outputs"), export_mindspore: ("outputs",),
           selfcheck_mindspore: ("model", "checks"), convert_weights_example: ("weights",),
           mae_visualize_mindspore: (), benchmark_mindspore: ()}


@pytest.mark.parametrize("module", list(SCRIPTS), ids=lambda m: m.__name__)
def test_help_is_grouped_shows_defaults_and_names_the_choices(module, capsys):
    with pytest.raises(SystemExit) as done:
        module.get_args_parser().parse_args(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for group in SCRIPTS[module]:
        assert f"\n{group}" in text, group
    assert "(default: " in text
    if module in (main_finetune_mindspore, predict_mindspore, export_mindspore, selfcheck_mindspore):
        assert "RETFound_dinov2" in text and "dinov3_vitl16" in text  # --model lists its choices


def test_console_commands_are_installed_beside_the_scripts(monkeypatch):
    """Every command pip installed runs its script's entry point; one of them runs from another directory."""
    from importlib.metadata import entry_points
    commands = {ep.name: ep for ep in entry_points(group="console_scripts") if ep.name.startswith("retfound-")}
    expected = {"retfound-train": main_finetune_mindspore, "retfound-pretrain": main_pretrain_mindspore,
                "retfound-predict": predict_mindspore, "retfound-export": export_mindspore,
                "retfound-convert": convert_weights_example, "retfound-selfcheck": selfcheck_mindspore,
                "retfound-reconstruct": mae_visualize_mindspore, "retfound-benchmark": benchmark_mindspore}
    require(commands, "the console commands (pip install -e .)")
    assert sorted(commands) == sorted(expected)
    ran = []
    monkeypatch.setattr(cli, "_run", lambda module_name, signals=True: ran.append(module_name))
    for name, module in expected.items():
        commands[name].load()()
        assert ran[-1] == module.__name__, name
    done = subprocess.run(["retfound-predict", "--help"], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(ROOT))
    assert done.returncode == 0 and "usage: retfound-predict" in done.stdout, done.stderr[-1000:]


def test_the_precision_flags_offer_what_the_policy_knows_and_load_no_mindspore():
    from util_mindspore.cli import options as run_options
    from util_mindspore.models import compute_policy
    assert run_options.AMP_LEVELS == compute_policy.AMP_LEVELS
    assert run_options.AMP_DTYPE_NAMES == tuple(compute_policy.AMP_DTYPES)
    done = subprocess.run([sys.executable, "-c", "import sys, predict_mindspore; print('mindspore' in sys.modules)"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.stdout.strip() == "False", done.stderr[-2000:]


def test_mindspores_own_log_is_quiet_unless_verbose(monkeypatch):
    monkeypatch.delenv("GLOG_v", raising=False)
    monkeypatch.setattr(startup.interrupts, "block_signals", lambda: None)
    startup.prepare_process(["--model", "x"])
    assert os.environ["GLOG_v"] == startup.QUIET_MINDSPORE_LOG
    monkeypatch.delenv("GLOG_v")
    startup.prepare_process(["--verbose"])
    assert "GLOG_v" not in os.environ
    code = "import sys, util_mindspore.cli.commands, util_mindspore.cli.startup; print('mindspore' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.strip() == "False"  # the entry points' module imports no MindSpore: it runs before it loads
