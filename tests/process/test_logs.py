"""Run logs: upstream's plain lines on rank 0; other ranks only warnings and their weight load report."""
import logging

from util_mindspore.process.logs import setup_logging


def test_rank_0_logs_every_line_as_it_is_and_other_ranks_stay_quiet(capsys):
    log = setup_logging(0)
    log.info("effective batch size: %d", 16)
    logging.getLogger("retfound.weights").info("loaded 152 tensors")
    assert capsys.readouterr().out == "effective batch size: 16\nloaded 152 tensors\n"

    setup_logging(1)
    log.info("effective batch size: %d", 16)
    logging.getLogger("retfound.weights").info("loaded 152 tensors")
    log.warning("a warning")
    assert capsys.readouterr().out == "loaded 152 tensors\na warning\n"
    setup_logging(0)
    assert len([h for h in log.handlers if getattr(h, "retfound", False)]) == 1  # set up again, not twice
