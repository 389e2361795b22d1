"""The seeds' PCcheck entry point: training checkpointed by the ckptlab engine.

``python -m training.train_pccheck --training-steps 150 --checkpoint-freq 50 --loss-file a.txt``
"""

import sys

from ckptlab.training.cli import main

if __name__ == "__main__":
    sys.exit(main(default_checkpointer="pccheck", prog="python -m training.train_pccheck"))
