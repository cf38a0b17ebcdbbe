"""The detector interface: what one detector family declares and the one step it runs per round.

A detector (in the spirit of River's ``river/drift/``: one detector per module
behind one base class) declares, as class attributes:

* ``name`` - its key in the registry and in the stored detector state;
* ``kinds`` - the finding kinds it can raise (:class:`FindingKind`: per client
  or per federation, one-line meaning, an example sentence);
* ``Thresholds`` - a frozen dataclass of its thresholds (:func:`threshold`
  gives each a default and a one-line meaning); ``calibrated`` names those
  calibration mode may set;
* ``State`` - a dataclass of what it carries between rounds
  (:class:`DetectorStateBase`, with its own ``LAYOUT`` version);
* ``client_scores`` / ``round_scores`` / ``streaks`` / ``flagged_counts`` -
  the per-client and per-round scores it writes (names, help text and the
  Prometheus metric each is exported as, if any);

and implements :meth:`Detector.step`: the round (:class:`RoundContext`) and its
own state in, a :class:`Step` out (scores, active signals, values that later
detectors may read). The step may update its state in place: the analyzer hands
it a private copy and stores the result as the new state.

Detectors run in registry order (:mod:`monitor.detectors.registry`); a
detector that combines others (``data_drift`` reads label and feature drift)
reads their :class:`Step` through :meth:`RoundContext.output`, and any
detector adds its part of the combined anomaly score with
:meth:`RoundContext.add_anomaly`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from monitor.detectors.output import ActiveSignal

if TYPE_CHECKING:
    from monitor.detectors.inputs import RoundInput, RunConfig

__all__ = [
    "FindingKind",
    "ClientScore",
    "RoundScore",
    "Streak",
    "threshold",
    "client_field",
    "DetectorStateBase",
    "NoThresholds",
    "NoState",
    "RoundContext",
    "Step",
    "Detector",
    "nan_array",
]

Scope = Literal["client", "federation"]


# ---------------------------------------------------------------------------
# Declarations


@dataclass(frozen=True)
class FindingKind:
    """A finding kind a detector can raise."""

    name: str
    scope: Scope
    help: str
    """One line: what the finding means."""
    example: str = ""
    """The sentence a finding of this kind carries (for the reference table)."""


@dataclass(frozen=True)
class ClientScore:
    """A per-client score (a column of ``RoundAnalysis.client_scores``)."""

    name: str
    help: str
    metric: str | None = None
    """Exported as this per-client gauge (``fl_client_*``), or not exported."""
    quantile: str | None = None
    """Also exported as federation quantiles under this name (``fl_run_client_*_quantile``)."""
    quantile_what: str = ""
    """The quantile gauge's HELP says "Quantile q of the <quantile_what> ..."."""


@dataclass(frozen=True)
class RoundScore:
    """A per-round score (a key of ``RoundAnalysis.round_scores``)."""

    name: str
    help: str
    metric: str | None = None
    """Exported as this per-run gauge (``fl_run_*``), or not exported."""


@dataclass(frozen=True)
class Streak:
    """A per-client streak: consecutive observed rounds over threshold.

    Written as the client score ``<name>_streak_rounds`` and exported as
    ``fl_client_<name>_streak_rounds`` (alert rules read these).
    """

    name: str
    what: str
    """Completes "... in which the client's <what> was over threshold"."""

    @property
    def score(self) -> str:
        return f"{self.name}_streak_rounds"

    @property
    def metric(self) -> str:
        return f"fl_client_{self.name}_streak_rounds"

    @property
    def help(self) -> str:
        return (
            f"Consecutive analysed rounds in which the client's {self.what} "
            "was over threshold (0 = not now)."
        )


def threshold(default: float | int, help: str) -> Any:
    """A threshold field: its default and one line on what it means (the docs table reads it)."""
    return field(default=default, metadata={"help": help})


def client_field(fill: float | int | str = 0, dtype: Any = np.float64) -> Any:
    """A per-client state array (one row per client the run has seen).

    New clients get rows of ``fill`` (``"round"``: the round they first
    appear in). ``dtype`` is the dtype of a fresh, empty array.
    """
    return field(
        default_factory=lambda: np.zeros(0, dtype=dtype),
        metadata={"per_client": True, "fill": fill},
    )


@dataclass(frozen=True)
class NoThresholds:
    """For a detector without thresholds of its own."""


# ---------------------------------------------------------------------------
# State


@dataclass
class DetectorStateBase:
    """What one detector carries between rounds.

    Fields are numpy arrays, lists of arrays, ``dict[str, array]`` or
    JSON-able scalars. Fields made with :func:`client_field` (and list
    fields named in ``PER_CLIENT_LISTS``) have one row per client the run has
    seen, in the order of :class:`monitor.detectors.state.DetectorState`'s
    ``client_ids``; the analyzer grows them when new clients appear.

    ``LAYOUT`` is this state's own format version: bump it when the fields
    change meaning or shape. A stored state of another layout is dropped for
    this detector alone (logged), and the detector starts fresh.
    """

    LAYOUT: ClassVar[int] = 1
    PER_CLIENT_LISTS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def fresh(cls, cfg: RunConfig, num_clients: int) -> DetectorStateBase:
        """A state for a run with ``num_clients`` known clients and nothing learnt yet.

        The default builds every field's default and grows per-client fields;
        override when the shapes depend on the run (classes, bins, sketch).
        """
        out = cls()
        out.grow(num_clients, 0)
        return out

    def _client_fields(self) -> list[Any]:
        return [f for f in fields(self) if f.metadata.get("per_client")]

    def grow(self, n_new: int, round_: int) -> None:
        """Append rows for ``n_new`` clients first seen in ``round_``."""
        if n_new <= 0:
            return
        for f in self._client_fields():
            a = getattr(self, f.name)
            fill = round_ if f.metadata["fill"] == "round" else f.metadata["fill"]
            pad = np.full((n_new,) + a.shape[1:], fill, dtype=a.dtype)
            setattr(self, f.name, np.concatenate([a, pad]))
        for name in self.PER_CLIENT_LISTS:
            grown = [
                np.concatenate([a, np.zeros((n_new,) + a.shape[1:], dtype=a.dtype)])
                for a in getattr(self, name)
            ]
            setattr(self, name, grown)

    def copy(self) -> DetectorStateBase:
        out = replace(self)
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                setattr(out, f.name, v.copy())
            elif isinstance(v, list):
                setattr(out, f.name, [a.copy() for a in v])
            elif isinstance(v, dict):
                setattr(out, f.name, {k: np.array(a, copy=True) for k, a in v.items()})
        return out

    def pack(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays by field path, JSON header) for :meth:`unpack`."""
        arrays: dict[str, np.ndarray] = {}
        header: dict[str, Any] = {"layout": self.LAYOUT, "scalars": {}, "lists": {}, "dicts": {}}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                arrays[f.name] = v
            elif isinstance(v, list):
                header["lists"][f.name] = len(v)
                arrays.update({f"{f.name}/{i}": a for i, a in enumerate(v)})
            elif isinstance(v, dict):
                header["dicts"][f.name] = list(v)
                arrays.update({f"{f.name}/{k}": a for k, a in v.items()})
            else:
                header["scalars"][f.name] = v
        return arrays, header

    @classmethod
    def unpack(cls, arrays: dict[str, np.ndarray], header: dict[str, Any]) -> DetectorStateBase:
        """Inverse of :meth:`pack`; raises ``KeyError``/``ValueError`` on a state it cannot read."""
        kw: dict[str, Any] = dict(header["scalars"])
        for name, count in header["lists"].items():
            kw[name] = [arrays[f"{name}/{i}"] for i in range(count)]
        for name, keys in header["dicts"].items():
            kw[name] = {k: arrays[f"{name}/{k}"] for k in keys}
        present = [f for f in fields(cls) if f.name not in kw and f.name in arrays]
        for f in present:
            kw[f.name] = arrays[f.name]
        # a field added to a layout since the state was stored (additive, no layout bump):
        # per-client arrays start at their fill for the clients already known, others at default
        known = next((kw[f.name].shape[0] for f in present if f.metadata.get("per_client")), 0)
        for f in fields(cls):
            if f.name in kw:
                continue
            if f.metadata.get("per_client"):
                fresh = f.default_factory()  # type: ignore[misc]
                fill = 0 if f.metadata["fill"] == "round" else f.metadata["fill"]
                kw[f.name] = np.full((known,) + fresh.shape[1:], fill, dtype=fresh.dtype)
            elif f.default is not MISSING:
                kw[f.name] = f.default
            elif f.default_factory is not MISSING:
                kw[f.name] = f.default_factory()
            else:
                raise KeyError(f.name)
        return cls(**kw)


@dataclass
class NoState(DetectorStateBase):
    """For a detector that carries nothing between rounds."""


# ---------------------------------------------------------------------------
# The round


def nan_array(n: int) -> np.ndarray:
    return np.full(n, np.nan)


@dataclass
class Step:
    """What one detector's step produced for one round.

    ``values`` holds arrays and numbers that later detectors may read
    (``ctx.output(name).values[...]``); each detector documents its own.
    """

    client_scores: dict[str, np.ndarray] = field(default_factory=dict)
    round_scores: dict[str, float] = field(default_factory=dict)
    active: list[ActiveSignal] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class RoundContext:
    """One round as every detector sees it, plus the outputs of the detectors that ran before.

    ``idx`` maps the round's clients (``ids``, aligned with ``data``) to rows
    of the run's client table (``client_ids``, ``first_round``,
    ``last_seen_round``: one row per client ever seen) and of every
    per-client state array. ``th`` are the thresholds in effect (overrides and
    calibrated values applied), ``base_th`` the same before calibration.
    """

    cfg: RunConfig
    th: Any
    base_th: Any
    data: RoundInput
    round: int
    ids: list[str]
    idx: np.ndarray
    client_ids: np.ndarray
    last_seen_round: np.ndarray
    rounds_seen: int
    """Rounds analysed before this one."""
    ok: np.ndarray
    """Clients whose status is ``ok``."""
    healthy: np.ndarray
    """``ok`` and nothing non-finite: the clients calibration samples may come from."""
    noise_var: np.ndarray
    """Per-client variance of the histogram noise the client declared (0 = none)."""
    calibrating: bool
    calibration_samples: dict[str, np.ndarray]
    calibration_limit: dict[str, float]
    outputs: dict[str, Step] = field(default_factory=dict)
    anomaly_parts: list[np.ndarray] = field(default_factory=list)
    anomaly_infinite: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def num_clients(self) -> int:
        return int(self.client_ids.shape[0])

    def output(self, name: str) -> Step:
        """The step of detector ``name``, which must have run earlier in this round."""
        try:
            return self.outputs[name]
        except KeyError:
            raise KeyError(
                f"detector {name!r} has not run before this one; order the registry so it does"
            ) from None

    def add_anomaly(self, part: np.ndarray) -> None:
        """A part of the combined anomaly score: the client's score over its threshold (1 = at it).

        NaN counts as 0; the combined score is the max over parts.
        """
        self.anomaly_parts.append(part)

    def mark_infinite_anomaly(self, mask: np.ndarray) -> None:
        """Clients whose combined anomaly score is +Inf (non-finite updates)."""
        self.anomaly_infinite = (
            mask.copy() if self.anomaly_infinite is None else self.anomaly_infinite | mask
        )

    def collect(self, name: str, values: np.ndarray) -> None:
        """Calibration sample of threshold ``name`` (healthy-looking scores only; no-op unless calibrating)."""
        if not self.calibrating:
            return
        limit = self.calibration_limit[name]
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v) & (v <= limit)]
        if v.size > CALIBRATION_PER_ROUND:
            v = v[:: int(math.ceil(v.size / CALIBRATION_PER_ROUND))]
        old = self.calibration_samples.get(name, np.zeros(0))
        self.calibration_samples[name] = np.concatenate([old, v])[-CALIBRATION_CAP:]

    def since(self, streak: np.ndarray, i: int) -> int:
        """The first round of the streak that client ``i`` of this round is in."""
        return self.round - int(streak[self.idx[i]]) + 1


CALIBRATION_CAP = 50_000
CALIBRATION_PER_ROUND = 5_000


class Detector(ABC):
    """One detector family. Subclasses set the class attributes and implement :meth:`step`."""

    name: ClassVar[str]
    kinds: ClassVar[tuple[FindingKind, ...]] = ()
    Thresholds: ClassVar[type] = NoThresholds
    calibrated: ClassVar[tuple[str, ...]] = ()
    """Names of its thresholds that calibration mode may set from healthy-looking scores."""
    State: ClassVar[type[DetectorStateBase]] = NoState
    client_scores: ClassVar[tuple[ClientScore, ...]] = ()
    round_scores: ClassVar[tuple[RoundScore, ...]] = ()
    streaks: ClassVar[tuple[Streak, ...]] = ()
    flagged_counts: ClassVar[tuple[str, ...]] = ()
    """Signals whose ``clients_<signal>`` round score it writes (``fl_run_clients_flagged{signal}``)."""

    def new_state(self, cfg: RunConfig, num_clients: int) -> DetectorStateBase:
        return self.State.fresh(cfg, num_clients)

    @abstractmethod
    def step(self, ctx: RoundContext, state: Any) -> Step:
        """Analyse one round: scores, active signals, values for later detectors; update ``state``."""

    def finish(
        self, ctx: RoundContext, active: list[ActiveSignal], state: Any = None
    ) -> tuple[list[ActiveSignal], dict[str, float]]:
        """After every detector's step: rewrite the round's signals (default: unchanged).

        For a detector that relates signals to each other (one finding per cause,
        :mod:`monitor.detectors.causes`); returns the signals and extra round scores.
        ``state`` is the detector's own state, as :meth:`step` had it (it may update it).
        """
        return active, {}

    @classmethod
    def threshold_fields(cls) -> list[Any]:
        return list(fields(cls.Thresholds))

    @classmethod
    def threshold_defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in fields(cls.Thresholds) if f.default is not MISSING}
