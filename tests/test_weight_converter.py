import json
import logging
import multiprocessing
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import models_vit_mindspore as M
from tests.hf_server import FakeHub, use_endpoint
from tests.parity import ms_logits, random_images, record, set_mode
from util_mindspore import torch_pickle
from util_mindspore import weight_converter as wc

torch = pytest.importorskip("torch", reason="writing checkpoints in the published layouts needs torch")
pytest.importorskip("timm", reason="the PyTorch reference needs timm==0.9.2")
from tests import checkpoint_layouts as layouts  # noqa: E402
from tests.torch_reference import create_reference  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "hf_test_token"


@pytest.fixture
def hub(monkeypatch):
    with FakeHub(token=TOKEN) as server:
        use_endpoint(monkeypatch, server.endpoint)
        yield server


def publish(hub, tmp_path, name, writer, **kwargs):
    path = str(tmp_path / f"{name}.pth")
    writer(path, **kwargs)
    hub.add(f"YukunZhou/{name}", f"{name}.pth", path, gated=True)
    return path


def same_random_head(ref, ours):
    """Both sides re-draw the head (std 2e-5, logits near 0); give both one larger head so logits mean something."""
    import mindspore as ms
    rng = np.random.default_rng(8)
    weight = (0.05 * rng.standard_normal(tuple(ref.head.weight.shape))).astype(np.float32)
    bias = (0.05 * rng.standard_normal(tuple(ref.head.bias.shape))).astype(np.float32)
    ours.head.weight.set_data(ms.Tensor(weight))
    ours.head.bias.set_data(ms.Tensor(bias))
    with torch.no_grad():
        ref.head.weight.copy_(torch.from_numpy(weight))
        ref.head.bias.copy_(torch.from_numpy(bias))
    return ref


def assert_logits_equal(ours, ref, size, what):
    images = random_images(2, size, seed=21)
    with torch.no_grad():
        expected = ref.eval()(torch.from_numpy(images)).numpy()
    diff = np.abs(ms_logits(ours, images) - expected).max()
    record(what, diff)
    assert diff <= 1e-4


# --- reading ----------------------------------------------------------------------------------------------

def test_torch_free_reader_gives_the_arrays_torch_load_gives(tmp_path):
    path = str(tmp_path / "mae.pth")
    layouts.mae_pretrained(path)
    with torch.serialization.safe_globals([__import__("argparse").Namespace]):
        expected = torch.load(path, map_location="cpu", weights_only=True)
    ours = torch_pickle.load(path)
    assert ours["epoch"] == 799 and ours["args"].mask_ratio == 0.75 and ours["scaler"]["_growth_tracker"] == 17
    assert set(ours["model"]) == set(expected["model"])
    for key, tensor in expected["model"].items():
        array = ours["model"][key].to_numpy()
        assert array.dtype == np.float32 and array.shape == tuple(tensor.shape)
        np.testing.assert_array_equal(array, tensor.numpy())


def test_torch_free_reader_handles_views_half_and_bfloat16(tmp_path):
    base = torch.randn(4, 6)
    obj = {"view": base[1:3, ::2], "t": base.t(), "half": torch.randn(3).half(), "bf16": torch.randn(5).bfloat16(),
           "long": torch.arange(4), "param": torch.nn.Parameter(torch.randn(2, 2))}
    path = str(tmp_path / "misc.pth")
    torch.save(obj, path)
    ours = torch_pickle.load(path)
    for key, tensor in obj.items():
        np.testing.assert_array_equal(ours[key].to_numpy(), tensor.detach().float().numpy()
                                      if key == "bf16" else tensor.detach().numpy())


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_a_pickle_payload_never_runs(tmp_path, layout):
    """zip files go through our reader, legacy (pre-1.6) ones through torch.load(weights_only=True)."""
    marker = tmp_path / "payload_ran"
    path = str(tmp_path / "evil.pth")
    torch.save({"model": {"cls_token": torch.zeros(1)}, "args": _Payload(marker)}, path,
               _use_new_zipfile_serialization=(layout == "zip"))
    with pytest.raises(wc.WeightError, match="unsafe checkpoint"):
        wc.download_and_convert_weights(path, cache_dir=str(tmp_path / "cache"))
    assert not marker.exists()
    assert not list((tmp_path / "cache").glob("*.ckpt"))


def test_legacy_format_is_read_through_torch(tmp_path):
    path = str(tmp_path / "legacy.pth")
    sd = layouts.mae_pretrained(str(tmp_path / "zip.pth"))
    torch.save({"model": sd}, path, _use_new_zipfile_serialization=False)
    arrays, _, _ = wc.read_ckpt(wc.download_and_convert_weights(path, cache_dir=str(tmp_path / "cache")))
    np.testing.assert_array_equal(arrays["blocks.3.mlp.fc1.weight"], sd["blocks.3.mlp.fc1.weight"].numpy())
    assert not any(k.startswith("decoder") for k in arrays)
    meta = json.load(open(str(tmp_path / "cache" / "legacy.json")))
    assert meta["source_fingerprint"] == "sha256:" + __import__("hashlib").sha256(open(path, "rb").read()).hexdigest()


def test_truncated_checkpoint_is_refused_and_nothing_cached(tmp_path):
    path = str(tmp_path / "mae.pth")
    layouts.mae_pretrained(path)
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)
    with pytest.raises(wc.WeightError, match="unreadable"):
        wc.download_and_convert_weights(path, cache_dir=str(tmp_path / "cache"))
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]


@pytest.mark.parametrize("change", [False, True])
def test_a_local_source_whose_mtime_changed_is_compared_by_its_tensors(tmp_path, change):
    """Saved again (new mtime): the same tensors are a cache hit, one changed value converts again."""
    path = str(tmp_path / "local.pth")
    layouts.mae_pretrained(path)
    obj = torch.load(path, weights_only=False)
    torch.save(obj, path)  # saved by the same torch as below: one object saved twice gives the same pickle
    ckpt = wc.download_and_convert_weights(path)
    stamp, size = os.stat(ckpt).st_mtime_ns, os.path.getsize(path)
    if change:
        obj["model"]["blocks.1.norm1.bias"][3] += 1
    time.sleep(0.01)
    torch.save(obj, path)
    assert os.path.getsize(path) == size
    arrays = wc.read_ckpt(wc.download_and_convert_weights(path))[0]
    assert (os.stat(ckpt).st_mtime_ns != stamp) == change
    np.testing.assert_array_equal(arrays["blocks.1.norm1.bias"], obj["model"]["blocks.1.norm1.bias"].numpy())


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_converted_ckpt_is_the_one_ms_save_checkpoint_writes(tmp_path, monkeypatch, kernel_copy):
    """float32 tensors stored as they lie are copied file to file (copy_file_range, or pread / write where the
    filesystem refuses it); views, offsets into a shared storage, float16 and bfloat16 are read and cast."""
    import errno

    import mindspore as ms
    if not kernel_copy:
        def refuse(*args):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    shared = torch.randn(40)
    sd = {"cls_token": torch.randn(1, 1, 8), "pos_embed": torch.randn(1, 5, 8).half(),
          "patch_embed.proj.weight": torch.randn(8, 3, 2, 2), "patch_embed.proj.bias": shared[8:16],
          "blocks.0.attn.qkv.weight": torch.randn(8, 24).t(), "blocks.0.attn.qkv.bias": shared[16:40],
          "norm.weight": torch.randn(8).bfloat16(), "norm.bias": torch.randn(8), "decoder_embed.bias": shared[:8]}
    path = str(tmp_path / "mixed.pth")
    torch.save({"model": sd}, path)
    copied, copy_extent = [], wc._copy_extent
    monkeypatch.setattr(wc, "_copy_extent", lambda *a: copied.append(a[2]) or copy_extent(*a))
    ckpt = wc.download_and_convert_weights(path, cache_dir=str(tmp_path / "cache"))
    assert sorted(copied) == [4 * 8, 4 * 8, 4 * 8, 4 * 24, 4 * 12 * 8]  # the five contiguous float32 tensors
    expected = str(tmp_path / "expected.ckpt")
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v.float().contiguous().numpy())} for k, v in sd.items()
                        if not k.startswith("decoder")], expected)
    assert open(ckpt, "rb").read() == open(expected, "rb").read()


def test_corrupt_tensor_bytes_are_refused_and_nothing_cached(tmp_path):
    """Storages are read into recycled buffers past zipfile: their CRC-32 is still checked."""
    import zipfile
    path = str(tmp_path / "mae.pth")
    layouts.mae_pretrained(path)
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as fh:
        fh.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(fh.read(4), "<u2")
        fh.seek(info.header_offset + 30 + int(name_len) + int(extra_len) + info.file_size // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x40]))
    with pytest.raises(wc.WeightError, match=r"mae\.pth: unreadable .*CRC"):
        wc.download_and_convert_weights(path, cache_dir=str(tmp_path / "cache"))
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]


def test_layout_rules():
    sd = {"backbone.blocks.1.3.mlp.w12.weight": np.zeros(2), "backbone.blocks.1.3.mlp.w3.bias": np.zeros(2),
          "backbone.cls_token": np.zeros(2), "backbone.mask_token": np.zeros(2), "dino_head.mlp.0.weight": np.zeros(2)}
    converted, layout = wc.checkpoint_filter_fn({"teacher": sd})
    assert layout == "dinov2"
    assert sorted(converted) == ["blocks.3.mlp.fc1.weight", "blocks.3.mlp.fc2.bias", "cls_token"]
    converted, layout = wc.checkpoint_filter_fn({"model": {"module.head.weight": np.zeros(2),
                                                           "decoder_pred.weight": np.zeros(2)}, "epoch": 3})
    assert (sorted(converted), layout) == (["head.weight"], "finetuned")


def test_unknown_name_lists_the_published_ones():
    with pytest.raises(wc.WeightError, match="RETFound_mae_meh.*RETFound_dinov2_shanghai"):
        wc.resolve_source("RETFound_mae_mehh")
    assert wc.resolve_source("someorg/somerepo").filename == "somerepo.pth"
    assert wc.resolve_source("someorg/somerepo/sub/w.safetensors").filename == "sub/w.safetensors"


# --- download, cache, load: the published layouts through the loopback hub ---------------------------------

@pytest.mark.parametrize("size", [224, 256])
def test_mae_published_checkpoint_downloads_once_converts_once_and_matches_upstream(hub, tmp_path, size):
    set_mode("pynative")
    path = publish(hub, tmp_path, "RETFound_mae_meh", layouts.mae_pretrained)
    ours = M.create_model("vit_tiny_patch16", img_size=size, num_classes=3)
    report = wc.load_pretrained_weights(ours, "RETFound_mae_meh", token=TOKEN)
    assert hub.gets() == 1
    assert set(report.missing) == {"fc_norm.weight", "fc_norm.bias"}
    assert set(report.reinitialized) == {"head.weight", "head.bias"}
    assert "norm.weight" in report.unexpected and not any(k.startswith("decoder") for k in report.unexpected)
    assert bool(report.interpolated) == (size != 224)
    ours.set_train(False)
    ref = layouts.upstream_load(create_reference("vit_tiny_patch16", img_size=size, num_classes=3), path)
    assert_logits_equal(ours, same_random_head(ref, ours), size, f"converted MAE layout (tiny) at {size}px")

    started = time.time()
    again = wc.download_and_convert_weights("RETFound_mae_meh", token=TOKEN)
    assert time.time() - started < 1.0
    assert hub.gets() == 1  # a cache hit: a HEAD to check the ETag, no GET, no conversion
    meta = json.load(open(again[:-len(".ckpt")] + ".json"))
    assert meta["layout"] == "mae" and meta["converter_version"] == wc.CONVERTER_VERSION
    assert len(meta["source_sha256"]) == 64 and meta["repo_id"] == "YukunZhou/RETFound_mae_meh"


@pytest.mark.parametrize("chunked", [False, True])
def test_dinov2_teacher_518_to_224_matches_upstream(hub, tmp_path, chunked):
    set_mode("pynative")
    name = "RETFound_dinov2_shanghai" if chunked else "RETFound_dinov2_meh"
    publish(hub, tmp_path, name, layouts.dinov2_pretrained, chunked=chunked, depth=4)
    plain = str(tmp_path / "plain.pth")
    layouts.dinov2_pretrained(plain, chunked=False, depth=4)  # upstream cannot read chunks: compare to plain
    ours = M.create_model("RETFound_dinov2", img_size=224, num_classes=3, depth=4)
    report = wc.load_pretrained_weights(ours, name, token=TOKEN)
    assert report.missing == [] and report.interpolated and set(report.reinitialized) == {"head.weight", "head.bias"}
    ours.set_train(False)
    ref = layouts.upstream_load(create_reference("RETFound_dinov2", img_size=224, num_classes=3, depth=4), plain)
    assert_logits_equal(ours, same_random_head(ref, ours), 224,
                        f"converted DINOv2 teacher 518->224 (depth 4){' chunked' if chunked else ''}")


def test_create_model_pretrained_draws_only_what_the_checkpoint_lacks(tmp_path, monkeypatch):
    """create_model(pretrained=...) gives the model that building and then loading gives, seed for seed,
    without filling the loaded parameters with random values first."""
    from util_mindspore import initializers
    path = str(tmp_path / "mae.pth")
    layouts.mae_pretrained(path)
    kwargs = dict(img_size=32, num_classes=3, global_pool=True)
    np.random.seed(5)
    eager = M.create_model("vit_tiny_patch16", **kwargs)
    wc.load_pretrained_weights(eager, path, cache_dir=str(tmp_path / "cache"))
    filled, initialize = [], initializers.TruncNormal._initialize
    monkeypatch.setattr(initializers.TruncNormal, "_initialize", lambda self, arr: filled.append(arr.shape)
                        or initialize(self, arr))
    np.random.seed(5)
    lazy = M.create_model("vit_tiny_patch16", pretrained=path, weights_cache_dir=str(tmp_path / "cache"), **kwargs)
    assert filled == [(3, 192)]  # the new head only
    expected = dict(eager.parameters_and_names())
    for name, param in lazy.parameters_and_names():
        assert not param.has_init, name
        np.testing.assert_array_equal(param.asnumpy(), expected[name].asnumpy(), err_msg=name)


def test_upstream_finetuned_checkpoint_keeps_its_head_and_matches(tmp_path):
    set_mode("pynative")
    path = str(tmp_path / "checkpoint-best.pth")
    ref = layouts.finetuned(path, num_classes=3)
    ours = M.create_model("vit_tiny_patch16", img_size=224, num_classes=3)
    report = wc.load_pretrained_weights(ours, path)
    assert report.missing == [] and report.unexpected == [] and report.reinitialized == []
    ours.set_train(False)
    assert_logits_equal(ours, ref, 224, "upstream fine-tuned checkpoint-best.pth (tiny)")


def test_changed_source_or_force_converts_again(hub, tmp_path):
    path = publish(hub, tmp_path, "RETFound_mae_natureCFP", layouts.mae_pretrained)
    wc.download_and_convert_weights("RETFound_mae_natureCFP", token=TOKEN)
    layouts.mae_pretrained(path, seed=99)  # the hub now serves another file (new ETag)
    ckpt = wc.download_and_convert_weights("RETFound_mae_natureCFP", token=TOKEN)
    assert hub.gets() == 2
    first_key = wc.read_ckpt(ckpt)[0]["cls_token"]
    expected = torch.load(path, weights_only=False)["model"]["cls_token"].numpy()
    np.testing.assert_array_equal(first_key, expected)
    before = os.stat(ckpt).st_mtime_ns
    time.sleep(0.01)
    wc.download_and_convert_weights("RETFound_mae_natureCFP", token=TOKEN, force=True)
    assert os.stat(ckpt).st_mtime_ns != before


def test_local_file_cache_hit_and_change(tmp_path):
    path = str(tmp_path / "local.pth")
    layouts.mae_pretrained(path)
    ckpt = wc.download_and_convert_weights(path)
    stamp = os.stat(ckpt).st_mtime_ns
    assert wc.download_and_convert_weights(path) == ckpt and os.stat(ckpt).st_mtime_ns == stamp
    layouts.mae_pretrained(path, seed=5)
    wc.download_and_convert_weights(path)
    assert os.stat(ckpt).st_mtime_ns != stamp


def test_gated_repo_without_token_says_how_to_log_in(hub, tmp_path):
    publish(hub, tmp_path, "RETFound_mae_meh", layouts.mae_pretrained)
    with pytest.raises(wc.WeightError, match="gated.*huggingface-cli login.*HF_TOKEN"):
        wc.download_and_convert_weights("RETFound_mae_meh")
    assert not list((tmp_path / "ms_cache").glob("*.ckpt"))


def test_offline_and_not_cached(hub, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants
    publish(hub, tmp_path, "RETFound_mae_meh", layouts.mae_pretrained)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(wc.WeightError, match="not in the HuggingFace cache"):
        wc.download_and_convert_weights("RETFound_mae_meh", token=TOKEN)
    assert hub.gets() == 0


def test_checkpoint_that_does_not_fit_names_the_keys(tmp_path):
    path = str(tmp_path / "dino.pth")
    layouts.dinov2_pretrained(path, depth=2)
    model = M.create_model("vit_tiny_patch16", img_size=224, num_classes=3)
    with pytest.raises(wc.WeightError, match=r"does not fit this model.*cls_token \(1, 1, 1024\)"):
        wc.load_pretrained_weights(model, path)


def _convert_in_child(endpoint, cache, hf_cache, queue):
    os.environ.update(HF_ENDPOINT=endpoint, RETFOUND_MS_CACHE=cache, HF_HUB_CACHE=hf_cache)
    import huggingface_hub.constants as hf_constants
    hf_constants.ENDPOINT, hf_constants.HF_HUB_CACHE = endpoint, hf_cache
    converted = []
    handler = logging.Handler()
    handler.emit = lambda record: converted.append(record.getMessage().startswith("converted"))
    logging.getLogger("retfound.weights").addHandler(handler)
    logging.getLogger("retfound.weights").setLevel(logging.INFO)
    path = wc.download_and_convert_weights("RETFound_mae_meh", token=TOKEN)
    queue.put((path, sum(converted)))


def test_ranks_starting_together_download_and_convert_once(hub, tmp_path):
    publish(hub, tmp_path, "RETFound_mae_meh", layouts.mae_pretrained)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    args = (hub.endpoint, str(tmp_path / "shared_cache"), str(tmp_path / "shared_hf"), queue)
    workers = [ctx.Process(target=_convert_in_child, args=args) for _ in range(2)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert results[0][0] == results[1][0]
    assert sorted(n for _, n in results) == [0, 1]
    assert hub.gets() == 1


# --- the command line ---------------------------------------------------------------------------------------

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
    (["--finetune", "missing/file.pth"], "error: "),
    (["--finetune", "RETFound_mae_meh"], "is gated"),
])
def test_cli_errors_are_one_line(hub, tmp_path, args, message):
    publish(hub, tmp_path, "RETFound_mae_meh", layouts.mae_pretrained)
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(tmp_path / "hf"),
           "RETFOUND_MS_CACHE": str(tmp_path / "cache")}
    done = run_cli(args + ["--model", "vit_tiny_patch16"], env, tmp_path)
    assert done.returncode == 1
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not list((tmp_path / "cache").glob("*.ckpt")) if (tmp_path / "cache").exists() else True


def test_a_touched_but_unchanged_local_file_is_a_cache_hit(tmp_path):
    path = str(tmp_path / "local.pth")
    layouts.mae_pretrained(path)
    ckpt = wc.download_and_convert_weights(path)
    stamp = os.stat(ckpt).st_mtime_ns
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10 ** 9))
    assert wc.download_and_convert_weights(path) == ckpt and os.stat(ckpt).st_mtime_ns == stamp
    meta = json.load(open(ckpt[:-len(".ckpt")] + ".json"))
    assert meta["source_identity"]["mtime_ns"] == os.stat(path).st_mtime_ns


def test_streamed_ckpt_writer_and_reader_match_mindspore(tmp_path):
    """Our .ckpt bytes equal ms.save_checkpoint's, and both readers agree, for every kind of entry we store."""
    import mindspore as ms
    rng = np.random.default_rng(0)
    arrays = {"blocks.0.attn.qkv.weight": rng.standard_normal((6, 4)).astype(np.float32),
              "optimizer.step": np.array(3.0, np.float32), "ids": np.arange(5, dtype=np.int64),
              "half": rng.standard_normal(7).astype(np.float16), "strided": np.arange(12, dtype=np.int32)[::2]}
    extra = {"epoch": 4, "best_score": 0.5, "meta": json.dumps({"classes": ["é", "b"]}), "empty": ""}
    ours, theirs = str(tmp_path / "ours.ckpt"), str(tmp_path / "theirs.ckpt")
    wc.save_arrays_ckpt(arrays, ours, append_dict=extra)
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v.copy(order="C"))} for k, v in arrays.items()], theirs,
                       append_dict=dict(extra))
    assert open(ours, "rb").read() == open(theirs, "rb").read()
    assert not os.path.exists(str(tmp_path / "ours.partial.ckpt"))
    fast = wc._read_plain_ckpt(theirs)
    for name, value in ms.load_checkpoint(ours).items():
        if isinstance(value, str):
            assert fast[name] == value, name
        else:  # MindSpore reads a scalar back as shape (1,); we keep its shape ()
            np.testing.assert_array_equal(fast[name].reshape(value.shape), value.asnumpy(), err_msg=name)
            assert fast[name].dtype == value.asnumpy().dtype, name
    model_arrays, state, info = wc.read_ckpt(ours)
    assert info["epoch"] == 4 and info["best_score"] == 0.5 and info["classes"] == ["é", "b"]
    assert set(state) == {"optimizer.step"} and state["optimizer.step"].shape == ()
    np.testing.assert_array_equal(model_arrays["strided"], arrays["strided"])


def test_a_truncated_ckpt_is_reported_in_one_line(tmp_path):
    path = str(tmp_path / "cut.ckpt")
    wc.save_arrays_ckpt({"w": np.ones((64, 64), np.float32)}, path)
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)
    with pytest.raises(wc.WeightError, match=r"cut\.ckpt: unreadable MindSpore checkpoint") as err:
        wc.read_ckpt(path)
    assert "\n" not in str(err.value)
