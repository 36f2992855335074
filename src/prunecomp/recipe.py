"""The recipe: what was removed and with which scales, as versioned JSON (prunecomp_recipe.json)."""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

SCHEMA_VERSION = 1
RECIPE_FILENAME = "prunecomp_recipe.json"


class RecipeError(ValueError):
    pass


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
    def from_dict(cls, data: dict) -> "Recipe":
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise RecipeError(f"recipe schema_version {version!r} is not supported (this prunecomp reads {SCHEMA_VERSION})")
        data = dict(data)
        data.pop("removed_layers", None)
        try:
            rounds = [Round(**r) for r in data.pop("rounds")]
            return cls(rounds=rounds, **data)
        except TypeError as exc:
            raise RecipeError(f"malformed recipe: {exc}") from exc

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
        path = Path(path)
        if path.is_dir():
            path = path / RECIPE_FILENAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RecipeError(f"no recipe at {path}") from None
        except json.JSONDecodeError as exc:
            raise RecipeError(f"{path} is not valid JSON: {exc}") from None
        return cls.from_dict(data)


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
