"""The one vocabulary of arms ("recipes"): a recipe name -> its quantization and acceleration settings.

A recipe is a base precision plus optional accelerations, written `base[+part[:value]]...`:

    bf16                      the DiT in the pipeline dtype (no quantization)
    fp8                       the DiT's block linears in FP8 (`Fp8Config()`: K and N padded to 16)
    fp8-nopad                 FP8 without padding: layers with K or N not a multiple of 16 run the torch-reference
                              GEMM (`Fp8Config(misaligned="reference")`; shows what padding buys)
    fp8+teacache              + TeaCache step caching (rel_l1_thresh 0.05, the official default)
    bf16+teacache:0.1         + TeaCache with rel_l1_thresh 0.1
    fp8+taylorseer            + TaylorSeer step caching (first_enhance 5, fresh_threshold 3, max_order 4)
    fp8+taylorseer:max_order=2  + TaylorSeer with other settings (field=value pairs, comma separated)
    fp8+fp8attn               + FP8 attention (`Fp8Config(attention="fp8")`: cuDNN's FP8 SDPA; FP8 bases only)
    fp8+fp8attn:exclude_steps=0:3,-2:
                              + FP8 attention except in the first three and the last two denoising steps

Every CLI (`omnigen2_fp8.edit`, the harness) takes these names; `Recipe.to_dict()` is what run records store.
A serialized FP8 checkpoint runs only the recipe it was quantized with (`check_fp8_checkpoint`: a "bf16" name on
it would label FP8 results as BF16); the CLIs ask `fp8_checkpoint_mismatches` before loading anything, and
`device_mismatches` for recipes a GPU cannot run as named (FP8 without FP8 tensor cores or cuDNN's FP8 attention).
Parts live in one registry (`register_part`), so a new acceleration is added in one place. A step-cache part's
setting is a frozen `caching.TeaCacheConfig` / `TaylorSeerConfig` (one source of defaults), which the pipeline runs.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .caching import StepCacheConfig, TaylorSeerConfig, TeaCacheConfig
from .checkpoints import stored_fp8_config
from .fp8.attention import fp8_attention_unsupported_reason
from .fp8.attention_steps import parse_step_range
from .fp8.config import Fp8Config, Kernel
from .fp8.dispatch import Fp8UnsupportedDeviceError, resolve_kernel
from .transformer import OmniGen2Transformer


class RecipeError(ValueError):
    """A recipe name that is not in the vocabulary."""


# Base precision -> the FP8 policy it implies (None: nothing quantized).
BASES: dict[str, Fp8Config | None] = {
    "bf16": None,
    "fp8": Fp8Config(),
    "fp8-nopad": Fp8Config(misaligned="reference"),
}


@dataclass(frozen=True)
class Part:
    """One registered acceleration.

    name: the word in the recipe; slot: parts sharing a slot exclude each other (e.g. two step caches);
    parse(value text or None) -> the setting (raises ValueError on a bad value); describe(setting) -> the value
    text of the canonical name, None when the setting is the default; needs_fp8: only valid on an FP8 base;
    fp8_fields(setting) -> the `Fp8Config` fields the setting sets (the part is then a quantization option), or
    None.
    """

    name: str
    slot: str
    help: str
    parse: Callable[[str | None], Any]
    describe: Callable[[Any], str | None]
    value_help: str | None = None
    needs_fp8: bool = False
    fp8_fields: Callable[[Any], dict[str, Any]] | None = None


PARTS: dict[str, Part] = {}


def register_part(part: Part) -> Part:
    """Add an acceleration to the vocabulary (its name must be new); returns it."""
    if part.name in PARTS or part.name in BASES:
        raise ValueError(f"recipe part {part.name!r} is already registered")
    PARTS[part.name] = part
    return part


# ----------------------------------------------------------------------------------------------- step caching
# The settings are the frozen configs of omnigen2_fp8.caching (their defaults are the official ones): a value is
# either the part's shorthand (teacache:0.1 = its rel_l1_thresh) or `field=value` pairs (taylorseer:max_order=2).
def _step_cache_part(config_class: type[StepCacheConfig], shorthand: str | None, help: str) -> Part:
    default = config_class()
    scalars = [f.name for f in dataclasses.fields(config_class) if isinstance(getattr(default, f.name), (int, float))]

    def parse(value: str | None) -> StepCacheConfig:
        if value is None:
            return default
        if "=" not in value and shorthand is None:
            raise ValueError(f"{default.method} takes field=value settings ({', '.join(scalars)}), got {value!r}; "
                             f"e.g. {default.method}:{scalars[0]}={getattr(default, scalars[0])}")
        pairs = [item.partition("=") for item in value.split(",")] if "=" in value else [(shorthand, "=", value)]
        settings = {}
        for key, _, text in pairs:
            if key not in scalars:
                raise ValueError(f"{default.method} has no setting {key!r}{_did_you_mean(key, scalars)}; "
                                 f"settings: {scalars}")
            kind = type(getattr(default, key))
            try:
                settings[key] = kind(text)
            except ValueError:
                raise ValueError(f"{default.method} {key}={text!r} is not a{'n int' if kind is int else ' number'}"
                                 ) from None
        return config_class(**settings)

    def describe(config: StepCacheConfig) -> str | None:
        changed = {k: getattr(config, k) for k in scalars if getattr(config, k) != getattr(default, k)}
        if not changed:
            return None
        if shorthand is not None and set(changed) == {shorthand}:
            return f"{changed[shorthand]:g}"
        return ",".join(f"{k}={v:g}" for k, v in changed.items())

    value_help = shorthand or ",".join(f"{k}=N" for k in scalars)
    return Part(default.method, "step_cache", help, parse, describe, value_help=value_help)


register_part(_step_cache_part(TeaCacheConfig, "rel_l1_thresh", "TeaCache: skip a step's main blocks while the "
                               "accumulated relative L1 change stays under rel_l1_thresh (default "
                               f"{TeaCacheConfig().rel_l1_thresh})"))
register_part(_step_cache_part(TaylorSeerConfig, None, "TaylorSeer: forecast skipped steps' main-block output by a "
                               "Taylor expansion"))


# ----------------------------------------------------------------------------------------------- FP8 attention
_EXCLUDE_STEPS = "exclude_steps"


@dataclass(frozen=True)
class Fp8Attention:
    """The fp8attn part's setting: FP8 attention, except in the denoising steps `exclude_steps` (step ranges,
    `Fp8Config.attention_exclude_steps`)."""

    exclude_steps: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"attention": "fp8", _EXCLUDE_STEPS: list(self.exclude_steps)}


def _fp8attn(value: str | None) -> Fp8Attention:
    if value is None:
        return Fp8Attention()
    key, sep, ranges = value.partition("=")
    if not sep or key.strip() != _EXCLUDE_STEPS:
        raise ValueError(f"fp8attn takes {_EXCLUDE_STEPS}=RANGES, got {value!r}; e.g. "
                         f"fp8attn:{_EXCLUDE_STEPS}=0:3,-2: (BF16 attention in the first three and the last two "
                         "steps)")
    steps = tuple(r.strip() for r in ranges.split(","))
    for text in steps:
        parse_step_range(text)
    return Fp8Attention(steps)


def _describe_fp8attn(setting: Fp8Attention) -> str | None:
    return f"{_EXCLUDE_STEPS}={','.join(setting.exclude_steps)}" if setting.exclude_steps else None


register_part(Part("fp8attn", "attention", "FP8 attention: cuDNN's FP8 SDPA in every block (Hopper and newer, "
                   "nvidia-cudnn-frontend; BF16 attention, with the reason, elsewhere; emulated on a CPU); "
                   f"{_EXCLUDE_STEPS}=0:3,-2: keeps BF16 attention in those denoising steps",
                   _fp8attn, _describe_fp8attn, value_help=f"{_EXCLUDE_STEPS}=RANGES", needs_fp8=True,
                   fp8_fields=lambda setting: {"attention": "fp8",
                                               "attention_exclude_steps": setting.exclude_steps}))


# ----------------------------------------------------------------------------------------------- recipes
@dataclass(frozen=True)
class Recipe:
    """A parsed recipe: base precision + (part name, setting) pairs in registry order."""

    base: str
    parts: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        """The canonical name: parts in registry order, values only where they differ from the default."""
        words = [self.base]
        for part_name, setting in self.parts:
            value = PARTS[part_name].describe(setting)
            words.append(part_name if value is None else f"{part_name}:{value}")
        return "+".join(words)

    def setting(self, slot: str) -> Any:
        """The setting of the part filling `slot`, None when no part does."""
        return next((s for n, s in self.parts if PARTS[n].slot == slot), None)

    @property
    def step_cache(self) -> StepCacheConfig | None:
        """The recipe's `caching.TeaCacheConfig` / `TaylorSeerConfig`, None without step caching."""
        return self.setting("step_cache")

    def with_step_cache(self, config: StepCacheConfig | None) -> "Recipe":
        """The same recipe with its step cache replaced by `config` (None: removed)."""
        parts = [(n, s) for n, s in self.parts if PARTS[n].slot != "step_cache"]
        if config is not None:
            parts.append((config.method, config))
        order = list(PARTS)
        return Recipe(self.base, tuple(sorted(parts, key=lambda pair: order.index(pair[0]))))

    @property
    def quantized(self) -> bool:
        return BASES[self.base] is not None

    def fp8_config(self, kernel: str | None = None, **overrides) -> Fp8Config | None:
        """The base's Fp8Config with the quantization parts applied (e.g. fp8attn: attention="fp8"), then `kernel`
        and any other field overridden; None for an unquantized base."""
        config = BASES[self.base]
        if config is None:
            return None
        parts = {k: v for n, s in self.parts if PARTS[n].fp8_fields is not None
                 for k, v in PARTS[n].fp8_fields(s).items()}
        overrides = {**parts, **overrides, **({"kernel": kernel} if kernel is not None else {})}
        return dataclasses.replace(config, **overrides) if overrides else config

    def to_dict(self, **fp8_overrides) -> dict:
        """Every setting of the recipe (JSON-ready), for run records."""
        config = self.fp8_config(**fp8_overrides)
        return {"name": self.name, "base": self.base, "fp8": None if config is None else config.to_dict(),
                **{PARTS[n].slot: (s.to_dict() if hasattr(s, "to_dict") else s) for n, s in self.parts}}

    def __str__(self) -> str:
        return self.name


def parse_recipe(text: str | Recipe) -> Recipe:
    """`base[+part[:value]]...` -> Recipe; an unknown word raises RecipeError with the closest known names."""
    if isinstance(text, Recipe):
        return text
    if not isinstance(text, str) or not text.strip():
        raise RecipeError(f"a recipe is a name such as 'bf16' or 'fp8+teacache', got {text!r}")
    base, *words = [w.strip() for w in text.strip().split("+")]
    if base not in BASES:
        raise RecipeError(f"unknown precision {base!r}{_did_you_mean(base, [*BASES])}; a recipe starts with one "
                          f"of {list(BASES)}")
    chosen: dict[str, tuple[str, Any]] = {}
    for word in words:
        part_name, _, value = word.partition(":")
        part = PARTS.get(part_name)
        if part is None:
            raise RecipeError(f"unknown recipe part {part_name!r} in {text!r}{_did_you_mean(part_name, [*PARTS])}; "
                              f"parts: {list(PARTS)}")
        if part.slot in chosen:
            raise RecipeError(f"{text!r} has two {part.slot} parts ({chosen[part.slot][0]!r} and {part_name!r}); "
                              "keep one")
        if part.needs_fp8 and BASES[base] is None:
            raise RecipeError(f"{part_name!r} needs an FP8 base; write fp8+{word}")
        try:
            chosen[part.slot] = (part_name, part.parse(value if value else None))
        except ValueError as err:
            raise RecipeError(f"{text!r}: {err}") from None
    order = list(PARTS)
    return Recipe(base, tuple(sorted(chosen.values(), key=lambda pair: order.index(pair[0]))))


def recipe_help() -> str:
    """One line for CLI help: the bases and the parts."""
    return (f"precision recipe: {' | '.join(BASES)}, plus optional " +
            ", ".join(f"+{name}" + (f"[:{p.value_help}]" if p.value_help else "") for name, p in PARTS.items()) +
            " (e.g. fp8+teacache:0.1)")


def _did_you_mean(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=2, cutoff=0.5)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


# ----------------------------------------------------------------------------------------------- FP8 checkpoints
def check_fp8_checkpoint(stored: Fp8Config, recipe: Recipe, requested: Fp8Config | None,
                         model=OmniGen2Transformer) -> Fp8Config:
    """The config to run an FP8 checkpoint quantized with `stored` under `recipe` (its config `requested`, None
    for a BF16 recipe), or ValueError naming the mismatch and the precision that fits: a BF16 recipe, or another FP8
    policy, would label results with settings the model does not run. Two choices stay free at run time: the
    kernel (when one is named, it must be the checkpoint's) and the denoising steps kept out of FP8 attention
    (the requested ones are returned). `model`: the model or its class (for the default exclude list)."""
    if requested is None:
        raise ValueError(f"the transformer is already FP8 (an FP8 checkpoint); precision {recipe.name!r} would label "
                         f"FP8 results as {recipe.base}. Load the BF16 checkpoint for a {recipe.base} run, or use the "
                         f"precision the checkpoint was made with ({_recipe_of(stored)!r})")
    requested = requested.for_model(model)
    free = {"kernel", "attention_exclude_steps"}
    wanted, made = requested.to_dict(), stored.to_dict()
    differ = [f"{k}: checkpoint {made.get(k)!r}, asked {v!r}" for k, v in wanted.items()
              if k not in free and made.get(k) != v]
    if differ:
        raise ValueError(f"the FP8 checkpoint was quantized with other settings than precision {recipe.name!r} asks "
                         f"({'; '.join(differ)}); quantize the BF16 checkpoint with that precision, or use the one the "
                         f"checkpoint was made with ({_recipe_of(stored)!r})")
    if requested.kernel != Kernel.AUTO and requested.kernel != stored.kernel:
        raise ValueError(f"the FP8 checkpoint's layers run kernel {stored.kernel.value!r}; another kernel "
                         f"({requested.kernel.value!r}) needs the BF16 checkpoint quantized with it")
    return dataclasses.replace(stored, attention_exclude_steps=requested.attention_exclude_steps)


def fp8_checkpoint_mismatches(checkpoint: str | os.PathLike, precisions: Sequence[str | Recipe],
                              fp8_kernel: str | None = None) -> dict[str, str]:
    """{precision: why not} for the precisions a local checkpoint folder whose DiT is serialized FP8 cannot run
    (`check_fp8_checkpoint`), read from its transformer/config.json alone; empty for a BF16 folder or one that is
    not local (a hub id is checked when it loads)."""
    folder = Path(checkpoint).expanduser() / "transformer"
    if not (folder / "config.json").is_file():
        return {}
    stored = stored_fp8_config(folder)
    if stored is None:
        return {}
    problems = {}
    for precision in precisions:
        recipe = parse_recipe(precision)
        try:
            check_fp8_checkpoint(stored, recipe, recipe.fp8_config(kernel=fp8_kernel))
        except ValueError as err:
            problems[recipe.name] = str(err)
    return problems


def device_mismatches(precisions: Sequence[str | Recipe], device: str | torch.device) -> dict[str, str]:
    """{precision: why not} for the precisions `device` cannot run as named: FP8 GEMMs on a GPU without FP8
    tensor cores (the arm would stop when it loads), FP8 attention where cuDNN's FP8 attention cannot run (the arm
    would run BF16 attention under its name). A CPU emulates both: nothing to say there."""
    device = torch.device(device)
    if device.type != "cuda":
        return {}
    problems = {}
    for precision in precisions:
        recipe = parse_recipe(precision)
        config = recipe.fp8_config()
        if config is None:
            continue
        try:
            resolve_kernel(config.kernel, device)
        except Fp8UnsupportedDeviceError as err:
            problems[recipe.name] = str(err)
            continue
        reason = fp8_attention_unsupported_reason(device) if config.attention == "fp8" else None
        if reason:
            problems[recipe.name] = (f"FP8 attention cannot run here ({reason}); the arm would run BF16 attention "
                                     "under its name. Drop +fp8attn, or run it where cuDNN's FP8 attention runs")
    return problems


def _recipe_of(config: Fp8Config) -> str:
    """The recipe name that runs an FP8 checkpoint quantized with `config` (for error messages), or what to pass
    when no recipe name gives its config."""
    parts = (("fp8attn", Fp8Attention(config.attention_exclude_steps)),) if config.attention == "fp8" else ()
    recipe = Recipe("fp8" if config.misaligned == "pad" else "fp8-nopad", parts)
    named = dataclasses.replace(recipe.fp8_config(), kernel=config.kernel).for_model(OmniGen2Transformer)
    if named.to_dict() != config.to_dict():
        return "no recipe name: pass its own Fp8Config as fp8_config"
    return recipe.name
