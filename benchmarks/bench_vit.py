"""Time one framework on one ViT workload; prints one JSON line (img_per_s median, first_step_s, peak_rss_mb).

    python benchmarks/bench_vit.py --framework mindspore --model RETFound_mae --mode train --batch_size 2
    python benchmarks/bench_vit.py --framework torch --model RETFound_mae --mode infer --batch_size 4
    python benchmarks/bench_vit.py --framework onnxruntime --exported RETFound_mae.onnx --batch_size 4
    python benchmarks/bench_vit.py --framework openvino --exported RETFound_mae.xml --precision bfloat16
    python benchmarks/bench_vit.py --framework mindspore --model mae_vit_large_patch16 --mode pretrain --batch_size 4

The MindSpore side runs the code path main_finetune_mindspore.py runs (same model, TrainStep, AdamW with
layer-decay groups), or main_pretrain_mindspore.py's for `--mode pretrain` (the MAE, AdamW betas 0.9 / 0.95 with
weight-decay groups); the torch side is the upstream-equivalent model from tests/ trained as upstream does
(param_groups_lrd or add_weight_decay + torch.optim.AdamW), with the same masking noise.
The first step and --warmup more are excluded from the median, for both frameworks: MindSpore's CPU kernels try
splitting their work into 1, 2, 4... parts for 5 calls each before keeping the fastest (ParallelLaunchAutoSearch,
per graph node), so a process's first ~10 steps run partly on one core (ViT-L inference, batch 4: 3.7-5.0 s per
step in steps 2-9, then 3.2-3.5 s).
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_mindspore(args, images, labels):
    import mindspore as ms

    from util_mindspore.data.mixup import one_hot
    from util_mindspore.models.compute_policy import apply_policy, needs_loss_scaling, policy_for
    from util_mindspore.models.factory import create_model
    from util_mindspore.process.compile_cache import cache_root, enable_compile_cache
    from util_mindspore.training.lr_decay import param_groups_lrd, param_groups_weight_decay
    from util_mindspore.training.optim import AdamW
    from util_mindspore.training.train_step import ClassifierLoss, MaeLoss, TrainStep
    ms.set_context(mode=ms.GRAPH_MODE)
    enable_compile_cache(cache_root(args), key={k: v for k, v in vars(args).items() if k != "steps"})
    scaling = needs_loss_scaling(args.amp_level, "float16")
    x, lr = ms.Tensor(images), ms.Tensor(1e-4, ms.float32)
    if args.mode == "pretrain":
        model = create_model(args.model, img_size=args.input_size)
        apply_policy(model, policy_for(args.amp_level, "float16", "CPU"))
        scales, decays = param_groups_weight_decay(model, 0.05)
        step = TrainStep(MaeLoss(model, 0.75), AdamW(model.trainable_params(), scales, decays, betas=(0.9, 0.95)),
                         loss_scaling=scaling)  # as main_pretrain_mindspore.py
        step.set_train(True)
        noise = ms.Tensor(masking_noise(args.batch_size, model.num_patches))
        return lambda: step(x, noise, lr, True)[0].asnumpy()
    model = create_model(args.model, img_size=args.input_size, num_classes=args.num_classes,
                                              drop_path_rate=0.1 if args.mode == "train" else 0.0)
    apply_policy(model, policy_for(args.amp_level, "float16", "CPU"))
    if args.mode == "infer":
        model.set_train(False)
        return lambda: model(x).asnumpy()
    scales, decays, _ = param_groups_lrd(model, 0.05, model.no_weight_decay(), 0.65)
    step = TrainStep(ClassifierLoss(model), AdamW(model.trainable_params(), scales, decays), clip_grad=None,
                     loss_scaling=scaling)  # as main_finetune_mindspore.py
    step.set_train(True)
    y = ms.Tensor(one_hot(labels, args.num_classes))
    return lambda: step(x, y, lr, True)[0].asnumpy()


def run_torch(args, images, labels):
    import torch

    from util_mindspore.reference.torch_models import (
        create_mae_reference,
        create_reference,
        upstream_add_weight_decay,
        upstream_param_groups_lrd,
    )
    torch.set_num_threads(args.threads)
    x = torch.from_numpy(images)
    if args.mode == "pretrain":
        mae = create_mae_reference(args.model, img_size=args.input_size).train()
        mae_optimizer = torch.optim.AdamW(upstream_add_weight_decay(mae, 0.05), lr=1e-4, betas=(0.9, 0.95))
        noise = torch.from_numpy(masking_noise(args.batch_size, mae.patch_embed.num_patches))

        def pretrain():  # upstream engine_pretrain.py's step, fp32 (its GradScaler is off without CUDA)
            mae_optimizer.zero_grad()
            loss = mae(x, 0.75, noise)[0]
            loss.backward()
            mae_optimizer.step()
            return loss.item()
        return pretrain
    model = create_reference(args.model, img_size=args.input_size, num_classes=args.num_classes,
                             drop_path_rate=0.1 if args.mode == "train" else 0.0)
    if args.mode == "infer":
        model.eval()

        def infer():
            with torch.no_grad():
                return model(x).numpy()
        return infer
    groups = upstream_param_groups_lrd(model, 0.05, model.no_weight_decay(), 0.65)
    optimizer = torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups], lr=1e-4)
    y = torch.from_numpy(labels).long()
    model.train()

    def train():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()
    return train


def run_onnxruntime(args, images, labels):
    """An exported ONNX file (benchmarks/bench_export.py writes it) in onnxruntime's CPU provider."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = onnxruntime.InferenceSession(args.exported, options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"images": images})[0]


def run_openvino(args, images, labels):
    """An exported OpenVINO IR (.xml) compiled for the CPU at --precision (the hint predict_mindspore.py sets; without
    MindSpore in the process, as a deployment runs it)."""
    import openvino

    hint = {"float32": "f32", "bfloat16": "bf16"}[args.precision]
    compiled = openvino.Core().compile_model(args.exported, "CPU", {"INFERENCE_PRECISION_HINT": hint})
    return lambda: compiled(images)[0]


def run_mindir(args, images, labels):
    """An exported MindIR file reloaded as a deployer does: nn.GraphCell(ms.load(...))."""
    import mindspore as ms

    graph = ms.nn.GraphCell(ms.load(args.exported))
    x = ms.Tensor(images)
    return lambda: graph(x).asnumpy()


def masking_noise(batch, patches):
    """One fixed draw of upstream's random_masking noise, the same for both frameworks."""
    return np.random.default_rng(1).random((batch, patches), dtype=np.float32)


RUNNERS = {"mindspore": run_mindspore, "torch": run_torch, "onnxruntime": run_onnxruntime, "mindir": run_mindir,
           "openvino": run_openvino}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", required=True, choices=sorted(RUNNERS))
    parser.add_argument("--exported", default=None, help="the .onnx / .mindir / .xml file (onnxruntime, mindir, "
                        "openvino)")
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16"], help="OpenVINO's")
    parser.add_argument("--model", default="RETFound_mae")
    parser.add_argument("--mode", default="infer", choices=["infer", "train", "pretrain"])
    parser.add_argument("--batch_size", default=4, type=int)
    parser.add_argument("--input_size", default=224, type=int)
    parser.add_argument("--num_classes", default=5, type=int)
    parser.add_argument("--amp_level", default="O0", choices=["O0", "O1", "O2", "O3"])
    parser.add_argument("--steps", default=5, type=int, help="timed steps after the warm-up ones")
    parser.add_argument("--warmup", default=10, type=int, help="untimed steps after the first one")
    parser.add_argument("--threads", default=os.cpu_count(), type=int)
    parser.add_argument("--compile_cache_dir", default=None,
                        help="MindSpore compile cache, as main_finetune_mindspore.py (on by default; 'off')")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.batch_size, 3, args.input_size, args.input_size)).astype(np.float32)
    labels = rng.integers(0, args.num_classes, args.batch_size).astype(np.int32)
    started = time.perf_counter()
    step = RUNNERS[args.framework](args, images, labels)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    step()
    first_step_s = time.perf_counter() - started
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    print(json.dumps({"framework": args.framework, "model": args.model, "mode": args.mode,
                      "batch_size": args.batch_size, "input_size": args.input_size, "amp_level": args.amp_level,
                      "precision": args.precision,
                      "warmup": args.warmup, "img_per_s": round(args.batch_size / median, 3),
                      "step_s": round(median, 3), "first_step_s": round(first_step_s, 1), "build_s": round(build_s, 1),
                      "peak_rss_mb": round(peak_rss_mb())}))


if __name__ == "__main__":
    main()
