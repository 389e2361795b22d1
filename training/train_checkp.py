"""The seeds' baseline entry point: training checkpointed with torch.save + fsync + rename.

``python -m training.train_checkp --training-steps 150 --checkpoint-freq 50 --loss-file a.txt``
"""

import sys

from ckptlab.training.cli import main

if __name__ == "__main__":
    sys.exit(main(default_checkpointer="torchsave", prog="python -m training.train_checkp"))
