"""Named quantization schemes: one YAML file each, holding the llm-compressor recipe and card facts."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import BaseModel

from components.digests import digest_obj
from components.messages import Checked, did_you_mean, first_line, validation_problems

if TYPE_CHECKING:
    from components.models import BaseInfo

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


# --- preflight: the recipe file, then llm-compressor's reading of it, then its patterns against the model -----------

def check(name: str) -> Checked[SchemeDef]:
    """The scheme `name`, or None and why not (one line, with the fix): its recipe file missing, not YAML, or
    lacking scheme fields, named before any work starts."""
    from pydantic import ValidationError

    path = RECIPES / f"{name}.yaml"
    if not path.is_file():
        return Checked(problems=[f"scheme {name!r}: no recipe file {path.name} in {RECIPES}"
                                 f"{did_you_mean(name, names())} (schemes: {', '.join(names())})"])
    try:
        return Checked(load(name))
    except yaml.YAMLError as e:
        return Checked(problems=[f"scheme {name!r}: {path} is not valid YAML ({first_line(e)})"])
    except ValidationError as e:
        return Checked(problems=[f"scheme {name!r}: {path} lacks or misstates scheme fields: "
                                 + "; ".join(validation_problems(e))])


def check_recipe(scheme: SchemeDef) -> Checked[list]:
    """llm-compressor's modifiers for the scheme's recipe, or None and why it cannot run it (one line, with the fix)."""
    try:
        from llmcompressor.recipe import Recipe

        recipe = Recipe.create_instance(scheme.recipe_yaml)
    except Exception as e:  # noqa: BLE001
        return Checked(problems=[f"scheme {scheme.name!r}: its recipe is not a valid llm-compressor recipe "
                                 f"({type(e).__name__}: {first_line(e)}): fix `recipe:` in "
                                 f"components/recipes/{scheme.name}.yaml"])
    if not recipe.modifiers:
        return Checked(problems=[f"scheme {scheme.name!r}: its recipe parses to no llm-compressor modifier: `recipe:` "
                                 f"in components/recipes/{scheme.name}.yaml needs a stage with e.g. QuantizationModifier "
                                 "or GPTQModifier"])
    return Checked(list(recipe.modifiers))


def check_against_model(scheme: SchemeDef, modifiers: list, base: BaseInfo) -> Checked[int]:
    """The recipe against the model's modules on the meta device: targets and ignores that match nothing, group sizes
    that do not divide a layer (llm-compressor would fail or silently quantize nothing, after loading the weights);
    the value: the estimated size of the compressed checkpoint (None if the check could not run)."""
    out: list[str] = []
    try:
        return Checked(_model_problems(out, scheme, modifiers, base), out)
    except Exception as e:  # noqa: BLE001 - a check that cannot run is itself a finding
        out.append(f"scheme {scheme.name!r} against {base.name}: {type(e).__name__}: {first_line(e)}")
        return Checked(None, out)


def _patterns(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _model_problems(out: list[str], scheme: SchemeDef, modifiers: list, base: BaseInfo) -> int:
    import torch
    from compressed_tensors.utils.match import _match_class, is_match, match_name

    model = base.skeleton
    modules = [(n, m) for n, m in model.named_modules() if n]
    linears = [(n, m) for n, m in modules if isinstance(m, torch.nn.Linear)]
    example = linears[0][0] if linears else "?"

    def matches(pattern: str) -> bool:
        return any(match_name(n, pattern) or _match_class(m, pattern) for n, m in modules)

    quantized: dict[str, int] = {}  # Linear name -> weight bits
    for mod in modifiers:
        kind = type(mod).__name__
        try:
            config = mod.resolve_quantization_config() if hasattr(mod, "resolve_quantization_config") else None
        except Exception as e:  # noqa: BLE001
            out.append(f"scheme {scheme.name!r} ({kind}): its quantization settings do not resolve "
                       f"({type(e).__name__}: {first_line(e)})")
            continue
        targets = _patterns(getattr(mod, "targets", None))
        ignore = _patterns(getattr(mod, "ignore", None))
        groups = list(config.config_groups.items()) if config is not None else []
        for _, g in groups:
            targets += [t for t in _patterns(g.targets) if t not in targets]
        if config is not None:
            ignore += [t for t in _patterns(config.ignore) if t not in ignore]
        for t in targets:
            if not matches(t):
                out.append(f"scheme {scheme.name!r} ({kind}): target {t!r} matches no module of {base.name} "
                           f"(plain names match a class such as 'Linear' or a full module name such as {example!r}; "
                           "prefix 're:' for a regex)")
        for t in ignore:
            if not matches(t):
                out.append(f"scheme {scheme.name!r} ({kind}): ignore entry {t!r} matches no module of {base.name} "
                           f"(plain names are full module names such as 'lm_head' or {example!r}, or class names; "
                           "prefix 're:' for a regex)")
        for _, g in groups:
            w = g.weights
            if w is None:
                continue
            bad = []
            for n, m in linears:
                if not is_match(n, m, g.targets, config.ignore or []):
                    continue
                quantized[n] = w.num_bits
                size = getattr(w, "group_size", None)
                if size and m.in_features % size:
                    bad.append((n, m.in_features))
            if bad:
                n0, cols = bad[0]
                out.append(f"scheme {scheme.name!r}: group size {w.group_size} does not divide the input width of "
                           f"{len(bad)} Linear layer(s) of {base.name} (e.g. {n0}: {cols} columns, {cols} % "
                           f"{w.group_size} = {cols % w.group_size}): choose a scheme with per-channel weights "
                           "(w8a8-int8, fp8-dynamic), or a model whose layer widths are multiples of "
                           f"{w.group_size}")
    return _checkpoint_bytes(model, quantized, base)


def _checkpoint_bytes(model, quantized: dict[str, int], base: BaseInfo) -> int:
    dtype = getattr(base.config, "dtype", None) or getattr(base.config, "torch_dtype", None)
    width = {"float32": 4, "torch.float32": 4}.get(str(dtype), 2)
    total = 0
    seen = set()
    for n, p in model.named_parameters(remove_duplicate=True):
        if id(p) in seen:
            continue
        seen.add(id(p))
        owner = n.rsplit(".", 1)[0]
        bits = quantized.get(owner) if n.endswith("weight") else None
        total += p.numel() * bits // 8 if bits else p.numel() * width
    return int(total * 1.02) + (1 << 20)  # scales, zero points, tokenizer, config
