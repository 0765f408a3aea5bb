"""One validated config tree: YAML in, `--set dotted.key=value` overrides, resolved YAML out.

Every user mistake (unknown key, wrong type, out-of-range value, unknown name) becomes a
:class:`~raypfl.errors.UserError` whose one-line message names the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from raypfl.errors import UserError

DATASETS = ("digits", "fashion_mnist", "mnist", "cifar10", "femnist", "synthetic")
PARTITIONS = ("iid", "dirichlet", "shards", "natural", "sampled")
MODELS = ("cnn", "vgg11", "resnet18", "mlp")
ALGORITHMS = ("fedavg", "fedasync", "fedbuff", "fedgmr", "prfl", "heterofl", "fedrolex", "fjord")
VARIANTS = ("base", "aux", "aux_gmr")
LEVELS = ("high", "medium", "low")
LEVEL_CLASS_NAMES = ("d1", "d0.5", "d0.2", "d0.1", "d0.05")  # the paper's five classes, by initial density



def _number_as_text(value: Any) -> Any:
    # `--set experiment.name=2024` parses as an int; names and paths take it as text.
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


Text = Annotated[str, BeforeValidator(_number_as_text)]
Density = Annotated[float, Field(gt=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0)]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, no silent coercion (`true` is not 1)."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False)


class ExperimentConfig(Section):
    name: Text = Field("demo", min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    seed: int = Field(0, ge=0)
    output_dir: Text = "runs"


class PartitionConfig(Section):
    kind: Literal["iid", "dirichlet", "shards", "natural", "sampled"] = "iid"
    alpha: Positive = 0.6
    classes_per_client: int = Field(2, ge=1)
    min_samples: int = Field(1, ge=1)
    order: Literal["size_asc", "random"] = "size_asc"
    # sampled (or iid): every client draws this many samples of its own from (seed, client), clients may share
    # samples (a population larger than the data); null: the samples are split between the clients
    samples_per_client: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _drawn_samples(self) -> PartitionConfig:
        if self.samples_per_client is not None and self.kind not in ("iid", "sampled"):
            raise ValueError("data.partition.samples_per_client applies to the sampled (and iid) partitions only")
        if self.kind == "sampled" and self.samples_per_client is None:
            raise ValueError("data.partition.kind 'sampled' needs data.partition.samples_per_client")
        return self


class SyntheticConfig(Section):
    num_train: int = Field(2000, ge=10)
    num_test: int = Field(500, ge=10)
    num_classes: int = Field(10, ge=2)
    image_size: int = Field(8, ge=4)
    noise: float = Field(1.0, ge=0.0)


class DataConfig(Section):
    dataset: Literal["digits", "fashion_mnist", "mnist", "cifar10", "femnist", "synthetic"] = "digits"
    data_dir: Text | None = None
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    augment: bool = False
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)


class ModelConfig(Section):
    name: Literal["cnn", "vgg11", "resnet18", "mlp"] = "cnn"


class ClientClassConfig(Section):
    """One heterogeneity class: density, links, compute speed and the Ray resources of its actors."""

    name: Text = Field(min_length=1)
    density: Density
    count: int = Field(ge=1)
    download_mbps: Positive
    upload_mbps: Positive
    compute_tflops: Positive | None = None
    resources: dict[str, Annotated[float, Field(ge=0.0)]] | None = None


class ComputeConfig(Section):
    """Simulated local-round time: `constant` seconds, or `flops` = model FLOPs × density ÷ throughput."""

    kind: Literal["constant", "flops"] = "constant"
    seconds: Annotated[float, Field(ge=0.0)] = 0.5
    base_tflops: Positive = 0.5


class ClientsConfig(Section):
    num_clients: int = Field(10, ge=1, le=100_000_000)
    # clients training at a time: sampled per round (synchronous) or kept in flight (asynchronous); null = all
    concurrency: int | None = Field(None, ge=1)
    heterogeneity: Literal["high", "medium", "low"] | list[ClientClassConfig] = "high"
    # class name → custom Ray resource (a node pool): that class's client actors only run on nodes offering it
    placement: dict[str, Annotated[str, Field(min_length=1)]] = Field(default_factory=dict)
    download_base_mbps: Positive = 20.0
    upload_base_mbps: Positive = 5.0
    compute: ComputeConfig = Field(default_factory=ComputeConfig)

    @model_validator(mode="after")
    def _placement_names_classes(self) -> ClientsConfig:
        names = ([c.name for c in self.heterogeneity] if isinstance(self.heterogeneity, list)
                 else list(LEVEL_CLASS_NAMES))
        for name in self.placement:
            if name not in names:
                raise ValueError(f"clients.placement names class '{name}', but the classes are {', '.join(names)}")
        return self

    @model_validator(mode="after")
    def _concurrency_within_population(self) -> ClientsConfig:
        if self.concurrency is not None and self.concurrency > self.num_clients:
            raise ValueError(f"clients.concurrency ({self.concurrency}) exceeds clients.num_clients "
                             f"({self.num_clients})")
        return self

    @model_validator(mode="after")
    def _explicit_classes_cover_all_clients(self) -> ClientsConfig:
        if isinstance(self.heterogeneity, list):
            total = sum(c.count for c in self.heterogeneity)
            if total != self.num_clients:
                raise ValueError(
                    f"explicit classes hold {total} clients but clients.num_clients is {self.num_clients}"
                )
        return self


class NetworkConfig(Section):
    server_up_mbps: Positive = 10.0
    server_down_mbps: Positive = 50.0
    client_noise_sigma: Annotated[float, Field(ge=0.0)] = 0.3
    server_noise_sigma: Annotated[float, Field(ge=0.0)] = 0.1
    noise_draws: int = Field(20, ge=1)
    size_model: Literal["sparse", "parity"] = "sparse"
    model_size_mb: Positive | None = None

    @model_validator(mode="after")
    def _parity_needs_a_size(self) -> NetworkConfig:
        if self.size_model == "parity" and self.model_size_mb is None:
            raise ValueError("network.size_model 'parity' needs network.model_size_mb (e.g. 25.98 for FEMNIST)")
        return self


class StalenessConfig(Section):
    kind: Literal["constant", "poly", "hinge"] = "poly"
    a: Annotated[float, Field(ge=0.0)] = 0.6
    b: int = Field(2, ge=0)


class PruningConfig(Section):
    """Sub-models (spec C): clients start at their class density and train nested unstructured masks."""

    enabled: bool = False
    importance: Literal["magnitude", "magnitude_per_cost", "grad_sq"] = "magnitude"
    layer_floor: Annotated[float, Field(ge=0.0, le=1.0)] = 0.02
    balance: bool = False


class RecoveryConfig(Section):
    """Gradual model restoration (spec D): when and how client densities grow back towards 1."""

    trigger: Literal["none", "plateau", "time", "mixed"] = "none"
    client_trigger: bool = True
    patience: int = Field(5, ge=1)
    step: Literal["ladder", "fixed", "additive"] = "ladder"
    step_size: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    time_total_s: Positive | None = None
    time_points: list[Annotated[float, Field(gt=0.0, le=1.0)]] = [0.2, 0.4, 0.6, 0.8, 1.0]
    time_ladder: list[Density] = [0.05, 0.1, 0.2, 0.5, 1.0]
    rollback: bool = False
    client_eval_samples: int = Field(1000, ge=1)
    client_eval_every: int = Field(25, ge=1)  # a client's model is scored every this many of its local rounds
    # the global plateau trigger is fed at least this often per budget: where evaluations are sparser, the server
    # scores the global model between them too (not recorded); 0: evaluations only
    min_checks: int = Field(100, ge=0)

    @model_validator(mode="after")
    def _points_match_ladder(self) -> RecoveryConfig:
        if len(self.time_points) != len(self.time_ladder):
            raise ValueError("recovery.time_points and recovery.time_ladder must have the same length")
        return self


class WidthConfig(Section):
    """Width-sliced sub-models (spec F): `static` first channels (HeteroFL), a `rolling` window (FedRolex),
    `ordered` dropout over the widths of `ladder` (FjORD)."""

    kind: Literal["none", "static", "rolling", "ordered"] = "none"
    ladder: list[Density] = Field([0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0], min_length=1)


class AlgorithmConfig(Section):
    """`name` selects a preset (raypfl.fl.algorithms), `variant` wraps the width-sliced methods in raypfl's
    buffer (`aux`) and restoration (`aux_gmr`); every other key given here overrides the preset."""

    name: Literal["fedavg", "fedasync", "fedbuff", "fedgmr", "prfl", "heterofl", "fedrolex", "fjord"] = "fedgmr"
    variant: Literal["base", "aux", "aux_gmr"] = "base"
    trigger: Literal["synchronous", "every_arrival", "count", "reference_window", "fixed_window"]
    buffer_size: int = Field(ge=1)
    min_arrivals: int = Field(ge=1)
    reference_clients: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    grace_s: Annotated[float, Field(ge=0.0)]
    server_time_s: Annotated[float, Field(ge=0.0)]
    # aggregations between refreshes of the sub-models (masks from the global model, FedRolex's window);
    # null: at every evaluation. Densities that change refresh them at once.
    refresh_every: int | None = Field(None, ge=1)
    rule: Literal["ma", "ma_mix", "fa", "ga"]
    mixing: Annotated[float, Field(gt=0.0, le=1.0)] | None
    server_lr: Positive
    scope: Literal["window", "cache"]
    ims: bool
    staleness: StalenessConfig
    pruning: PruningConfig
    recovery: RecoveryConfig
    width: WidthConfig

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        from raypfl.fl.algorithms import preset

        if not isinstance(data, dict):
            return data
        name = data.get("name", cls.model_fields["name"].default)
        if name not in ALGORITHMS:
            return data  # the name's own validation explains what is allowed
        variant = data.get("variant", "base")
        if variant not in VARIANTS:
            return data
        merged = preset(name, variant)
        for key, value in data.items():
            if key in ("staleness", "pruning", "recovery", "width") and isinstance(value, dict):
                merged[key] = {**merged.get(key, {}), **value}
            else:
                merged[key] = value
        return merged

    @model_validator(mode="after")
    def _one_kind_of_sub_model(self) -> AlgorithmConfig:
        if self.pruning.enabled and self.width.kind != "none":
            raise ValueError("algorithm.pruning.enabled and algorithm.width.kind are exclusive: a sub-model is "
                             "either pruned or width-sliced")
        return self

    @property
    def sub_models(self) -> bool:
        """Clients train sub-models (pruned or width-sliced) whose densities start at their class's."""
        return self.pruning.enabled or self.width.kind != "none"


class TrainingConfig(Section):
    lr: Positive = 0.05
    batch_size: int = Field(20, ge=1)
    local_steps: int = Field(5, ge=1)
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    loss: Literal["ce", "bce"] = "ce"
    clip_grad_norm: Positive | None = None
    eval_batch_size: int = Field(1000, ge=1)


class BudgetConfig(Section):
    virtual_time_s: Positive = 1200.0
    max_rounds: int | None = Field(None, ge=1)
    eval_every: int = Field(10, ge=1)
    eval_every_s: Positive | None = None  # evaluate at the first aggregation after every this many virtual s instead
    eval_at_start: bool = True  # also evaluate the initial model (round 0)
    eval_samples: int | None = Field(None, ge=1)
    # reported accuracy (spec E.5): mean ± std of the evaluations in this last share of the budget
    report_window: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    # also evaluate the FedAvg of every client's latest upload (spec E.5); null: when every client takes part
    cache_model: bool | None = None
    target_accuracies: list[Annotated[float, Field(gt=0.0, le=1.0)]] = [0.8, 0.9]


class RuntimeConfig(Section):
    mode: Literal["virtual", "realtime"] = "virtual"
    num_workers: int | None = Field(None, ge=1)
    time_scale: Annotated[float, Field(ge=0.0)] = 0.001
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads_per_worker: int = Field(1, ge=1)
    logical_gpus: int = Field(4, ge=0)
    checkpoint_every: int = Field(5, ge=0)  # evaluations between checkpoints on disk; 0: never
    queue_depth: int = Field(2, ge=1)  # training jobs queued at a client actor at a time
    max_restarts: int = Field(5, ge=0)  # restarts of a client actor (and aggregator rebuilds) before a run stops


class TrackingConfig(Section):
    enabled: bool = True
    uri: Text | None = None
    experiment: Text = Field("raypfl", min_length=1)


class Config(Section):
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    clients: ClientsConfig = Field(default_factory=ClientsConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    algorithm: AlgorithmConfig = Field(default_factory=lambda: AlgorithmConfig.model_validate({}))
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


# ----------------------------------------------------------------------------------------------------------
# Loading, overrides, errors


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_override(text: str) -> tuple[str, Any]:
    """Split `dotted.key=value`; the value is read as YAML so numbers, booleans, lists and null coerce."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"--set expects KEY=VALUE with a dotted key, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e9 as text (it wants 1.0e+9)
    return key, value


def apply_override(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set `value` at `key` (dotted) inside a nested dict, creating mappings on the way."""
    node = tree
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {key}: '{'.'.join(parts[: depth + 1])}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not text (a YAML file is expected)") from None
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {exc.strerror or type(exc).__name__}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> Config:
    """Resolve a config: `base` mapping (or the YAML file at `path`), then each `--set` override."""
    tree = copy.deepcopy(base) if base is not None else (read_yaml(path) if path is not None else {})
    for text in overrides or []:
        apply_override(tree, *parse_override(text))
    return validate(tree)


def validate(tree: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise UserError(describe_error(exc)) from None


def describe_error(exc: ValidationError) -> str:
    """One line for the most specific validation error: the dotted key, the value, and what is allowed."""
    errors = exc.errors()
    err = max(errors, key=lambda e: len(e["loc"]))
    loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
    key = ".".join(loc) or "config"
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        return f"unknown config key '{key}' (allowed here: {', '.join(allowed)})"
    value = err.get("input")
    shown = _short(value)
    if err["type"] == "value_error":
        return f"invalid config at '{key}': {err['msg'].removeprefix('Value error, ')}"
    return f"invalid value {shown} for '{key}': {_allowed_text(err)}"


def _is_union_tag(part: Any) -> bool:
    text = str(part)
    return text.startswith(("literal[", "list[")) or text in {"str", "int", "float", "bool"}


def _allowed_text(err: dict[str, Any]) -> str:
    msg: str = err["msg"]
    ctx = err.get("ctx") or {}
    if "expected" in ctx:
        return f"expected one of {ctx['expected']}"
    return msg[0].lower() + msg[1:]


def _allowed_keys(section: list[str]) -> list[str]:
    model: type[BaseModel] = Config
    for part in section:
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        if field is None:
            break
        candidate = _section_model(field.annotation)
        if candidate is None:
            break
        model = candidate
    return list(model.model_fields)


def _section_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _section_model(arg)
        if found is not None:
            return found
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def flatten(config: Config) -> dict[str, str]:
    """Dotted-key view of the resolved config (MLflow params)."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = "null" if node is None else str(node)

    walk("", config.model_dump(mode="json"))
    return out
