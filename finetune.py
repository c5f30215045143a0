"""Fine-tune pretrained ViT weights (timm, Hugging Face or our own safetensors) on an image folder.

    python finetune.py --weights model.safetensors --data path/to/scenes

The command's code is vit/finetune.py (also `python -m vit.finetune`, and what vit.sweep runs): read it there.
"""

from vit.errors import run_cli
from vit.finetune import main

if __name__ == "__main__":
    run_cli(main)
