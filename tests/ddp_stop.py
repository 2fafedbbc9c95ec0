"""A torchrun entry point for tests/test_distributed.py: `fsan ARGS` with a KeyboardInterrupt on
every rank just before optimizer step STOP + 1, as Ctrl-C would give.

    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_stop.py STOP train ...
"""

import sys

from fsan_cli.app import main
from fsan_cli.train import loop as training

stop = int(sys.argv.pop(1))
real = training.one_step


def one_step(run, state, *args):
    if state.step == stop:
        raise KeyboardInterrupt
    return real(run, state, *args)


training.one_step = one_step  # the name run_epochs calls
main()
