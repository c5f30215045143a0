"""Train a Vision Transformer from scratch on MNIST, Fashion-MNIST, CIFAR-10 or an image folder.

    python train.py --data mnist --patch manual --pos sin

The command's code is vit/train.py (also `python -m vit.train`, and what vit.sweep runs): read it there.
"""

from vit.errors import run_cli
from vit.train import main

if __name__ == "__main__":
    run_cli(main)
