"""Check this MindSpore installation on your device before a long run: about a minute on a GPU or Ascend.

    python selfcheck_mindspore.py --device GPU                       # ViT-L (RETFound_mae), --amp_level auto
    python selfcheck_mindspore.py --device Ascend --amp_dtype bfloat16 --jit_level O2
    python selfcheck_mindspore.py --device CPU --model vit_tiny_patch16 --input_size 32 --amp_level O2

Builds the model with random weights at your --amp_level / --amp_dtype, compares its forward with the float32
CPU forward of the same weights (run in a child process), takes two train steps, saves and reloads a training
checkpoint, and times inference and training. Prints one PASS / FAIL line per check; exits 1 on any FAIL.
"""
if __name__ == "__main__":  # first, before MindSpore is imported: MindSpore's log (cli/startup.py)
    from util_mindspore.cli import startup as _startup

    _startup.prepare_process(signals=False)

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Callable, List, Optional

import mindspore as ms
import numpy as np

from util_mindspore.checkpoints.ckpt_format import save_arrays_ckpt
from util_mindspore.checkpoints.train_checkpoint import read_checkpoint, save_checkpoint
from util_mindspore.cli.options import add_compute_options, input_size_help, model_choices, new_parser
from util_mindspore.data.mixup import one_hot
from util_mindspore.errors import UserError, first_line
from util_mindspore.models.compute_policy import (
    apply_policy,
    needs_loss_scaling,
    policy_for,
    reduced_precision_tolerance,
)
from util_mindspore.models.factory import create_model
from util_mindspore.process import device
from util_mindspore.process.seeding import seed_everything
from util_mindspore.registry import get_config, resolve_model_name
from util_mindspore.training.lr_decay import param_groups_lrd
from util_mindspore.training.optim import AdamW
from util_mindspore.training.train_step import ClassifierLoss, TrainStep

# |logits - float32 CPU logits| <= FLOAT32_TOLERANCE * max(1, max |logit|) at float32 (the device orders its sums
# differently only); reduced precision: compute_policy.reduced_precision_tolerance
FLOAT32_TOLERANCE = 1e-5
NUM_CLASSES = 5


def get_args_parser() -> argparse.ArgumentParser:
    parser = new_parser(__doc__.split("\n\n")[0])
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="RETFound_mae", metavar="MODEL",
                       help=f"vit_tiny_patch16 is quick; {model_choices()}")
    model.add_argument("--model_arch", default=None, help="the size of --model Dinov2 / Dinov3")
    model.add_argument("--input_size", default=None, type=int, help=input_size_help())
    run = parser.add_argument_group("checks")
    run.add_argument("--batch_size", default=4, type=int, help="images per step")
    run.add_argument("--steps", default=5, type=int, help="timed steps for inference and for training")
    run.add_argument("--seed", default=0, type=int, help="seed of the random weights and images")
    run.add_argument("--runtimes", default="auto",
                     help="CPU runtimes to time beside MindSpore: auto (every one installed: onnxruntime, OpenVINO), "
                          "none, or a comma-separated list")
    run.add_argument("--reference", default=None, help=argparse.SUPPRESS)  # the float32 CPU child process
    add_compute_options(parser)
    return parser


class Report:
    def __init__(self) -> None:
        self.rows = []

    def add(self, check: str, ok: Optional[bool], detail: str) -> None:
        """ok: True (PASS), False (FAIL) or None (a measurement, INFO)."""
        self.rows.append(("INFO" if ok is None else "PASS" if ok else "FAIL", check, detail))
        print(f"{self.rows[-1][0]:<5} {check:<24} {detail}", flush=True)

    @property
    def failed(self) -> bool:
        return any(status == "FAIL" for status, _, _ in self.rows)


def build_model(args: argparse.Namespace, pretrained: Optional[str] = None) -> ms.nn.Cell:
    return create_model(args.model, pretrained=pretrained, img_size=args.input_size, num_classes=NUM_CLASSES)


def reference_forward(args: argparse.Namespace) -> int:
    """Child process: the float32 CPU logits of the saved weights on the saved batch."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    model = build_model(args, pretrained=os.path.join(args.reference, "weights.ckpt"))
    model.set_train(False)
    images = np.load(os.path.join(args.reference, "images.npy"))
    np.save(os.path.join(args.reference, "reference.npy"), model(ms.Tensor(images)).asnumpy())
    return 0


def _run_reference(args: argparse.Namespace, folder: str) -> np.ndarray:
    command = [sys.executable, os.path.abspath(__file__), "--reference", folder, "--model", args.model,
               "--input_size", str(args.input_size)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"the float32 CPU reference process failed: {tail}")
    return np.load(os.path.join(folder, "reference.npy"))


def _images(args: argparse.Namespace, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((args.batch_size, 3, args.input_size, args.input_size)).astype(np.float32)


def _timed(fn: Callable[[], object], steps: int) -> float:
    fn()  # compile and warm up
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - started) / steps


def check(args: argparse.Namespace, report: Report, folder: str) -> None:
    policy = policy_for(args.amp_level, args.amp_dtype, args.device)
    low = args.amp_dtype if policy.reduced else "float32"
    report.add("setup", None, f"MindSpore {ms.__version__} on {args.device}, --amp_level {args.amp_level}, "
                              f"{low}, jit_level {args.jit_level or 'default'}, "
                              f"{'CPU' if policy.cpu_forms else 'plain'} kernel forms, {args.model} "
                              f"{args.input_size}px, batch {args.batch_size}")
    seed_everything(args.seed)
    model = apply_policy(build_model(args), policy)
    model.set_train(False)
    save_arrays_ckpt({n: p.asnumpy() for n, p in model.parameters_and_names()},
                        os.path.join(folder, "weights.ckpt"))
    images = _images(args, args.seed)
    np.save(os.path.join(folder, "images.npy"), images)

    logits = model(ms.Tensor(images)).asnumpy().astype(np.float32)
    expected = _run_reference(args, folder)
    diff = float(np.abs(logits - expected).max())
    magnitude = float(np.abs(expected).max())
    bound = FLOAT32_TOLERANCE * max(1.0, magnitude) if low == "float32" else \
        reduced_precision_tolerance(low, magnitude)
    report.add("forward vs float32 CPU", bool(np.isfinite(logits).all()) and diff <= bound,
               f"max |diff| {diff:.3e} (bound {bound:.3e} at max |logit| {magnitude:.3g})")

    scales, decays, _ = param_groups_lrd(model, 0.05, model.no_weight_decay(), 0.65)
    scaling = needs_loss_scaling(args.amp_level, args.amp_dtype)
    step = TrainStep(ClassifierLoss(model), AdamW(model.trainable_params(), scales, decays), clip_grad=1.0,
                     loss_scaling=scaling)
    step.set_train(True)
    before = {n: p.asnumpy().copy() for n, p in model.parameters_and_names()}
    targets = ms.Tensor(one_hot(np.arange(args.batch_size) % NUM_CLASSES, NUM_CLASSES))
    lr = ms.Tensor(1e-4, ms.float32)
    losses, taken, skipped = [], 0, 0
    while taken < 2 and taken + skipped < 10:  # a float16 step may overflow: GradScaler skips it, halves the scale
        loss, finite, _ = step(ms.Tensor(images), targets, lr, True)
        losses.append(float(loss.asnumpy()))
        taken, skipped = (taken + 1, skipped) if bool(finite.asnumpy()) else (taken, skipped + 1)
    changed = sum(not np.array_equal(p.asnumpy(), before[n]) for n, p in model.parameters_and_names())
    report.add("two train steps", taken == 2 and all(np.isfinite(losses)) and changed > 0,
               f"losses {', '.join(f'{v:.4f}' for v in losses)}; {taken} taken, {skipped} skipped on overflow; "
               f"{changed} of {len(before)} tensors changed")
    scale, good = float(step.loss_scale.asnumpy()), int(step.good_steps.asnumpy())
    expected_scale = 2.0 ** 16 * 0.5 ** skipped if scaling else 2.0 ** 16
    report.add("loss scale state", scale == expected_scale and good == (taken if scaling else 0),
               f"scale {scale:g} (expected {expected_scale:g}), finite steps since change {good}"
               + ("" if scaling else " (no loss scaling at this setting)"))

    path = os.path.join(folder, "checkpoint.ckpt")
    save_checkpoint(path, model, step, 0, 0.0, [f"class_{i}" for i in range(NUM_CLASSES)], args)
    model.set_train(False)
    trained = model(ms.Tensor(images)).asnumpy()
    saved = read_checkpoint(path)
    arrays, state = saved.weights, saved.state
    same = all(np.array_equal(arrays[n], p.asnumpy()) for n, p in model.parameters_and_names())
    reloaded = apply_policy(build_model(args, pretrained=path), policy)
    reloaded.set_train(False)
    again = reloaded(ms.Tensor(images)).asnumpy()
    report.add("checkpoint save / reload", same and len(state) > 0 and np.array_equal(again, trained),
               f"{len(arrays)} weights and {len(state)} optimizer / loss-scale tensors written and read back; "
               f"reloaded logits {'identical' if np.array_equal(again, trained) else 'DIFFER'}")

    batch = ms.Tensor(images)
    infer = _timed(lambda: model(batch).asnumpy(), args.steps)
    report.add("inference speed", None, f"{args.batch_size / infer:.2f} img/s ({infer * 1000:.0f} ms per batch)")
    step.set_train(True)
    train = _timed(lambda: step(batch, targets, lr, True)[0].asnumpy(), args.steps)
    report.add("train speed", None, f"{args.batch_size / train:.2f} img/s ({train * 1000:.0f} ms per step)")
    model.set_train(False)
    time_cpu_runtimes(args, report, model, folder, images)


def installed_runtimes(wanted: str) -> List[str]:
    """The CPU runtimes to time: those of `wanted` (auto: every one) that are installed."""
    names = ["onnxruntime", "openvino"] if wanted == "auto" else [] if wanted == "none" else \
        [n.strip() for n in wanted.split(",") if n.strip()]
    present = []
    for name in names:
        try:
            __import__(name)
            present.append(name)
        except ImportError:
            if wanted != "auto":
                present.append(name)  # asked for by name: its absence is a FAIL below
    return present


def _runner(name: str, path: str, precision: str, images: np.ndarray) -> Callable[[], object]:
    """A function running one batch in `name` (onnxruntime or openvino) on the exported file."""
    if name == "onnxruntime":
        import onnxruntime
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        return lambda: session.run(None, {input_name: images})
    from util_mindspore.inference.runtimes import openvino_model
    compiled = openvino_model(path, precision)
    return lambda: compiled(images)


def time_cpu_runtimes(args: argparse.Namespace, report: Report, model: ms.nn.Cell, folder: str,
                      images: np.ndarray) -> None:
    """Inference speed of the exported model in each CPU runtime installed (OpenVINO in float32, and bfloat16 where
    the CPU has it), each export verified first (util_mindspore/inference/export.py)."""
    from util_mindspore.inference import export
    from util_mindspore.inference.runtimes import openvino_bfloat16_available
    for name in installed_runtimes(args.runtimes):
        fmt = "onnx" if name == "onnxruntime" else name
        try:
            export.check_format_available(fmt)
            check = export.export_verified(model, model, fmt, folder, f"selfcheck_{fmt}", args.input_size)
        except (UserError, ImportError) as exc:
            report.add(f"{name} speed", False, f"not checked: {first_line(exc)}")
            continue
        path = os.path.join(folder, check.files[0])
        precisions = ["float32"] + (["bfloat16"] if name == "openvino" and openvino_bfloat16_available() else [])
        for precision in precisions:
            seconds = _timed(_runner(name, path, precision, images), args.steps)
            report.add(f"{name} {precision} speed", None, f"{args.batch_size / seconds:.2f} img/s "
                                                          f"({seconds * 1000:.0f} ms per batch; export verified to "
                                                          f"{check.max_abs_diff:.1e})")


def run(argv: Optional[List[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.reference:
        return reference_forward(args)
    report = Report()
    try:
        with tempfile.TemporaryDirectory(prefix="retfound_selfcheck_") as folder:
            device.keep_mindspore_files_in(os.path.join(folder, "mindspore"))
            args.model = resolve_model_name(args.model, args.model_arch)
            args.input_size = args.input_size or get_config(args.model).default_input_size
            args.device, args.amp_level = device.configure(args)
            check(args, report, folder)
    except UserError as exc:  # DeviceError, WeightError, a failed reference process
        report.add("error", False, first_line(exc))
    except RuntimeError as exc:  # what MindSpore raises when the device cannot compile or run a graph
        traceback.print_exc()  # the whole of it on stderr: it is what to send with a bug report
        lines = [line for line in str(exc).splitlines() if line.strip(" -")]  # MindSpore's errors open with dashes
        report.add("error", False, lines[0] if lines else type(exc).__name__)
    print(f"self-check: {'FAILED' if report.failed else 'all checks passed'}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(run())
