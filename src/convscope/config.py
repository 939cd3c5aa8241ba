"""The configuration: JSON Schema validation with defaults, and a frozen typed view of it."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from convscope.errors import ConfigError

IMAGENET_WEIGHTS = "imagenet"


def schema() -> dict[str, Any]:
    """The JSON Schema of the configuration (``convscope/schema.yaml``)."""
    return yaml.safe_load(resources.files("convscope").joinpath("schema.yaml").read_text())


def _with_defaults(validator_class: type) -> type:
    """A validator class that fills in each missing property's ``default`` before checking it."""
    check_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from check_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft7Validator)


def _key(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


_LONGEST_VALUE = 80  # characters of a bad value quoted in a message; the rest is cut


def _one_line(error: jsonschema.ValidationError) -> str:
    key = _key(error.absolute_path)
    value = json.dumps(error.instance, default=str)
    if len(value) > _LONGEST_VALUE:
        value = value[: _LONGEST_VALUE - 1] + "…"
    allowed = {
        "type": lambda: f"expected {error.validator_value}",
        "enum": lambda: f"allowed: {', '.join(map(str, error.validator_value))}",
        "additionalProperties": lambda: f"allowed keys: {', '.join(sorted(error.schema.get('properties', {})))}",
        "minimum": lambda: f"must be >= {error.validator_value}",
        "exclusiveMinimum": lambda: f"must be > {error.validator_value}",
        "maximum": lambda: f"must be <= {error.validator_value}",
        "exclusiveMaximum": lambda: f"must be < {error.validator_value}",
        "pattern": lambda: f"must match {error.validator_value}",
        "minItems": lambda: f"needs at least {error.validator_value} item(s)",
        "maxItems": lambda: f"takes at most {error.validator_value} item(s)",
        "required": lambda: "add it",
    }.get(error.validator, lambda: error.schema.get("description", "see convscope/schema.yaml"))()
    if error.validator in ("additionalProperties", "required"):
        return f"config {key}: {error.message}; {allowed}"
    return f"config {key} = {value}: {error.message}; {allowed}"


def validate(raw: dict[str, Any]) -> dict[str, Any]:
    """Validates a configuration dict against the schema and returns it with every default filled in.

    Raises:
        ConfigError: naming the first offending key, its value and what is allowed.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"config must be a mapping of keys to values, got {type(raw).__name__}")
    return _validated(schema(), raw)


def validate_section(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """One top-level section of the configuration, validated, with every default filled in."""
    only_section = {"type": "object", "properties": {name: schema()["properties"][name]}}
    # Nested under its name, so that messages name the key as the config does (runtime.precision).
    return _validated(only_section, {name: values})[name]


def _validated(against: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    resolved = copy.deepcopy(raw)
    errors = sorted(_Validator(against).iter_errors(resolved), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError(_one_line(jsonschema.exceptions.best_match(errors)))
    return resolved


@dataclass(frozen=True)
class Frozen:
    """Base of the typed config sections: built from a validated dict, immutable."""

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        kwargs = {}
        for f in fields(cls):
            value = values[f.name]
            section = _SECTIONS.get((cls.__name__, f.name))
            if section is not None:
                value = section.from_dict(value)
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[f.name] = value
        return cls(**kwargs)


@dataclass(frozen=True)
class ShapesConfig(Frozen):
    image_size: int
    train_per_class: int
    test_per_class: int
    seed: int
    spurious_class: str | None
    spurious_texture: str
    spurious_fraction: float


@dataclass(frozen=True)
class DatasetConfig(Frozen):
    kind: str
    name: str | None
    root: str | None
    val_fraction: float
    test_fraction: float
    split_seed: int
    on_corrupt: str
    shapes: ShapesConfig

    @property
    def folder_name(self) -> str:
        return self.name or self.kind


@dataclass(frozen=True)
class Preprocessing(Frozen):
    resize: int | None
    crop: str
    hflip: bool
    grayscale: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class ModelConfig(Frozen):
    name: str
    arch: str
    weights: str | None
    input_size: int
    preprocessing: Preprocessing
    optimizer: str
    lr: float
    head_lr: float | None
    weight_decay: float
    lr_schedule: str
    label_smoothing: float
    epochs: int
    batch_size: int
    bn_momentum: float | None
    freeze: str
    aux_logits: bool
    seed: int


@dataclass(frozen=True)
class RuntimeConfig(Frozen):
    device: str
    eval_batch_size: int
    precision: str
    workers: str | int
    deterministic: bool

    @classmethod
    def defaults(cls, **overrides: Any) -> RuntimeConfig:
        """The schema's ``runtime`` defaults, with ``overrides`` (for calls from Python rather than a config)."""
        return cls.from_dict(validate_section("runtime", overrides))


@dataclass(frozen=True)
class FiltersSettings(Frozen):
    layers: dict[str, tuple[str, ...]]  # per model name
    cmap: str


@dataclass(frozen=True)
class FeatureMapsSettings(Frozen):
    layers: dict[str, tuple[str, ...]]
    num_images: int
    top_k: int


@dataclass(frozen=True)
class GradcamSettings(Frozen):
    layers: dict[str, tuple[str, ...]]
    num_images: int
    correct_only: bool
    method: str
    cmap: str
    alpha: float


@dataclass(frozen=True)
class FailuresSettings(Frozen):
    k: int


@dataclass(frozen=True)
class FiguresConfig(Frozen):
    filters: FiltersSettings
    feature_maps: FeatureMapsSettings
    gradcam: GradcamSettings
    failures: FailuresSettings


@dataclass(frozen=True)
class ExplanationsConfig(Frozen):
    methods: tuple[str, ...]
    layers: dict[str, tuple[str, ...]]
    num_images: int
    road_images: int
    steps: int
    seed: int


_SECTIONS: dict[tuple[str, str], type[Frozen]] = {
    ("DatasetConfig", "shapes"): ShapesConfig,
    ("ModelConfig", "preprocessing"): Preprocessing,
    ("FiguresConfig", "filters"): FiltersSettings,
    ("FiguresConfig", "feature_maps"): FeatureMapsSettings,
    ("FiguresConfig", "gradcam"): GradcamSettings,
    ("FiguresConfig", "failures"): FailuresSettings,
}


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    dataset: DatasetConfig
    models: tuple[ModelConfig, ...]
    runtime: RuntimeConfig
    figures: FiguresConfig
    explanations: ExplanationsConfig
    raw: dict[str, Any]

    def model(self, name: str) -> ModelConfig:
        for model in self.models:
            if model.name == name:
                return model
        raise ConfigError(f"unknown model {name!r}; configured models: {', '.join(self.model_names)}")

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]


# torchvision.models.list_models(module=torchvision.models) for the pinned torchvision, written out because
# importing torchvision to validate the config costs ~3 s on every snakemake start, no-op reruns included;
# tests/test_models.py fails when it drifts from the installed torchvision.
CLASSIFICATION_ARCHS: tuple[str, ...] = (
    "alexnet",
    "convnext_base",
    "convnext_large",
    "convnext_small",
    "convnext_tiny",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
    "efficientnet_v2_l",
    "efficientnet_v2_m",
    "efficientnet_v2_s",
    "googlenet",
    "inception_v3",
    "maxvit_t",
    "mnasnet0_5",
    "mnasnet0_75",
    "mnasnet1_0",
    "mnasnet1_3",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "regnet_x_16gf",
    "regnet_x_1_6gf",
    "regnet_x_32gf",
    "regnet_x_3_2gf",
    "regnet_x_400mf",
    "regnet_x_800mf",
    "regnet_x_8gf",
    "regnet_y_128gf",
    "regnet_y_16gf",
    "regnet_y_1_6gf",
    "regnet_y_32gf",
    "regnet_y_3_2gf",
    "regnet_y_400mf",
    "regnet_y_800mf",
    "regnet_y_8gf",
    "resnet101",
    "resnet152",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "resnext50_32x4d",
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5",
    "shufflenet_v2_x2_0",
    "squeezenet1_0",
    "squeezenet1_1",
    "swin_b",
    "swin_s",
    "swin_t",
    "swin_v2_b",
    "swin_v2_s",
    "swin_v2_t",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "vit_b_16",
    "vit_b_32",
    "vit_h_14",
    "vit_l_16",
    "vit_l_32",
    "wide_resnet101_2",
    "wide_resnet50_2",
)


def _check_model(index: int, model: ModelConfig) -> None:
    key = f"config models[{index}]"
    if model.arch not in CLASSIFICATION_ARCHS:
        raise ConfigError(
            f"{key}.arch = {model.arch!r} is not a torchvision classification "
            f"model; choose one of: {', '.join(CLASSIFICATION_ARCHS)}"
        )
    resize = model.preprocessing.resize
    if resize is not None and resize < model.input_size:
        raise ConfigError(
            f"{key}.preprocessing.resize = {resize} is smaller than input_size "
            f"{model.input_size}; resize to at least input_size"
        )
    if model.weights not in (None, IMAGENET_WEIGHTS) and Path(model.weights).is_dir():
        raise ConfigError(
            f"{key}.weights: {model.weights!r} is a directory; give the path of the weights file inside it"
        )
    if model.weights not in (None, IMAGENET_WEIGHTS) and not Path(model.weights).is_file():
        raise ConfigError(
            f"{key}.weights: file {model.weights!r} not found; put the weights file there or fix the path"
        )


def load_config(raw: dict[str, Any]) -> Config:
    """Validates a configuration dict and returns the typed, frozen configuration.

    Raises:
        ConfigError: a one-line message naming the key, the bad value and the fix.
    """
    resolved = validate(raw)
    dataset = DatasetConfig.from_dict(resolved["dataset"])
    models = tuple(ModelConfig.from_dict(m) for m in resolved["models"])
    names = [m.name for m in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"config models: name {duplicates[0]!r} is used twice; give every model a unique name")
    for index, model in enumerate(models):
        _check_model(index, model)
    for family, settings in resolved.get("figures", {}).items():
        unknown = sorted(set((settings or {}).get("layers") or {}) - set(names)) if isinstance(settings, dict) else []
        if unknown:
            raise ConfigError(
                f"config figures.{family}.layers names model {unknown[0]!r}, which is not configured; "
                f"use one of: {', '.join(names)}"
            )
    if dataset.kind != "shapes" and not dataset.root:
        raise ConfigError(
            f"config dataset.root is missing; dataset kind {dataset.kind!r} "
            "reads a local copy: set dataset.root to its folder"
        )
    if dataset.root and not Path(dataset.root).is_dir():
        raise ConfigError(
            f"config dataset.root: folder {dataset.root!r} not found; put the dataset there or fix the path"
        )
    figures = FiguresConfig.from_dict(resolved["figures"])
    explanations = ExplanationsConfig.from_dict(resolved["explanations"])
    return Config(
        dataset=dataset,
        models=models,
        runtime=RuntimeConfig.from_dict(resolved["runtime"]),
        figures=figures,
        explanations=explanations,
        raw=resolved,
    )


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Reads a YAML configuration file into a dict, unvalidated.

    Raises:
        ConfigError: the file is missing, is not valid YAML (naming the line and column), is empty, or holds
            something other than a mapping at the top level.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {str(path)!r} not found; pass the path of a YAML config (e.g. config/config.yaml)"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = error.problem or error.context or "syntax error"
        raise ConfigError(
            f"config file {str(path)!r}{where}: not valid YAML ({problem}); fix the syntax there"
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {str(error).splitlines()[0]}") from None
    if raw is None:
        raise ConfigError(
            f"config file {str(path)!r} is empty; write the settings as YAML keys (dataset:, models:, …), "
            "described in src/convscope/schema.yaml"
        )
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config file {str(path)!r} holds a {type(raw).__name__} at the top level; "
            "write a mapping of keys to values (dataset:, models:, …)"
        )
    return raw


def read_config(path: str | Path) -> Config:
    """Reads a YAML configuration file and returns the validated configuration."""
    return load_config(read_yaml(path))
