"""Naming sources, and the hub errors users meet: unknown names, gated repositories, offline."""

import pytest

from tests.helpers import TOKEN, publish
from util_mindspore.checkpoints.conversion import download_and_convert_weights
from util_mindspore.checkpoints.hub import resolve_source
from util_mindspore.errors import WeightError


def layouts():
    """The published layouts (written with torch): only the tests that serve a checkpoint need torch."""
    pytest.importorskip("torch", reason="writing checkpoints in the published layouts needs torch")
    from util_mindspore.reference import checkpoint_layouts
    return checkpoint_layouts


def test_unknown_name_lists_the_published_ones():
    with pytest.raises(WeightError, match="RETFound_mae_meh.*RETFound_dinov2_shanghai"):
        resolve_source("RETFound_mae_mehh")
    assert resolve_source("someorg/somerepo").filename == "somerepo.pth"
    assert resolve_source("someorg/somerepo/sub/w.safetensors").filename == "sub/w.safetensors"


def test_gated_repo_without_token_says_how_to_log_in(hub, tmp_path):
    publish(hub, tmp_path, "RETFound_mae_meh", layouts().mae_pretrained)
    with pytest.raises(WeightError, match="gated.*huggingface-cli login.*HF_TOKEN"):
        download_and_convert_weights("RETFound_mae_meh")
    assert not list((tmp_path / "ms_cache").glob("*.ckpt"))


def test_offline_and_not_cached(hub, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants
    publish(hub, tmp_path, "RETFound_mae_meh", layouts().mae_pretrained)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightError, match="not in the HuggingFace cache"):
        download_and_convert_weights("RETFound_mae_meh", token=TOKEN)
    assert hub.gets() == 0
