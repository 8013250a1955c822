"""The conversion command line, run as users run it (without torch)."""
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, TOKEN, publish

torch = pytest.importorskip("torch", reason="writing checkpoints in the published layouts needs torch")
pytest.importorskip("timm", reason="the PyTorch reference needs timm==0.9.2")
from util_mindspore.reference import checkpoint_layouts as layouts  # noqa: E402


def run_cli(args, env_extra, tmp_path, block_torch=False):
    env = dict(os.environ, **env_extra)
    env.pop("PYTHONPATH", None)
    if block_torch:  # a `torch` package that cannot be imported stands first on the path
        blocker = tmp_path / "no_torch" / "torch"
        blocker.mkdir(parents=True, exist_ok=True)
        (blocker / "__init__.py").write_text("raise ImportError('torch is blocked for this test')\n")
        env["PYTHONPATH"] = str(blocker.parent)
    return subprocess.run([sys.executable, os.path.join(ROOT, "convert_weights_example.py")] + args,
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600)


def test_cli_converts_a_published_name_without_torch(hub, tmp_path):
    publish(hub, tmp_path, "RETFound_mae_meh", layouts.mae_pretrained)
    env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN, "HF_HUB_CACHE": str(tmp_path / "hf"),
           "RETFOUND_MS_CACHE": str(tmp_path / "cache")}
    done = run_cli(["--finetune", "RETFound_mae_meh", "--model", "vit_tiny_patch16", "--nb_classes", "3"], env,
                   tmp_path, block_torch=True)
    assert done.returncode == 0, done.stderr
    assert "converted checkpoint:" in done.stdout and "RETFound_mae_meh.ckpt" in done.stdout
    assert "load report: loaded" in done.stdout and "finite: True" in done.stdout
    assert os.path.exists(tmp_path / "cache" / "RETFound_mae_meh.ckpt")
    assert hub.gets() == 1


@pytest.mark.parametrize("args,message", [
    (["--finetune", "RETFound_mae_mehh"], "error: unknown checkpoint 'RETFound_mae_mehh'"),
    (["--finetune", "missing/file.pth"], "error: missing/file.pth: no such checkpoint file"),
    (["--finetune", "RETFound_mae_meh"], "is gated"),
])
def test_cli_errors_are_one_line(hub, tmp_path, args, message):
    publish(hub, tmp_path, "RETFound_mae_meh", layouts.mae_pretrained)
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(tmp_path / "hf"),
           "RETFOUND_MS_CACHE": str(tmp_path / "cache")}
    done = run_cli(args + ["--model", "vit_tiny_patch16"], env, tmp_path)
    assert done.returncode == 1
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not list((tmp_path / "cache").glob("*.ckpt"))  # (a cache folder that was never made holds none either)
