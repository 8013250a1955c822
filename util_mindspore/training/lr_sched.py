"""Upstream's per-iteration schedule: linear warmup, then half-cosine down to min_lr."""
import argparse
import math


def learning_rate(epoch: float, args: argparse.Namespace) -> float:
    """lr at fractional epoch `epoch` (= iteration / iterations_per_epoch + epoch index)."""
    if epoch < args.warmup_epochs:
        return args.lr * epoch / args.warmup_epochs
    return args.min_lr + (args.lr - args.min_lr) * 0.5 * (
        1.0 + math.cos(math.pi * (epoch - args.warmup_epochs) / (args.epochs - args.warmup_epochs)))
