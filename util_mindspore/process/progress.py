"""Progress within a long loop (a ViT-L epoch on a CPU takes hours): tqdm with its rate and time left on a
terminal; elsewhere (log files, CI, msrun worker logs) a plain line every `print_freq` steps or every minute, with
the same figures. Only the process that prints (rank 0) shows anything."""
import datetime
import logging
import sys
import time

from tqdm import tqdm

logger = logging.getLogger("retfound")


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class Progress:
    def __init__(self, total: int, header: str, enabled: bool = True, unit: str = "it", print_freq: int = 20,
                 min_interval: float = 60.0) -> None:
        self.total, self.header, self.unit = total, header, unit
        self.print_freq, self.min_interval = max(1, print_freq), min_interval
        self.enabled, self.count = enabled, 0
        self.started = self.last_line = time.time()
        self.bar = None
        if enabled and sys.stdout.isatty():
            self.bar = tqdm(total=total, desc=header, unit=unit, leave=False, dynamic_ncols=True, file=sys.stdout)

    def update(self, n: int = 1, **values: object) -> None:
        """`n` more steps done; `values` (loss, lr, ...) are shown beside the counts."""
        self.count += n
        if not self.enabled:
            return
        text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        if self.bar is not None:
            if text:
                self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(n)
            return
        now = time.time()
        if self.count % self.print_freq and self.count != self.total and now - self.last_line < self.min_interval:
            return
        self.last_line = now
        elapsed = now - self.started
        rate = self.count / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.count) / rate if rate > 0 else 0.0
        logger.info("%s [%d/%d]  %s  %.2f %s/s  elapsed %s  left %s", self.header, self.count, self.total, text,
                    rate, self.unit, _duration(elapsed), _duration(left))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
