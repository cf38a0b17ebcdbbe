"""A simulation scenario: the federation, the training recipe, and the faults to inject.

Loaded from YAML or TOML (``Scenario.from_file``), or built in code. Unknown
keys are errors, so a typo in a scenario file is reported rather than ignored.
Example::

    run_id: demo
    dataset: digits
    partition: dirichlet
    alpha: 0.5
    num_clients: 30
    rounds: 25
    faults:
      - kind: label_drift
        clients: [3]
        onset_round: 10
        severity: 0.7
        target_class: 1        # kind-specific option
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FaultKind = Literal[
    "label_drift",
    "covariate_shift",
    "label_flip",
    "noisy_labels",
    "stale_update",
    "free_rider",
    "exploding_update",
    "nonfinite_update",
    "dropout",
    "straggler",
    "fairness_regression",
    "sign_flip",
    "gaussian_noise",
    "alie",
    "ipm",
    "federation_covariate_shift",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
"""Every fault the simulator can inject (one definition: the Literal above)."""

FAULT_OPTIONS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "label_drift": {"target_class": int},
    "covariate_shift": {"features": list, "shift": (int, float)},
    "label_flip": {},
    "noisy_labels": {},
    "stale_update": {},
    "free_rider": {"noise_std": (int, float)},
    "exploding_update": {"scale": (int, float)},
    "nonfinite_update": {"value": str},
    "dropout": {},
    "straggler": {"slowdown": (int, float)},
    "fairness_regression": {"ramp_rounds": int, "shift": (int, float)},
    "sign_flip": {},
    "gaussian_noise": {},
    "alie": {},
    "ipm": {},
    "federation_covariate_shift": {"features": list, "shift": (int, float)},
}
"""Kind-specific options a fault accepts (see :mod:`simulator.faults` for their meaning)."""

FEDERATION_FAULTS: tuple[str, ...] = ("federation_covariate_shift",)
"""Faults that hit every client at once: they name no clients (the ground truth lists them all)."""

COLLUDING_FAULTS: tuple[str, ...] = ("alie", "ipm")
"""Faults whose clients craft one shared update from the round's honest updates."""

_FRACTION_SEVERITY = (
    "label_drift",
    "label_flip",
    "noisy_labels",
    "dropout",
    "stale_update",
    "free_rider",
    "nonfinite_update",
    "fairness_regression",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FaultSpec(_Strict):
    """One fault on chosen clients from ``onset_round`` (inclusive) to ``end_round`` (inclusive, or the end).

    ``clients`` are indices (``3``) or ids (``"c003"``); a federation-wide fault
    (:data:`FEDERATION_FAULTS`) names none and hits every client. Options not named
    here are kind-specific and collected into ``options``.
    """

    kind: FaultKind
    clients: list[int | str] = Field(default_factory=list)
    onset_round: int = Field(default=1, ge=1)
    severity: float = Field(default=1.0, ge=0)
    end_round: int | None = Field(default=None, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _collect_options(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        known = set(cls.model_fields)
        data = dict(data)
        options = dict(data.pop("options", None) or {})
        for key in [k for k in data if k not in known]:
            options[key] = data.pop(key)
        data["options"] = options
        return data

    @model_validator(mode="after")
    def _check(self) -> FaultSpec:
        allowed = FAULT_OPTIONS[self.kind]
        if self.kind in FEDERATION_FAULTS and self.clients:
            raise ValueError(f"fault {self.kind}: hits every client at once; do not list clients")
        if self.kind not in FEDERATION_FAULTS and not self.clients:
            raise ValueError(f"fault {self.kind}: name at least one client")
        for key, value in self.options.items():
            if key not in allowed:
                hint = ", ".join(sorted(allowed)) or "none"
                raise ValueError(f"fault {self.kind}: unknown option {key!r} (accepted: {hint})")
            if isinstance(value, bool) or not isinstance(value, allowed[key]):
                raise ValueError(
                    f"fault {self.kind}: option {key!r} has the wrong type ({value!r})"
                )
        if self.end_round is not None and self.end_round < self.onset_round:
            raise ValueError(
                f"fault {self.kind}: end_round {self.end_round} is before onset_round {self.onset_round}"
            )
        if self.kind in _FRACTION_SEVERITY and self.severity > 1:
            raise ValueError(
                f"fault {self.kind}: severity is a fraction/probability and must be <= 1"
            )
        if self.kind == "nonfinite_update" and self.options.get("value", "nan") not in (
            "nan",
            "inf",
        ):
            raise ValueError("fault nonfinite_update: option value must be 'nan' or 'inf'")
        return self

    def active(self, round: int) -> bool:
        return round >= self.onset_round and (self.end_round is None or round <= self.end_round)


class DPSettings(_Strict):
    """DP-FedAvg: clip norm C, noise multiplier sigma; the sample rate is ``sample_fraction``."""

    noise_multiplier: float = Field(
        gt=0, description="sigma > 0: without noise there is no DP guarantee (epsilon is infinite)."
    )
    clip_norm: float = Field(gt=0)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    target_epsilon: float | None = Field(default=None, gt=0)


class HistogramNoiseSettings(_Strict):
    mechanism: Literal["laplace", "gaussian"] = "laplace"
    scale: float = Field(gt=0)


class TelemetryBudgetSettings(_Strict):
    """Each client's total telemetry budget for the run (collectors/privacy.py, docs/privacy.md).

    Spread over ``ceil(rounds / every_k_rounds)`` histogram releases as
    calibrated Gaussian noise; replaces ``histogram_noise``.
    """

    epsilon: float = Field(gt=0, allow_inf_nan=False)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    every_k_rounds: int = Field(default=1, ge=1)


class WallTimeModel(_Strict):
    """Modelled client wall time (a batched simulation has no per-client clock).

    ``t_k = overhead + seconds_per_example * examples_processed * speed_k * jitter``,
    ``speed_k ~ LogNormal(0, speed_sigma)`` fixed per client (device heterogeneity),
    ``jitter ~ LogNormal(0, jitter_sigma)`` per round. Deterministic given the seed.
    """

    overhead_seconds: float = Field(default=0.05, ge=0)
    seconds_per_example: float = Field(default=2e-4, ge=0)
    speed_sigma: float = Field(default=0.3, ge=0)
    jitter_sigma: float = Field(default=0.1, ge=0)


class Scenario(_Strict):
    run_id: str = Field(default="sim", pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
    name: str | None = None
    dataset: Literal["digits", "synthetic", "breast_cancer", "wine"] = "digits"
    synthetic_alpha: float = Field(default=1.0, ge=0)
    synthetic_beta: float = Field(default=1.0, ge=0)
    synthetic_iid: bool = False
    synthetic_max_examples: int | None = Field(default=None, ge=50)
    partition: Literal["iid", "dirichlet", "quantity", "feature", "natural"] = "iid"
    alpha: float = Field(
        default=0.5, gt=0, description="Dirichlet concentration (label or quantity skew)."
    )
    feature_skew: float = Field(
        default=0.5, ge=0, description="Strength of the per-client affine feature map."
    )
    num_clients: int = Field(default=10, ge=1, le=100_000)
    test_fraction: float = Field(default=0.2, ge=0, lt=1)
    rounds: int = Field(default=20, ge=1)
    model: Literal["logreg", "mlp"] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [64])
    algorithm: Literal["fedavg", "fedprox"] = "fedavg"
    mu: float = Field(
        default=0.01, ge=0, description="FedProx proximal weight (ignored by fedavg)."
    )
    sample_fraction: float = Field(default=1.0, gt=0, le=1)
    missing_reports: Literal["omit", "timeout"] = Field(
        default="omit",
        description="How the server reports a sampled client that did not answer: 'omit' "
        "(only who answered is reported) or 'timeout' (a report with status timeout, as a "
        "Flower server sees a failed reply).",
    )
    local_epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=16, ge=1)
    lr: float = Field(default=0.3, gt=0)
    seed: int = Field(default=0, ge=0)
    sketch_dim: int = Field(default=64, ge=1, le=4096)
    sketch_seed: int | None = None
    bins: int = Field(default=10, ge=1, le=1000)
    dp: DPSettings | None = None
    histogram_noise: HistogramNoiseSettings | None = None
    telemetry_budget: TelemetryBudgetSettings | None = None
    histograms: Literal["all", "labels", "none"] = Field(
        default="all", description="Which histograms clients send: label and feature, label only, none."
    )
    secure_aggregation: bool = Field(
        default=False,
        description=(
            "Clients report update norm, cosine to the previous global update and a repeat flag "
            "(computed client-side) instead of an update sketch."
        ),
    )
    local_baselines: bool = False
    centralized_baseline: bool = True
    wall_time: WallTimeModel = Field(default_factory=WallTimeModel)
    engine: Literal["batched", "sequential"] = "batched"
    faults: list[FaultSpec] = Field(default_factory=list)

    @field_validator("hidden")
    @classmethod
    def _hidden(cls, v: list[int]) -> list[int]:
        if any(h < 1 for h in v):
            raise ValueError("hidden layer widths must be >= 1")
        return v

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        if self.telemetry_budget is not None and self.histogram_noise is not None:
            raise ValueError("set telemetry_budget or histogram_noise, not both")
        if self.partition == "natural" and self.dataset != "synthetic":
            raise ValueError(
                f"dataset {self.dataset} has no natural split; use iid, dirichlet, quantity or feature"
            )
        for i, fault in enumerate(self.faults):
            indices = [self.client_index(c) for c in fault.clients if _is_client_ref(c)]
            if len(set(indices)) != len(indices):
                raise ValueError(
                    f"faults[{i}] ({fault.kind}): lists a client twice (it would apply twice)"
                )
            for c in fault.clients:
                try:
                    k = self.client_index(c)
                except ValueError as exc:
                    raise ValueError(f"faults[{i}] ({fault.kind}): {exc}") from None
                if not 0 <= k < self.num_clients:
                    raise ValueError(
                        f"faults[{i}] ({fault.kind}): client {c!r} is outside 0..{self.num_clients - 1}"
                    )
            if fault.onset_round > self.rounds:
                raise ValueError(
                    f"faults[{i}] ({fault.kind}): onset_round {fault.onset_round} is after the last round {self.rounds}"
                )
        return self

    # -- helpers -------------------------------------------------------------

    @property
    def id_width(self) -> int:
        return max(3, len(str(self.num_clients - 1)))

    def client_id(self, index: int) -> str:
        """Zero-padded client ids: ``c000``, ``c001``, ..."""
        return f"c{index:0{self.id_width}d}"

    def client_index(self, client: int | str) -> int:
        if isinstance(client, int):
            return client
        text = client.strip()
        if text.isdigit():
            return int(text)
        if text.startswith("c") and text[1:].isdigit():
            return int(text[1:])
        raise ValueError(f"client {client!r} is neither an index nor an id like 'c007'")

    @property
    def effective_sketch_seed(self) -> int:
        return self.seed if self.sketch_seed is None else self.sketch_seed

    @property
    def effective_mu(self) -> float:
        return self.mu if self.algorithm == "fedprox" else 0.0

    @classmethod
    def from_file(cls, path: str | Path) -> Scenario:
        """Read a scenario from ``.yaml``/``.yml`` or ``.toml``."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        suffix = path.suffix.lower()
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise ValueError(f"{path}: scenario files must end in .yaml, .yml or .toml")
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a scenario must be a mapping at the top level")
        return cls.model_validate(data)


def _is_client_ref(client: int | str) -> bool:
    """True for an index or an id like 'c007' (bad references are reported by the loop after)."""
    if isinstance(client, int):
        return True
    text = client.strip()
    return text.isdigit() or (text.startswith("c") and text[1:].isdigit())


def demo_scenario() -> Scenario:
    """30 clients of digits under Dirichlet(0.5) label skew, 25 rounds, three faults.

    * ``c003``: label drift toward class 1 from round 10;
    * ``c011``: non-finite updates from round 14;
    * ``c020``-``c022``: a cohort that silently drops out from round 18.
    """
    return Scenario(
        run_id="demo",
        name="fedsentinel demo: digits, 30 clients, Dirichlet 0.5",
        dataset="digits",
        partition="dirichlet",
        alpha=0.5,
        num_clients=30,
        rounds=25,
        model="mlp",
        hidden=[64],
        lr=0.3,
        local_epochs=1,
        batch_size=16,
        local_baselines=True,
        faults=[
            FaultSpec(
                kind="label_drift",
                clients=[3],
                onset_round=10,
                severity=0.7,
                options={"target_class": 1},
            ),
            FaultSpec(kind="nonfinite_update", clients=[11], onset_round=14, severity=1.0),
            FaultSpec(kind="dropout", clients=[20, 21, 22], onset_round=18, severity=1.0),
        ],
    )
