"""Attention rollout and Grad-CAM against the same computations on the upstream PyTorch model (hooks)."""
import numpy as np
import pytest
import torch

from tests.parity import assert_within, mindspore_twin, random_images, relative_error
from util_mindspore.inference.heatmaps import attention_rollout, grad_cam, save_heatmap_figure, to_grid
from util_mindspore.reference.torch_models import create_reference, explicit_attention, numpy_state_dict, randomize_


def upstream_rollout(model, images):
    """Rollout from the attention probabilities timm's blocks compute (hooked after their softmax)."""
    seen = []
    hooks = [blk.attn.attn_drop.register_forward_hook(lambda m, i, out: seen.append(out.detach()))
             for blk in model.blocks]
    with torch.no_grad():
        model(torch.from_numpy(images))
    for h in hooks:
        h.remove()
    result = None
    for attn in seen:
        a = attn.double().mean(dim=1)
        a = a + torch.eye(a.shape[-1], dtype=a.dtype)
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else torch.matmul(a, result)
    return result.numpy()


def upstream_grad_cam(model, images, targets):
    """Grad-CAM on the tokens the last block reads (its norm1 output, pytorch-grad-cam's ViT target layer),
    gradients by autograd through upstream's own head."""
    kept = {}

    def keep(module, inputs, output):
        output.retain_grad()
        kept["tokens"] = output

    hook = model.blocks[-1].norm1.register_forward_hook(keep)
    logits = model(torch.from_numpy(images))
    hook.remove()
    logits[torch.arange(len(targets)), torch.as_tensor(targets)].sum().backward()
    tokens, grads = kept["tokens"].detach().double()[:, 1:], kept["tokens"].grad.double()[:, 1:]
    return torch.relu((tokens * grads.mean(dim=1, keepdim=True)).sum(dim=-1)).numpy()


@pytest.mark.parametrize("name, size, depth", [("vit_tiny_patch16", 64, None), ("RETFound_mae", 64, 2),
                                               ("RETFound_dinov2", 56, 2)])
def test_rollout_and_grad_cam_match_upstream(name, size, depth):
    upstream = explicit_attention(randomize_(create_reference(name, img_size=size, num_classes=3, depth=depth), 5))
    upstream.eval()
    extra = {"depth": depth} if depth else {}
    model = mindspore_twin(name, numpy_state_dict(upstream), img_size=size, num_classes=3, **extra)
    images = random_images(2, size, seed=4)
    ours = attention_rollout(model, images)
    reference = upstream_rollout(upstream, images)
    tokens = (size // (14 if "dinov2" in name else 16)) ** 2 + 1
    assert ours.shape == reference.shape == (2, tokens, tokens)
    assert np.allclose(ours.sum(axis=-1), 1.0)
    assert_within(f"attention rollout {name}", relative_error(ours, reference), 1e-6)
    cams, targets = grad_cam(model, images, targets=[2, 0])
    expected = upstream_grad_cam(upstream, images, [2, 0])
    assert list(targets) == [2, 0] and (expected > 0).mean() > 0.2  # a map, not all zeros
    assert_within(f"Grad-CAM {name} (relative)", relative_error(cams, expected), 5e-6)
    _, chosen = grad_cam(model, images)
    assert list(chosen) == list(np.argmax(upstream(torch.from_numpy(images)).detach().numpy(), axis=1))


def test_heatmap_figure_is_written(tmp_path):
    from PIL import Image

    picture = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    maps = to_grid(np.random.default_rng(1).random((2, 16)))
    assert maps.shape == (2, 4, 4) and maps.max() == 1.0
    path = str(tmp_path / "eye.png")
    save_heatmap_figure(path, picture, maps[0], maps[1], "glaucoma 0.91")
    with Image.open(path) as shown:
        assert shown.format == "PNG" and shown.size[0] > 3 * 64
    assert [p.name for p in tmp_path.iterdir()] == ["eye.png"]
