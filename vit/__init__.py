"""vit: a Vision Transformer from scratch in plain PyTorch.

What a notebook needs, from the modules that hold it:

    import vit
    cfg = vit.RECIPES["mnist"].replace(epochs=1)                  # a TrainConfig
    data = vit.tensor_data("mnist", "data", cfg)
    model = vit.VisionTransformer(vit.ViTConfig(**vit.PRESETS["mnist"]))
    results = vit.fit(model, data, cfg, out="runs/mnist-python")
"""

from .config import TrainConfig
from .data import Data, folder_data, load_tensor_dataset, tensor_data
from .engine import evaluate, fit
from .formats import VitError
from .model import PRESETS, ViTConfig, VisionTransformer, count_params
from .recipes import RECIPE_PRESETS, RECIPES
from .runtime import Runtime, setup_runtime
from .weights import load_checkpoint, save_checkpoint

__version__ = "0.1.0"
__all__ = ["TrainConfig", "Data", "folder_data", "load_tensor_dataset", "tensor_data", "evaluate", "fit", "VitError",
           "PRESETS", "ViTConfig", "VisionTransformer", "count_params", "RECIPE_PRESETS", "RECIPES", "Runtime",
           "setup_runtime", "load_checkpoint", "save_checkpoint"]
