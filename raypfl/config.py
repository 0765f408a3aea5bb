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
ALGORITHMS = ("fedavg", "fedasync", "fedbuff", "fedfix", "fedgmr", "prfl", "heterofl", "fedrolex", "fjord")
VARIANTS = ("base", "aux", "aux_gmr", "masks")
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

    # protected_namespaces: `model_size_mb` and `model` are config keys, not pydantic's (older pydantic warns)
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False,
                              protected_namespaces=())


class ExperimentConfig(Section):
    name: Text = Field("demo", min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$",
                       description="the run's name: its folder under output_dir, its MLflow run name's prefix")
    seed: int = Field(0, ge=0, description="seeds data partition, model, draws, noise and data order")
    output_dir: Text = Field("runs", description="where run directories go (runs/<name>/<run>)")
    storage: Text | None = Field(None, description="inside a Ray job: the base of relative output_dir, --output and "
                                 "SQLite locations (null: $RAYPFL_STORAGE, else ~/raypfl_results on the driver's "
                                 "node); outside a job unused")


class PartitionConfig(Section):
    kind: Literal["iid", "dirichlet", "shards", "natural", "sampled"] = Field("iid",
        description="how the training set is split: iid, dirichlet (per-class Dir(alpha) shares), shards, natural "
                     "(by writer, femnist), sampled (each client draws samples_per_client from (seed, client) when "
                     "it trains)")
    alpha: Positive = Field(0.6, description="Dirichlet concentration (smaller: more skewed)")
    classes_per_client: int = Field(2, ge=1, description="shards: label shards per client")
    min_samples: int = Field(1, ge=1, description="every client holds at least this many samples")
    order: Literal["size_asc", "random"] = Field("size_asc",
        description="dirichlet: clients sorted by size ascending, as the papers' code does (client 0 gets the "
                     "smallest share), or random")
    samples_per_client: int | None = Field(None, ge=1,
        description="sampled (or iid): each client draws this many distinct samples of its own; clients may share "
                     "samples (populations larger than the data)")

    @model_validator(mode="after")
    def _drawn_samples(self) -> PartitionConfig:
        if self.samples_per_client is not None and self.kind not in ("iid", "sampled"):
            raise ValueError("data.partition.samples_per_client applies to the sampled (and iid) partitions only")
        if self.kind == "sampled" and self.samples_per_client is None:
            raise ValueError("data.partition.kind 'sampled' needs data.partition.samples_per_client")
        return self


class SyntheticConfig(Section):
    num_train: int = Field(2000, ge=10, description="training samples")
    num_test: int = Field(500, ge=10, description="test samples")
    num_classes: int = Field(10, ge=2, description="classes")
    image_size: int = Field(8, ge=4, description="side of the square one-channel images")
    noise: float = Field(1.0, ge=0.0, description="standard deviation around each class's centre")


class DataConfig(Section):
    dataset: Literal["digits", "fashion_mnist", "mnist", "cifar10", "femnist", "synthetic"] = Field("digits",
        description="digits (embedded), fashion_mnist, mnist, cifar10, femnist (local files), synthetic")
    data_dir: Text | None = Field(None, description="folder of the dataset's files (null: the dataset's default place)")
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(0.2,
        description="digits and synthetic: the share held out for testing")
    augment: bool = Field(False, description="random crop and flip of training batches (CIFAR-style)")
    partition: PartitionConfig = Field(default_factory=PartitionConfig,
        description="how the training set is divided over the clients")
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig, description="the generated dataset's shape")


class ModelConfig(Section):
    name: Literal["cnn", "vgg11", "resnet18", "mlp"] = Field("cnn",
        description="cnn (LEAF Conv2), vgg11 (no batch norm), resnet18, mlp")


class ClientClassConfig(Section):
    """One heterogeneity class: density, links, compute speed and the Ray resources of its actors."""

    name: Text = Field(min_length=1, description="the class's name (clients.placement refers to it)")
    density: Density = Field(description="initial sub-model density")
    count: int = Field(ge=1, description="clients in the class")
    download_mbps: Positive = Field(description="mean download bandwidth (MB/s)")
    upload_mbps: Positive = Field(description="mean upload bandwidth (MB/s)")
    compute_tflops: Positive | None = Field(None,
        description="throughput for clients.compute.kind flops (null: base_tflops × density)")
    resources: dict[str, Annotated[float, Field(ge=0.0)]] | None = Field(None,
        description="Ray resources of the class's client actors (null: a GPU share from 0.5 for density 1 down to "
                     "0.1, no CPU)")


class ComputeConfig(Section):
    """Simulated local-round time: `constant` seconds, or `flops` = model FLOPs × density ÷ throughput."""

    kind: Literal["constant", "flops"] = Field("constant",
        description="simulated local-round time: constant seconds, or flops (model FLOPs × density ÷ the class's "
                     "throughput)")
    seconds: Annotated[float, Field(ge=0.0)] = Field(0.5, description="constant: seconds per local round")
    base_tflops: Positive = Field(0.5,
        description="flops: throughput of the density-1 class (TFLOP/s), scaled by density for the levels")


class AvailabilityClassConfig(Section):
    """A heterogeneity class's own diurnal parameters (null: the generator's)."""

    share: Annotated[float, Field(gt=0.0, lt=1.0)] | None = Field(None, description="mean share of time online")
    mean_online_s: Positive | None = Field(None, description="mean length of an online period (virtual s)")
    peak_s: Annotated[float, Field(ge=0.0)] | None = Field(None, description="time of day of the most clients online")


def _availability_shorthand(value: Any) -> Any:
    """`always`, `diurnal`, or a trace file's path, for {kind: ...}."""
    if isinstance(value, str):
        return {"kind": value} if value in ("always", "diurnal") else {"kind": "trace", "path": value}
    return value


class AvailabilityConfig(Section):
    """When clients are online (design principle 11): `always`; a trace file of online intervals (CSV
    `client,start_s,end_s`, or Parquet); or `diurnal`, a seeded generator whose share of clients online follows the
    day. Only online clients are dispatched; a client that goes offline before its upload ends loses the job."""

    kind: Literal["always", "trace", "diurnal"] = Field("always", description="always, trace or diurnal")
    path: Text | None = Field(None, description="trace: the file (a shorthand: clients.availability: FILE)")
    repeat: bool = Field(False, description="trace: repeat it with the period of its last interval's end")
    share: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(0.3, description="diurnal: mean share of time online")
    mean_online_s: Positive = Field(3600.0, description="diurnal: mean length of an online period (virtual s)")
    day_s: Positive = Field(86400.0, description="diurnal: the length of a day (virtual s)")
    amplitude: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        0.5, description="diurnal: how much the online share swings over the day (share · (1 ± amplitude))")
    peak_s: Annotated[float, Field(ge=0.0)] = Field(72000.0, description="diurnal: time of day of the most clients "
                                                    "online (20:00 of a 24 h day)")
    classes: dict[str, AvailabilityClassConfig] = Field(default_factory=dict,
                                                        description="diurnal: per heterogeneity class parameters")
    retry_s: Positive = Field(60.0, description="slots left empty for want of online clients are filled again at "
                              "least this often (virtual s)")

    @model_validator(mode="after")
    def _trace_needs_a_file(self) -> AvailabilityConfig:
        if self.kind == "trace" and not self.path:
            raise ValueError("clients.availability kind 'trace' needs a path (the trace file)")
        return self


class ClientsConfig(Section):
    num_clients: int = Field(10, ge=1, le=100_000_000, description="the population")
    concurrency: int | None = Field(None, ge=1,
        description="clients training at a time: sampled per round (synchronous) or kept in flight (asynchronous); "
                     "null: all")
    heterogeneity: Literal["high", "medium", "low"] | list[ClientClassConfig] = Field("high",
        description="high, medium, low (the papers' class mixes) or a list of explicit classes")
    placement: dict[str, Annotated[str, Field(min_length=1)]] = Field(default_factory=dict,
        description="class name → custom Ray resource (a node pool): that class's client actors run only on nodes "
                     "offering it")
    download_base_mbps: Positive = Field(20.0,
        description="levels: download bandwidth of the density-1 class (× density for the others)")
    upload_base_mbps: Positive = Field(5.0,
        description="levels: upload bandwidth of the density-1 class (× density for the others)")
    compute: ComputeConfig = Field(default_factory=ComputeConfig,
        description="the simulated compute time of a local round")
    availability: Annotated[AvailabilityConfig, BeforeValidator(_availability_shorthand)] = Field(
        default_factory=AvailabilityConfig, description="when clients are online: always, a trace file, or diurnal")

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
    server_up_mbps: Positive = Field(10.0, description="server uplink (MB/s), shared by broadcasts")
    server_down_mbps: Positive = Field(50.0,
        description="server ingress (MB/s), shared by uploads first come first served")
    client_noise_sigma: Annotated[float, Field(ge=0.0)] = Field(0.3,
        description="lognormal sigma of each client's per-round bandwidth noise")
    server_noise_sigma: Annotated[float, Field(ge=0.0)] = Field(0.1,
        description="lognormal sigma of the server's per-round bandwidth noise")
    noise_draws: int = Field(20, ge=1, description="draws averaged per noise factor (the papers' 20)")
    size_model: Literal["sparse", "parity"] = Field("sparse",
        description="sparse (dense bytes × density + a mask bitmap) or parity (model_size_mb × density, as the "
                     "papers count)")
    model_size_mb: Positive | None = Field(None, description="parity: the full model's size in MB")

    @model_validator(mode="after")
    def _parity_needs_a_size(self) -> NetworkConfig:
        if self.size_model == "parity" and self.model_size_mb is None:
            raise ValueError("network.size_model 'parity' needs network.model_size_mb (e.g. 25.98 for FEMNIST)")
        return self


class StalenessConfig(Section):
    kind: Literal["constant", "poly", "hinge"] = Field("poly", description="constant, poly ((missed + 1)^-a) or hinge")
    a: Annotated[float, Field(ge=0.0)] = Field(0.6, description="the staleness exponent (poly) or slope (hinge)")
    b: int = Field(2, ge=0, description="hinge: missed aggregations before the factor drops")


class PruningConfig(Section):
    """Sub-models (spec C): clients start at their class density and train nested unstructured masks."""

    enabled: bool = Field(False, description="clients train nested unstructured sub-models of their density")
    importance: Literal["magnitude", "magnitude_per_cost", "grad_sq"] = Field("magnitude",
        description="mask ranking: magnitude |w|, magnitude_per_cost |w| / layer cost, grad_sq (PR-FL's squared "
                     "gradients)")
    layer_floor: Annotated[float, Field(ge=0.0, le=1.0)] = Field(0.02,
        description="every prunable layer keeps at least this share of its largest weights")
    balance: bool = Field(False,
        description="PR-FL's first stage: shrink slow clients' densities until round times match")


# The papers' restoration schedule length (`recover_time_total`, spec D.1.2) per dataset: FEMNIST's for the
# FEMNIST-sized image sets, CIFAR-10's for cifar10.
PAPER_RECOVER_TIME_S = {"cifar10": 220_000.0}
PAPER_RECOVER_TIME_DEFAULT_S = 70_000.0


class RecoveryConfig(Section):
    """Gradual model restoration (spec D): when and how client densities grow back towards 1."""

    trigger: Literal["none", "plateau", "time", "mixed", "budget"] = Field(
        "none", description="none; plateau (early stopping on the scores, the papers' GMR-ES); time (the papers' "
        "fixed-time schedule over time_total_s); mixed (both); budget (raypfl's: plateaus, a time schedule over "
        "the run's own budget, and min_checks scores per budget)")
    client_trigger: bool = Field(True, description="a plateau of a client's own score restores that client")
    patience: int = Field(5, ge=1, description="evaluations without improvement that make a plateau (spec E.3)")
    end_stage_factor: int = Field(5, ge=1, description="once every client is at density 1, the global patience "
                                  "is patience × this (FedGMR 5, PR-FL 8)")
    end_stage_cap: int | None = Field(50, ge=1, description="at most this end-stage patience (FedGMR 50)")
    global_score: Literal["cache_until_full", "global"] = Field(
        "global", description="what the global detector is fed: the global model's accuracy, or (spec D.1) the "
        "FedAvg of the latest uploads' while some client is below density 0.99, then the global model's")
    step: Literal["ladder", "fixed", "additive"] = Field("ladder",
        description="how a density grows: ladder (the next class density), fixed / additive (+ step_size)")
    step_size: Annotated[float, Field(gt=0.0, le=1.0)] = Field(0.1,
        description="fixed / additive: the density added per step")
    time_total_s: Positive | None = Field(None, description="length of the time schedule (null: the papers' "
                                          "70,000 s, or 220,000 s on cifar10; trigger budget: the run's budget)")
    time_points: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field([0.2, 0.4, 0.6, 0.8, 1.0],
        description="time schedule: shares of its length at which the floor steps")
    time_ladder: list[Density] = Field([0.05, 0.1, 0.2, 0.5, 1.0],
        description="time schedule: the floors (the first is the starting stage)")
    rollback: bool = Field(False, description="a global restoration step first rolls the model back to the best "
                           "one evaluated (PR-FL)")
    client_eval_samples: int = Field(1000, ge=1, description="test samples a client's model is scored on")
    client_eval_every: int = Field(25, ge=1, description="a client's model is scored every this many of its "
                                   "local rounds (×5 once every client is at density 1)")
    client_eval_first: bool = Field(True, description="score local rounds 1, every + 1, ... (spec D.1); false: "
                                    "every, 2·every, ... (no score of a client's first round)")
    min_checks: int | None = Field(None, ge=0, description="the global plateau trigger is fed at least this often "
                                   "per budget, scoring the global model between sparse evaluations (not "
                                   "recorded); null: 100 with trigger budget, else 0 (evaluations only)")

    @model_validator(mode="after")
    def _points_match_ladder(self) -> RecoveryConfig:
        if len(self.time_points) != len(self.time_ladder):
            raise ValueError("recovery.time_points and recovery.time_ladder must have the same length")
        return self

    @property
    def checks_per_budget(self) -> int:
        if self.min_checks is not None:
            return self.min_checks
        return 100 if self.trigger == "budget" else 0

    @property
    def has_plateaus(self) -> bool:
        return self.trigger in ("plateau", "mixed", "budget")

    @property
    def has_time_schedule(self) -> bool:
        return self.trigger in ("time", "mixed", "budget")

    def schedule_length(self, dataset: str, budget_s: float) -> float:
        """The time schedule's length: time_total_s, else the run's budget (trigger budget) or the papers' total."""
        if self.time_total_s is not None:
            return self.time_total_s
        if self.trigger == "budget":
            return budget_s
        return PAPER_RECOVER_TIME_S.get(dataset, PAPER_RECOVER_TIME_DEFAULT_S)


class WidthConfig(Section):
    """Width-sliced sub-models (spec F): `static` first channels (HeteroFL), a `rolling` window (FedRolex),
    `ordered` dropout over the widths of `ladder` (FjORD)."""

    kind: Literal["none", "static", "rolling", "ordered"] = Field("none",
        description="width-sliced sub-models: static (HeteroFL), rolling (FedRolex), ordered (FjORD), none")
    ladder: list[Density] = Field([0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0], min_length=1,
        description="FjORD: the widths a client cycles through (those up to its own)")


AlgorithmName = Literal["fedavg", "fedasync", "fedbuff", "fedfix", "fedgmr", "prfl", "heterofl", "fedrolex", "fjord"]


class AlgorithmConfig(Section):
    """`name` selects a preset (raypfl.fl.algorithms), `variant` wraps the width-sliced methods in raypfl's
    buffer (`aux`) and restoration (`aux_gmr`); every other key given here overrides the preset."""

    name: AlgorithmName = Field("fedgmr",
        description="the method: a preset of every other algorithm key (raypfl config show lists them)")
    variant: Literal["base", "aux", "aux_gmr", "masks"] = Field("base",
        description="aux / aux_gmr: width-sliced methods in FedGMR's buffer (and restoration); masks: HeteroFL with "
                     "nested unstructured masks")
    trigger: Literal["synchronous", "every_arrival", "count", "reference_window", "fixed_window"] = Field(
        description="when the buffer is aggregated: synchronous, every_arrival, count (buffer_size), "
                     "reference_window (grace_s after the reference clients), fixed_window (grace_s windows, "
                     "min_arrivals)")
    buffer_size: int = Field(ge=1, description="count: updates per aggregation (FedBuff's K)")
    min_arrivals: int = Field(ge=1, description="fixed_window: updates a window waits for")
    reference_clients: list[Annotated[int, Field(ge=0)]] = Field(min_length=1,
        description="reference_window: the clients whose arrival opens the window (always in flight)")
    grace_s: Annotated[float, Field(ge=0.0)] = Field(description="window length or grace after the reference clients "
                                                     "(virtual s)")
    server_time_s: Annotated[float, Field(ge=0.0)] = Field(description="server processing time between an "
                                                           "aggregation and its broadcast (virtual s)")
    refresh_every: int | None = Field(None, ge=1,
        description="rebuild sub-models every this many aggregations (null: at every evaluation); density changes "
                     "rebuild them at once")
    rule: Literal["ma", "ma_mix", "fa", "ga", "delta"] = Field(
        description="ma (mask-aware average), ma_mix, fa (zero-filled FedAvg), ga (update averaging), delta "
                     "(FedBuff: clients' own updates)")
    mixing: Annotated[float, Field(gt=0.0, le=1.0)] | None = Field(
        description="FedAsync's alpha (null: the arrivals' share of the staleness weights)")
    round_deadline_s: Positive | None = Field(None, description="synchronous: a round is aggregated at most this "
                                              "long after it was dispatched, with the updates that arrived (null: "
                                              "it waits for every client)")
    over_selection: Annotated[float, Field(ge=0.0)] = Field(0.0, description="synchronous: dispatch this share more "
                                                            "clients than a round needs; it is aggregated when the "
                                                            "needed number has arrived, the rest are dropped")
    server_lr: Positive = Field(description="server learning rate of ga and delta")
    scope: Literal["window", "cache"] = Field(
        description="window (the arrivals) or cache (every client's latest upload, PR-FL)")
    ims: bool = Field(description="send sub-models as ascending-density increments (one full model per broadcast)")
    staleness: StalenessConfig = Field(description="the staleness factor of an update")
    pruning: PruningConfig = Field(description="pruned sub-models")
    recovery: RecoveryConfig = Field(description="gradual model restoration")
    width: WidthConfig = Field(description="width-sliced sub-models")

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
    def _deltas_are_dense_updates(self) -> AlgorithmConfig:
        if self.rule == "delta" and (self.width.kind != "none" or self.scope == "cache"):
            raise ValueError("algorithm.rule 'delta' (clients upload their updates) needs unsliced sub-models and "
                             "algorithm.scope 'window'")
        return self

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
    lr: Positive = Field(0.05, description="client SGD learning rate")
    batch_size: int = Field(20, ge=1, description="samples per local step")
    local_steps: int = Field(5, ge=1, description="SGD steps per client update")
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(0.0, description="SGD momentum")
    weight_decay: Annotated[float, Field(ge=0.0)] = Field(0.0, description="SGD weight decay")
    loss: Literal["ce", "bce"] = Field("ce",
        description="ce (cross-entropy) or bce (BCE on one-hot, the papers' CIFAR-10/FEMNIST)")
    clip_grad_norm: Positive | None = Field(None, description="clip each step's gradient norm (null: no clipping)")
    eval_batch_size: int = Field(1000, ge=1, description="test samples per evaluation batch")


class BudgetConfig(Section):
    virtual_time_s: Positive = Field(1200.0, description="the run's length in simulated seconds")
    max_rounds: int | None = Field(None, ge=1, description="also stop after this many aggregations")
    eval_every: int = Field(10, ge=1, description="evaluate every this many aggregations")
    eval_every_s: Positive | None = Field(None, description="instead, evaluate the latest global model at every "
                                          "multiple of this many virtual seconds (the same grid for every method)")
    eval_at_start: bool = Field(True, description="also evaluate the initial model (round 0)")
    eval_samples: int | None = Field(None, ge=1, description="test samples per evaluation (null: all)")
    report_at_s: Positive | None = Field(None, description="T* of spec E.5: the reported accuracy is the mean ± std "
                                         "of the ±10 evaluations around the first one at or past T* (null: the "
                                         "budget, i.e. the last 11 evaluations)")
    report_span: int = Field(10, ge=0, description="evaluations on each side of the one at T*")
    smoothing: int = Field(20, ge=1, description="time to accuracy: first time the mean of the last this many "
                           "evaluations reaches a target (the papers' window 20)")
    cache_model: bool | None = Field(None, description="also evaluate the FedAvg of every client's latest upload "
                                     "(spec E.5); null: when every client takes part")
    target_accuracies: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
        [0.8, 0.9], description="accuracies whose time to reach is reported")


class RuntimeConfig(Section):
    mode: Literal["virtual", "realtime"] = Field("virtual",
        description="virtual (deterministic) or realtime (events also stretched in wall-clock time, not "
                     "deterministic)")
    num_workers: int | None = Field(None, ge=1,
        description="client actors (null: the cluster's CPUs, at most the clients, fewer where GPU shares would not "
                     "fit); results do not depend on it")
    time_scale: Annotated[float, Field(ge=0.0)] = Field(0.001, description="realtime: wall seconds per virtual second")
    device: Literal["auto", "cpu", "cuda"] = Field("auto",
        description="auto (CUDA when the actor sees a GPU), cpu or cuda")
    threads_per_worker: int = Field(1, ge=1, description="PyTorch threads per client actor")
    logical_gpus: int = Field(4, ge=0, description="GPUs a local Ray instance declares when the machine has none")
    checkpoint_every: int = Field(5, ge=0,
        description="evaluations between checkpoints (0: none but at the end and on interruption)")
    queue_depth: int = Field(2, ge=1, description="training jobs queued at a client actor at a time")
    max_restarts: int = Field(5, ge=0, description="restarts of a client actor (and aggregator rebuilds) before a run "
                              "stops")


class TrackingConfig(Section):
    enabled: bool = Field(True, description="log the run to MLflow")
    uri: Text | None = Field(None,
        description="MLflow tracking URI (null: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    experiment: Text = Field("raypfl", min_length=1, description="MLflow experiment name")


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
