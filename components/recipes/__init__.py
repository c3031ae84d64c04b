"""Named quantization schemes: one YAML file each, holding the llm-compressor recipe and card facts."""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel

from components.digests import digest_obj

RECIPES = Path(__file__).parent


class SchemeDef(BaseModel):
    name: str
    version: int
    suffix: str
    weights: str
    activations: str | None
    group_size: int | None = None
    needs_calibration: bool
    summary: str
    vllm_platforms: list[str]
    recipe: dict

    @property
    def recipe_yaml(self) -> str:
        return yaml.safe_dump(self.recipe, sort_keys=False)

    @property
    def digest(self) -> str:
        return digest_obj(self.recipe)


def names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def load(name: str) -> SchemeDef:
    path = RECIPES / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown scheme {name!r}: choose one of {', '.join(names())}")
    return SchemeDef.model_validate(yaml.safe_load(path.read_text()))
