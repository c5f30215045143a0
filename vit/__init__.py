"""vit: a Vision Transformer from scratch in plain PyTorch.

What a notebook needs, from the modules that hold it:

    import vit
    cfg = vit.RECIPES["mnist"].replace(epochs=1)                  # a TrainConfig
    data = vit.tensor_data("mnist", "data", cfg)
    model = vit.VisionTransformer(vit.ViTConfig(**vit.PRESETS["mnist"]))
    results = vit.fit(model, data, cfg, out="runs/mnist-python")
"""

import importlib

# public name -> the module that holds it. Loaded on first use (PEP 562), so that a tool that needs
# little (`python -m vit.predict`) does not load the training stack through this file.
_HOMES = {"TrainConfig": "config", "Data": "data", "folder_data": "data", "tensor_data": "data",
          "load_tensor_dataset": "datasets", "evaluate": "engine", "fit": "engine", "VitError": "errors",
          "PRESETS": "model", "ViTConfig": "model", "VisionTransformer": "model", "count_params": "model",
          "RECIPE_PRESETS": "recipes", "RECIPES": "recipes", "Runtime": "config", "setup_runtime": "runtime",
          "load_checkpoint": "weights", "save_checkpoint": "weights"}

__version__ = "0.1.0"
__all__ = list(_HOMES)


def __getattr__(name: str) -> object:
    """`vit.fit` and the other public names, imported from the module that holds them on first use."""
    if name not in _HOMES:
        raise AttributeError(f"module 'vit' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
