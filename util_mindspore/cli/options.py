"""Command-line pieces every script shares: the help layout (grouped, defaults shown) and one argument group for
the device, precision, jit level and execution mode, so each flag means the same everywhere."""
import argparse
import math
from typing import Iterable, Optional, Sequence, Tuple

from util_mindspore.errors import ArgumentError
from util_mindspore.registry import MODEL_CONFIGS, list_models, upstream_families


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each flag's help; the description and epilog printed as written."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        if action.default in (None, False, "") or action.default is argparse.SUPPRESS:
            return action.help  # "(default: None)" says nothing
        return super()._get_help_string(action)


def new_parser(description: Optional[str], epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """An ArgumentParser with our help layout; the script's docstring is a good description."""
    return argparse.ArgumentParser(description=description, epilog=epilog, formatter_class=HelpFormatter)


def input_size_help(architecture: Optional[str] = None) -> str:
    """--input_size's help: the default is the model's row (util_mindspore/registry.py), listed by size from it."""
    sizes = {}
    for name in sorted(MODEL_CONFIGS):
        config = MODEL_CONFIGS[name]
        if architecture is None and config.is_classifier or config.architecture == architecture:
            sizes.setdefault(config.default_input_size, []).append(name)
    common = max(sizes, key=lambda size: len(sizes[size]))
    others = "; ".join(f"{size} for {', '.join(names)}" for size, names in sorted(sizes.items()) if size != common)
    return (f"image size in pixels (default: the model's row: {common}" + (f"; {others}" if others else "")
            + ")")


def model_choices() -> str:
    """The text --model's help lists: every registered classifier, and upstream's family names."""
    families = ", ".join(f"{family} (with --model_arch {' | '.join(sizes)})"
                         for family, sizes in upstream_families().items())
    return f"one of: {', '.join(list_models())}; or {families}"


ALL_COMPUTE_FLAGS = ("device", "amp_level", "amp_dtype", "jit_level", "mode")
# compute_policy's AMP_LEVELS and AMP_DTYPES names, not imported from there: that loads MindSpore, which a
# prediction from an exported file never needs (tests/cli/test_commands.py checks that they agree)
AMP_LEVELS = ("O0", "O1", "O2", "O3")
AMP_DTYPE_NAMES = ("float16", "bfloat16")


def add_compute_options(parser: argparse.ArgumentParser, flags: Sequence[str] = ALL_COMPUTE_FLAGS,
                        amp_default: str = "auto") -> argparse._ArgumentGroup:
    """The 'device and precision' group: --device, --amp_level, --amp_dtype, --jit_level, --mode (those in `flags`)
    and --verbose. Returns the group."""
    group = parser.add_argument_group("device and precision")
    if "device" in flags:
        group.add_argument("--device", default=None,
                           help="CPU, GPU (also upstream's cuda, cuda:N) or Ascend (npu, npu:N); default: the device "
                                "this MindSpore installation targets")
    if "amp_level" in flags:
        levels = AMP_LEVELS + (("auto",) if amp_default == "auto" else ())
        group.add_argument("--amp_level", default=amp_default, choices=levels,
                           help="mixed precision (util_mindspore/models/compute_policy.py): O0 float32; O2 = "
                                "torch.cuda.amp.autocast; auto: O0 on CPU (float16 is slower there), O2 on GPU/Ascend")
    if "amp_dtype" in flags:
        group.add_argument("--amp_dtype", default="float16", choices=AMP_DTYPE_NAMES,
                           help="reduced precision type of O1-O3; bfloat16 (Ascend 910B, recent GPUs) trains without "
                                "loss scaling")
    if "jit_level" in flags:
        group.add_argument("--jit_level", default=None, choices=["O0", "O1", "O2"],
                           help="MindSpore's JitConfig level (O2: whole-graph sink, Ascend only); default: "
                                "MindSpore's own choice per device")
    if "mode" in flags:
        group.add_argument("--mode", default="graph", choices=["graph", "pynative"],
                           help="MindSpore execution mode")
    group.add_argument("--verbose", action="store_true",
                       help="show MindSpore's own log (its warnings are hidden by default)")
    return group


def add_distributed_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """upstream's distributed flags: msrun sets the real values, these are accepted so upstream's commands run."""
    dist = parser.add_argument_group("distributed (msrun sets the real values; accepted for upstream's commands)")
    dist.add_argument("--world_size", default=1, type=int, help="number of processes (msrun's)")
    dist.add_argument("--local_rank", default=-1, type=int, help="accepted, unused")
    dist.add_argument("--dist_on_itp", action="store_true", help="accepted, unused")
    dist.add_argument("--dist_url", default="env://", help="accepted, unused (msrun sets the rendezvous)")
    dist.add_argument("--pin_mem", action="store_true", help="accepted, unused")
    dist.add_argument("--no_pin_mem", action="store_false", dest="pin_mem", help="accepted, unused")
    parser.set_defaults(pin_mem=True)
    return dist


def check_ranges(args: argparse.Namespace, rules: Iterable[Tuple[str, Optional[float], Optional[float], bool]]) -> None:
    """Refuse values outside their meaning in one line, before anything starts. `rules`: (flag, low, high,
    high_inclusive) with None for an open side; values of None (not given) pass. NaN and infinities are refused
    for every flag a rule names (an open side means any finite number)."""
    problems = []
    for flag, low, high, high_inclusive in rules:
        value = getattr(args, flag, None)
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                problems.append(f"--{flag} {v} is not a finite number")
                continue
            below = low is not None and v < low
            above = high is not None and (v > high if high_inclusive else v >= high)
            if below or above:
                interval = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}" + \
                    ("]" if high_inclusive or high is None else ")")
                problems.append(f"--{flag} {v} is outside {interval}")
    if problems:
        raise ArgumentError("; ".join(problems))
