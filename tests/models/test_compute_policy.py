"""Mixed precision: each level's dtypes, and O2 against upstream's model under torch.cuda.amp.autocast()."""
import mindspore as ms
import numpy as np
import pytest

import models_vit_mindspore as M
from tests.parity import assert_within, mindspore_twin, random_images, set_mode
from util_mindspore.errors import ArgumentError
from util_mindspore.models.compute_policy import apply_policy, needs_loss_scaling, policy_for

torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch (pip install -e '.[dev]')")
pytest.importorskip("timm", reason="the PyTorch reference needs timm==0.9.2 (pip install -e '.[dev]')")
from util_mindspore.reference.torch_models import (  # noqa: E402
    create_reference,
    cuda_autocast_on_cpu,
    explicit_attention,
    numpy_state_dict,
    randomize_,
)

F32, F16, BF16 = ms.float32, ms.float16, ms.bfloat16
# Logits within 8 units in the last place of float16 at the logits' magnitude. Both frameworks round the same
# float16 inputs to the same products; they differ where one sums a matmul's products in another order and a
# result lands one unit of float16 the other way. Such one-unit differences, carried through the blocks,
# measured 1-4 units at the logits (ViT-L: 1 unit), while float16 itself moves the logits as far from the
# float32 model's (autocast vs float32: 1-3 units).
AUTOCAST_TOLERANCE = 8 * 2.0 ** -10


def test_levels_follow_the_documented_table():
    assert policy_for("O0") == policy_for("O0", "bfloat16")
    table = {level: policy_for(level, "float16", "CPU") for level in ("O0", "O1", "O2", "O3")}
    as_tuple = {k: (p.matmul, p.matmul_out, p.accurate, p.residual) for k, p in table.items()}
    assert as_tuple == {"O0": (F32, F32, F32, F32), "O1": (F16, F32, F32, F32), "O2": (F16, F16, F32, F32),
                        "O3": (F16, F16, F16, F16)}
    assert policy_for("O2", "bfloat16", "GPU").matmul == BF16
    assert table["O2"].cpu_forms and not policy_for("O2", "float16", "GPU").cpu_forms
    assert not policy_for("O2", "float16", "Ascend").cpu_forms
    assert [needs_loss_scaling(level, "float16") for level in ("O0", "O1", "O2", "O3")] == [False, True, True, True]
    assert not needs_loss_scaling("O2", "bfloat16")  # as torch: bfloat16 has float32's range
    with pytest.raises(ArgumentError, match="--amp_level"):
        policy_for("O4")


def _recorder(dtypes, name):
    def hook(cell, inputs, output):  # returns None: the output is left as it is
        dtypes.setdefault(name, output.dtype)
    return hook


def _torch_output_dtypes(ref, images):
    dtypes = {}
    hooks = [module.register_forward_hook(_recorder(dtypes, name)) for name, module in ref.named_modules() if name]
    with torch.no_grad(), cuda_autocast_on_cpu():
        ref(torch.from_numpy(images))
    for hook in hooks:
        hook.remove()
    return {k: str(v).replace("torch.", "") for k, v in dtypes.items()}


def _our_output_dtypes(model, images):
    dtypes = {}
    for name, cell in model.cells_and_names():
        if name:
            cell.register_forward_hook(_recorder(dtypes, name))
    model(ms.Tensor(images))
    names = {F32: "float32", F16: "float16"}
    return {k: names[v] for k, v in dtypes.items()}


@pytest.mark.parametrize("name,size,kwargs", [("vit_tiny_patch16", 32, dict(depth=2, global_pool=True)),
                                              ("vit_tiny_patch16", 32, dict(depth=2, global_pool=False)),
                                              ("RETFound_dinov2", 28, dict(depth=2))])
def test_o2_gives_every_layer_the_dtype_autocast_gives_it(name, size, kwargs):
    """Layer by layer (patch projection, norms, attention and its qkv / proj, MLP, LayerScale, blocks, head):
    the output dtype of our O2 model equals that of upstream's model under CUDA autocast."""
    set_mode("pynative")  # forward hooks run in PyNative mode
    ref = explicit_attention(create_reference(name, img_size=size, num_classes=3, **kwargs)).eval()
    ours = apply_policy(mindspore_twin(name, numpy_state_dict(ref), img_size=size, num_classes=3, **kwargs),
                        policy_for("O2", "float16", "CPU"))
    images = random_images(2, size)
    theirs, mine = _torch_output_dtypes(ref, images), _our_output_dtypes(ours, images)
    # timm's attn_drop (identity in eval) receives the softmax: its output is the softmax's
    theirs.update({k.replace("attn_drop", "softmax"): v for k, v in theirs.items() if k.endswith("attn_drop")})
    shared = sorted(set(theirs) & set(mine))
    assert {"patch_embed.proj", "blocks.0", "blocks.0.norm1", "blocks.0.attn", "blocks.0.attn.qkv",
            "blocks.0.attn.softmax", "blocks.0.mlp.fc1", "blocks.0.mlp.act", "head"} <= set(shared)
    if name == "RETFound_dinov2":
        assert "blocks.0.ls1" in shared
    assert {k: mine[k] for k in shared} == {k: theirs[k] for k in shared}


@pytest.mark.parametrize("mode", ["pynative", "graph"])
@pytest.mark.parametrize("name,size,depth", [("vit_tiny_patch16", 64, None), ("RETFound_mae", 64, 2),
                                             ("RETFound_dinov2", 56, 2)])
def test_o2_logits_equal_upstream_under_autocast(mode, name, size, depth):
    set_mode(mode)
    kwargs = {} if depth is None else {"depth": depth}
    ref = explicit_attention(randomize_(create_reference(name, img_size=size, num_classes=5, **kwargs), seed=1))
    images = random_images(2, size)
    with torch.no_grad(), cuda_autocast_on_cpu():
        expected = ref.eval()(torch.from_numpy(images)).float().numpy()
    ours = apply_policy(mindspore_twin(name, numpy_state_dict(ref), img_size=size, num_classes=5, **kwargs),
                        policy_for("O2", "float16", "CPU"))
    logits = ours(ms.Tensor(images))
    assert logits.dtype == F16  # the head is a linear: float16 out, as under autocast
    diff = np.abs(logits.asnumpy().astype(np.float32) - expected).max()
    assert_within(f"{name} O2 vs torch autocast float16 ({mode}), in float16 units of max |logit|",
                  diff / (np.abs(expected).max() * 2.0 ** -10), 8)


@pytest.mark.vitl
def test_vit_large_o2_logits_equal_upstream_under_autocast():
    set_mode("graph")
    ref = explicit_attention(randomize_(create_reference("RETFound_mae", img_size=224, num_classes=5), seed=4))
    images = random_images(2, 224, seed=5)
    with torch.no_grad(), cuda_autocast_on_cpu():
        expected = ref.eval()(torch.from_numpy(images)).float().numpy()
    state_dict = numpy_state_dict(ref)
    del ref
    ours = apply_policy(mindspore_twin("RETFound_mae", state_dict, img_size=224, num_classes=5),
                        policy_for("O2", "float16", "CPU"))
    diff = np.abs(ours(ms.Tensor(images)).asnumpy().astype(np.float32) - expected).max()
    assert_within("RETFound_mae O2 vs torch autocast float16 (ViT-L), in float16 units of max |logit|",
                  diff / (np.abs(expected).max() * 2.0 ** -10), 8)


@pytest.mark.parametrize("level", ["O1", "O3"])
def test_other_levels_stay_near_float32(level):
    """O1 rounds only the matmuls; O3 runs everything in float16: both near the float32 logits."""
    set_mode("graph")
    model = M.create_model("vit_tiny_patch16", img_size=32, num_classes=3, depth=2)
    model.set_train(False)
    images = ms.Tensor(random_images(2, 32))
    expected = model(images).asnumpy()
    reduced = M.create_model("vit_tiny_patch16", img_size=32, num_classes=3, depth=2)
    for (_, a), (_, b) in zip(model.parameters_and_names(), reduced.parameters_and_names()):
        b.set_data(ms.Tensor(a.asnumpy()))
    apply_policy(reduced, policy_for(level, "float16", "CPU")).set_train(False)
    logits = reduced(images)
    assert logits.dtype == (F32 if level == "O1" else F16)
    diff = np.abs(logits.asnumpy().astype(np.float32) - expected).max()
    assert 0 < diff <= AUTOCAST_TOLERANCE * np.abs(expected).max()
