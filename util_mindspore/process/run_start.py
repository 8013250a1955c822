"""What a training run sets up before any data or model: the device and precision, its rank under msrun, the
log and the seeds (the same initial weights on every rank, as DDP broadcasts rank 0's)."""
import argparse

from util_mindspore.process import device, distributed
from util_mindspore.process.logs import setup_logging
from util_mindspore.process.seeding import seed_everything


def start_run(args: argparse.Namespace, mindspore_folder: str) -> None:
    """Sets args.device, args.amp_level, args.distributed, args.rank and args.world_size; MindSpore's own files
    (compile failures' IR dumps) go to `mindspore_folder`."""
    device.keep_mindspore_files_in(mindspore_folder)
    args.device, args.amp_level = device.configure(args)
    args.distributed, args.rank, args.world_size = distributed.init_distributed_mode()
    setup_logging(args.rank)
    seed_everything(args.seed)
