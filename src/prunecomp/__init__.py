"""prunecomp: Prune&Comp layer pruning with magnitude compensation for Hugging Face causal LMs.

    from prunecomp import prune, PruneConfig
    result = prune(model, tokenizer, PruneConfig(metric="bi", num_layers=5))
    result.model, result.recipe
"""

__version__ = "0.1.0"

from .arch import UnsupportedArchitecture, resolve, supported_model_types  # noqa: E402
from .config import CalibConfig, ConfigError, PruneConfig  # noqa: E402
from .prune import PruneResult, apply_recipe, calibration_windows, prune  # noqa: E402
from .recipe import Recipe, RecipeError, Round  # noqa: E402

__all__ = [
    "CalibConfig",
    "ConfigError",
    "PruneConfig",
    "PruneResult",
    "Recipe",
    "RecipeError",
    "Round",
    "UnsupportedArchitecture",
    "apply_recipe",
    "calibration_windows",
    "prune",
    "resolve",
    "supported_model_types",
]
