"""A checkpoint exported for OpenVINO once and cached, as converted weights are: `predict --runtime openvino
--resume <.ckpt | .pth | published name>` reuses the IR while the checkpoint, the settings and our code stay the
same. The first export is verified as every export is (util_mindspore/inference/export.py), and its probabilities are
checked against the MindSpore model's to EXPORT_PROBABILITY_TOLERANCE before it is kept.
"""
import hashlib
import json
import logging
import os
import shutil
from typing import TYPE_CHECKING, Callable, Dict, Mapping, Optional, Tuple

import numpy as np

from util_mindspore.checkpoints.conversion import checkpoint_file
from util_mindspore.errors import WeightError
from util_mindspore.evaluation.probabilities import softmax
from util_mindspore.files.atomic import atomic_write
from util_mindspore.files.caches import code_digest, default_cache_dir

if TYPE_CHECKING:
    import mindspore as ms

logger = logging.getLogger("retfound")
EXPORT_PROBABILITY_TOLERANCE = 1e-4  # max |probability difference| of the cached IR against the MindSpore model


def _key(source: str, cache_dir: str, settings: Mapping[str, object]) -> Tuple[str, Dict[str, object]]:
    """What the export depends on: the converted checkpoint (path, size, modification time), the settings, our
    code and OpenVINO's version."""
    import openvino as ov

    checkpoint = checkpoint_file(source, cache_dir)
    st = os.stat(checkpoint)
    identity = {"checkpoint": os.path.abspath(checkpoint), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "settings": settings, "code": code_digest(), "openvino": ov.__version__}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20], identity


def openvino_export(source: str, settings: dict, load: Callable, cache_dir: Optional[str] = None) -> Tuple[str, str]:
    """(xml path, json path) of the checkpoint's OpenVINO IR, exported and verified on first use.

    Args:
        source: what --resume names (our .ckpt, an upstream .pth, a published name).
        settings: what shapes the export (model, classes, input size, pooling, embeddings or logits).
        load: () -> models_vit_mindspore.TrainedModel; called only when the cache has no valid export.
        cache_dir: the weights cache (the export goes to <cache_dir>/openvino/<key>/).
    """
    from filelock import FileLock

    cache_dir = cache_dir or default_cache_dir()
    key, identity = _key(source, cache_dir, settings)
    folder = os.path.join(cache_dir, "openvino", key)
    xml, sidecar = os.path.join(folder, "model.xml"), os.path.join(folder, "model.json")
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with FileLock(folder + ".lock"):
        if os.path.isfile(sidecar) and os.path.isfile(xml):
            return xml, sidecar
        from util_mindspore.inference import export  # MindSpore: only when the cache has no valid export

        trained = load()
        embeddings = settings["embeddings"]
        net = export.EmbeddingNet(trained.model) if embeddings else trained.model
        staging = folder + ".partial"
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        try:
            check = export.export_verified(net, trained.model, "openvino", staging, "model", trained.input_size)
            diff = _probability_check(net, os.path.join(staging, "model.xml"), trained.input_size, embeddings)
            output_dim = trained.model.num_features if embeddings else trained.model.num_classes
            description = export.describe(trained, source, {"openvino": "model.xml"}, {"openvino": check}, None,
                                          output_dim, embeddings)
            description["cache"] = dict(identity, max_probability_diff=diff)
            with atomic_write(os.path.join(staging, "model.json"), encoding="utf-8") as fh:
                json.dump(description, fh, indent=2)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("exported %s for OpenVINO into %s (checked against MindSpore: max |probability diff| %.2e)",
                    source, folder, diff)
    return xml, sidecar


def _probability_check(net: "ms.nn.Cell", xml: str, input_size: int, embeddings: bool) -> float:
    """The IR's probabilities (its outputs, for an encoder) against the MindSpore model's on sample batches."""
    from util_mindspore.inference import export
    inputs = export.sample_inputs((2,), input_size, seed=7)
    reference = export.reference_outputs(net, inputs)[2].astype(np.float32)
    exported = export.run_exported("openvino", xml, inputs)[2]
    diff = float(np.abs(exported - reference).max()) if embeddings else \
        float(np.abs(softmax(exported) - softmax(reference)).max())
    if not diff <= EXPORT_PROBABILITY_TOLERANCE:
        raise WeightError(f"the OpenVINO export of the checkpoint does not reproduce the MindSpore model: max |diff| "
                          f"{diff:.3g} > {EXPORT_PROBABILITY_TOLERANCE:g}; nothing cached")
    return diff
