"""Run a trained model on batches: MindSpore (our checkpoint, an upstream .pth, a published encoder) or
onnxruntime (an .onnx file export_mindspore.py wrote, with its .json beside it).

Both give, per batch, float32 logits and/or embeddings; `softmax` turns logits into probabilities in float64, as
evaluation does. MindSpore pads a short last batch to the batch size, so one compiled graph serves the run.
"""
import json
import os

import mindspore as ms
import numpy as np

from util_mindspore.compute_policy import apply_policy
from util_mindspore.errors import WeightError
from util_mindspore.trained_model import load_trained_model


def softmax(logits):
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class _LogitsAndEmbedding(ms.nn.Cell):
    """One pass through the blocks for both outputs."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def construct(self, x):
        tokens = self.model.forward_tokens(x)
        return self.model.forward_head(self.model.pool_features(tokens)), self.model.pool_embedding(tokens)


class MindSporeRuntime:
    def __init__(self, args, policy, want_embedding):
        trained = load_trained_model(args.resume, args.model, args.nb_classes, args.input_size, args.global_pool,
                                     with_head=None if want_embedding else True, cache_dir=args.weights_cache_dir)
        self.model, self.batch_size = trained.model, args.batch_size
        self.class_names, self.input_size = trained.class_names, trained.input_size
        self.embedding_dim = self.model.num_features if want_embedding else None
        self.description = f"{trained.name} from {trained.source} (MindSpore, {policy_name(policy)})"
        apply_policy(self.model, policy)
        self.net = _LogitsAndEmbedding(self.model)

    def __call__(self, images):
        """(logits or None, embeddings or None) for a batch of preprocessed images."""
        n = len(images)
        if n < self.batch_size:
            images = np.concatenate([images, np.zeros((self.batch_size - n,) + images.shape[1:], images.dtype)])
        logits, embedding = self.net(ms.Tensor(images))
        logits = logits.asnumpy()[:n].astype(np.float32) if self.class_names else None
        return logits, embedding.asnumpy()[:n].astype(np.float32) if self.embedding_dim else None


def policy_name(policy):
    return "float32" if not policy.reduced else f"{policy.matmul} matmuls"


class OnnxRuntime:
    """An exported .onnx: its .json (export_mindspore.py) gives the classes, input size and output kind."""

    def __init__(self, args, want_embedding):
        try:
            import onnxruntime
        except ImportError:
            raise WeightError(f"{args.resume}: running an ONNX file needs onnxruntime: pip install -e \".[onnx]\"") \
                from None
        sidecar_path = os.path.splitext(args.resume)[0] + ".json"
        try:
            with open(sidecar_path, encoding="utf-8") as fh:
                sidecar = json.load(fh)
            kind, class_names = sidecar["output"]["kind"], sidecar["output"]["class_names"]
            self.input_size = sidecar["input"]["shape"][-1]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise WeightError(f"{sidecar_path}: the description export_mindspore.py writes beside {args.resume} is "
                              f"missing or unreadable ({exc.__class__.__name__})") from None
        if want_embedding != (kind == "embedding"):
            raise WeightError(f"{args.resume} outputs {kind}s: " + (
                "export the encoder with export_mindspore.py --embeddings" if want_embedding else
                "predict with a file exported without --embeddings, or add --embeddings"))
        if args.input_size and args.input_size != self.input_size:
            raise WeightError(f"--input_size {args.input_size} does not fit {args.resume}, exported for "
                              f"{self.input_size} px")
        fixed = sidecar["input"]["shape"][0]
        if isinstance(fixed, int) and fixed != args.batch_size:
            raise WeightError(f"{args.resume} was exported for batch size {fixed}: use --batch_size {fixed}")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = onnxruntime.InferenceSession(args.resume, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
            raise WeightError(f"{args.resume}: onnxruntime cannot load it ({str(exc).strip().splitlines()[0]})") \
                from None
        self.class_names = None if want_embedding else class_names
        self.embedding_dim = sidecar["output"]["shape"][-1] if want_embedding else None
        self.fixed_batch = fixed if isinstance(fixed, int) else None
        self.input_name = self.session.get_inputs()[0].name
        self.description = f"{args.resume} (onnxruntime, {sidecar.get('model', 'model')})"

    def __call__(self, images):
        n = len(images)
        if self.fixed_batch and n < self.fixed_batch:
            images = np.concatenate([images, np.zeros((self.fixed_batch - n,) + images.shape[1:], images.dtype)])
        out = self.session.run(None, {self.input_name: images})[0][:n]
        if self.embedding_dim:
            return None, out.astype(np.float32)
        return out.astype(np.float32), None
