"""The recipe: what was removed and with which scales, as versioned JSON (prunecomp_recipe.json)."""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .errors import RecipeError, RecipeMismatch

# 2 added source_fingerprint, dtype and warnings; version-1 recipes still load (without them).
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
RECIPE_FILENAME = "prunecomp_recipe.json"
PARTIAL_SUFFIX = ".prunecomp-partial.json"  # resume checkpoints: the rounds finished so far
REQUIRED_KEYS = ("source_model", "model_type", "num_layers_original", "num_layers_removed", "rounds")


@dataclass(frozen=True)
class Round:
    """One removal step.

    removed: original indices of the layers removed in this step (one, or a contiguous block).
    scale: factor folded into every residual writer before the block (1.0 when not compensated).
    scale_note: why the scale is 1.0 when it is.
    candidates / scores: original index of each scored start position and its score
    (None where the barrier excluded it). One-shot rounds share the single scoring pass.
    """

    removed: list[int]
    scale: float
    scale_note: str | None = None
    candidates: list[int] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)


@dataclass
class Recipe:
    source_model: str
    model_type: str
    num_layers_original: int
    metric: str
    num_layers_removed: int
    mode: str  # iterative | one-shot | block
    compensate: bool
    estimator: str
    seed: int
    calibration: dict
    rounds: list[Round] = field(default_factory=list)
    versions: dict = field(default_factory=dict)
    created: str = ""
    schema_version: int = SCHEMA_VERSION
    # What `apply` checks before replaying (None in recipes made without them, e.g. schema 1).
    source_fingerprint: str | None = None
    dtype: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def removed_layers(self) -> list[int]:
        return sorted(i for r in self.rounds for i in r.removed)

    @property
    def kept_layers(self) -> list[int]:
        removed = set(self.removed_layers)
        return [i for i in range(self.num_layers_original) if i not in removed]

    @property
    def total_scale(self) -> float:
        return math.prod(r.scale for r in self.rounds)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["removed_layers"] = self.removed_layers
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict, origin: str = "recipe", *, partial: bool = True) -> "Recipe":
        """Build a recipe from parsed JSON, refusing anything malformed with a message that names it.

        `partial` (the default here, for in-memory round trips of a run in progress): the rounds may
        remove fewer layers than num_layers_removed. `load` is strict for finished recipes.
        """
        validate_recipe_dict(data, origin, partial=partial)
        data = dict(data)
        data.pop("removed_layers", None)
        data["schema_version"] = SCHEMA_VERSION  # upgraded in memory; the new fields default to None
        rounds = [Round(**r) for r in data.pop("rounds")]
        return cls(rounds=rounds, **data)

    @classmethod
    def load(cls, path: str | Path, *, partial: bool | None = None) -> "Recipe":
        """Read and validate a recipe file (or the recipe in a folder). `partial` defaults to True
        for resume checkpoints (`*.prunecomp-partial.json`)."""
        path = Path(path)
        if path.is_dir():
            path = path / RECIPE_FILENAME
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RecipeError(f"no recipe at {path}") from None
        except UnicodeDecodeError:
            raise RecipeError(f"{path} is not a text file; a recipe is the JSON file prunecomp writes ({RECIPE_FILENAME})") from None
        except OSError as exc:
            raise RecipeError(f"cannot read the recipe {path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecipeError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                              f"a recipe is the {RECIPE_FILENAME} that prunecomp writes") from None
        if partial is None:
            partial = path.name.endswith(PARTIAL_SUFFIX)
        return cls.from_dict(data, str(path), partial=partial)


_ROUND_KEYS = {f for f in Round.__dataclass_fields__}
_RECIPE_KEYS = {f for f in Recipe.__dataclass_fields__} | {"removed_layers"}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_recipe_dict(data, origin: str = "recipe", *, partial: bool = False) -> None:
    """Raise RecipeError naming the first problem in a parsed recipe; return None when it is sound."""
    if not isinstance(data, dict):
        raise RecipeError(f"{origin}: expected a JSON object, found a {type(data).__name__}")
    version = data.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise RecipeError(f"{origin}: schema_version {version!r} is not supported; this prunecomp reads "
                          f"{', '.join(map(str, READABLE_VERSIONS))} (a newer prunecomp may have written it)")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise RecipeError(f"{origin}: missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    unknown = sorted(set(data) - _RECIPE_KEYS)
    if unknown:
        raise RecipeError(f"{origin}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    total = data["num_layers_original"]
    if not _is_int(total) or total < 1:
        raise RecipeError(f"{origin}: num_layers_original must be a positive integer, found {total!r}")
    rounds = data["rounds"]
    if not isinstance(rounds, list) or not rounds:
        raise RecipeError(f"{origin}: rounds must be a non-empty list of removal steps")
    seen: dict[int, int] = {}
    for number, step in enumerate(rounds, 1):
        _validate_round(step, number, total, seen, origin)
    removed = data["num_layers_removed"]
    consistent = _is_int(removed) and (removed >= len(seen) if partial else removed == len(seen))
    if not consistent:
        raise RecipeError(f"{origin}: num_layers_removed is {removed!r} but the rounds remove {len(seen)} layers")
    if len(seen) >= total:
        raise RecipeError(f"{origin}: the rounds remove all {total} layers")


def _validate_round(step, number: int, total: int, seen: dict[int, int], origin: str) -> None:
    where = f"{origin}: round {number}"
    if not isinstance(step, dict):
        raise RecipeError(f"{where} must be an object, found a {type(step).__name__}")
    unknown = sorted(set(step) - _ROUND_KEYS)
    if unknown or "removed" not in step or "scale" not in step:
        problem = f"unknown keys {', '.join(unknown)}" if unknown else "needs 'removed' and 'scale'"
        raise RecipeError(f"{where}: {problem}")
    removed, scale = step["removed"], step["scale"]
    if not isinstance(removed, list) or not removed or not all(_is_int(i) for i in removed):
        raise RecipeError(f"{where}: 'removed' must be a non-empty list of layer indices, found {removed!r}")
    for index in removed:
        if not 0 <= index < total:
            raise RecipeError(f"{where} removes layer {index}, which does not exist (the model has layers 0..{total - 1})")
        if index in seen:
            raise RecipeError(f"{where} removes layer {index}, which round {seen[index]} already removed")
        seen[index] = number
    if sorted(removed) != list(range(min(removed), min(removed) + len(removed))):
        raise RecipeError(f"{where} removes {removed}, which is not one contiguous block")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise RecipeError(f"{where}: scale must be a finite positive number, found {scale!r}")


def check_applicable(recipe: Recipe, model_type: str, num_layers: int, *, fingerprint: str | None = None,
                     dtype: str | None = None, force: bool = False) -> list[str]:
    """Refuse to replay `recipe` on a model it was not made for.

    Architecture and layer count can never be forced. A different source fingerprint or dtype
    raises RecipeMismatch unless `force`; then the differences are returned as warnings.
    """
    if model_type != recipe.model_type:
        raise RecipeMismatch(f"the recipe is for model_type {recipe.model_type!r}, the model is {model_type!r}")
    if num_layers != recipe.num_layers_original:
        raise RecipeMismatch(f"the recipe is for {recipe.num_layers_original} layers, the model has {num_layers}")
    problems = []
    if recipe.source_fingerprint and fingerprint and fingerprint != recipe.source_fingerprint:
        problems.append(f"the model's weights differ from the recipe's source {recipe.source_model!r} "
                        f"(fingerprint {fingerprint[:12]} vs {recipe.source_fingerprint[:12]})")
    if recipe.dtype and dtype and dtype != recipe.dtype:
        problems.append(f"the recipe was made in {recipe.dtype}, the model is loaded in {dtype} "
                        f"(pass --dtype {recipe.dtype} for identical bytes)")
    if problems and not force:
        raise RecipeMismatch("; ".join(problems) + "; pass --force to apply it anyway")
    return problems


def library_versions() -> dict:
    import torch
    import transformers

    from . import __version__

    return {
        "prunecomp": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
