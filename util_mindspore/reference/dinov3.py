"""The DINOv3 reference, run in a child process: timm >= 1.0.20 (kept apart from the timm 0.9.2 the rest of the
tests import, in the folder $RETFOUND_TIMM_REFERENCE, default .reference/timm). It loads a Meta-format checkpoint
through timm's own key conversion, as timm loads Meta's weights, and writes the logits.

    python util_mindspore/reference/dinov3.py <timm model> <checkpoint.pth> <depth|full> <img_size> <head.npz> \
        <images.npy> <out.npy>
"""
import os
import subprocess
import sys
from typing import Mapping, Optional

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
TIMM_REFERENCE = os.environ.get("RETFOUND_TIMM_REFERENCE") or os.path.join(ROOT, ".reference", "timm")
TIMM_REFERENCE_VERSION = "1.0.31"
# our registered name -> timm's (the _qkvb variants keep the query and value biases Meta's models have)
TIMM_DINOV3 = {
    "dinov3_vits16": "vit_small_patch16_dinov3_qkvb",
    "dinov3_vits16plus": "vit_small_plus_patch16_dinov3_qkvb",
    "dinov3_vitb16": "vit_base_patch16_dinov3_qkvb",
    "dinov3_vitl16": "vit_large_patch16_dinov3_qkvb",
    "dinov3_vith16plus": "vit_huge_plus_patch16_dinov3_qkvb",
    "dinov3_vit7b16": "vit_7b_patch16_dinov3",
}


def available() -> bool:
    return os.path.isdir(os.path.join(TIMM_REFERENCE, "timm"))


def install_hint() -> str:
    return (f"the DINOv3 reference needs timm {TIMM_REFERENCE_VERSION} apart from timm 0.9.2: pip install --no-deps "
            f"--target {TIMM_REFERENCE} timm=={TIMM_REFERENCE_VERSION} (.ci/run does)")


def reference_logits(name: str, checkpoint: str, depth: Optional[int], img_size: int, head: Mapping[str, np.ndarray],
                     images: np.ndarray, folder: str) -> np.ndarray:
    """Logits of timm's DINOv3 `name` with `checkpoint` (Meta layout) and the given head, in a child process."""
    np.savez(os.path.join(folder, "head.npz"), **head)
    np.save(os.path.join(folder, "images.npy"), images)
    out = os.path.join(folder, "reference.npy")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([TIMM_REFERENCE, ROOT]))
    done = subprocess.run([sys.executable, os.path.abspath(__file__), TIMM_DINOV3[name], checkpoint,
                           str(depth or "full"), str(img_size), os.path.join(folder, "head.npz"),
                           os.path.join(folder, "images.npy"), out], capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return np.load(out)


def main(model_name: str, checkpoint: str, depth: str, img_size: str, head_path: str, images_path: str,
         out_path: str) -> None:
    import timm
    import torch
    assert timm.__version__ == TIMM_REFERENCE_VERSION, timm.__version__
    head = np.load(head_path)
    extra = {} if depth == "full" else {"depth": int(depth)}
    model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay={"file": checkpoint},
                              num_classes=head["weight"].shape[0], global_pool="token", img_size=int(img_size),
                              **extra).eval()
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(head["weight"]))
        model.head.bias.copy_(torch.from_numpy(head["bias"]))
        logits = model(torch.from_numpy(np.load(images_path))).numpy()
    np.save(out_path, logits)


if __name__ == "__main__":
    main(*sys.argv[1:])
