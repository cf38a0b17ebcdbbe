"""The run's detector state: a client table shared by all detectors, plus one state per detector.

Serialised as an uncompressed ``.npz`` (no pickle) whose ``__header__`` entry
is UTF-8 JSON. Each detector's state is stored under its name with its own
layout version (:attr:`DetectorStateBase.LAYOUT`): a stored state whose layout
the detector does not read, or that does not unpack, is dropped for that
detector alone with a log line, and the detector starts fresh. Format 1 (one
shared layout, before detectors were plug-ins) is read and mapped onto the
detectors' layout-1 states.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from monitor.detectors.base import DetectorStateBase

__all__ = ["DetectorState", "FORMAT"]

log = logging.getLogger("fedsentinel.detectors")

FORMAT = 2
"""Version of the container format (the client table and the per-detector sections)."""


@dataclass
class DetectorState:
    """Everything the detectors carry between rounds.

    ``client_ids`` (in order of first appearance), ``first_round`` and
    ``last_seen_round`` have one row per client ever seen; so has every
    per-client array of every detector's state in ``detectors`` (by detector
    name). A detector without an entry starts fresh on the next round.
    """

    rounds_seen: int = 0
    last_round: int | None = None
    calibrated: dict[str, float] = field(default_factory=dict)
    calibration_samples: dict[str, np.ndarray] = field(default_factory=dict)
    client_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype="<U1"))
    first_round: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    last_seen_round: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    detectors: dict[str, DetectorStateBase] = field(default_factory=dict)

    @property
    def num_clients(self) -> int:
        return int(self.client_ids.shape[0])

    def align(self, ids: list[str], round_: int) -> np.ndarray:
        """Rows of ``ids`` in the client table, appending rows (in every detector state) for new clients."""
        new_ids = np.asarray(ids, dtype=str)
        known = self.client_ids
        if known.size:
            order = np.argsort(known, kind="stable")
            pos = np.minimum(np.searchsorted(known, new_ids, sorter=order), known.size - 1)
            found = known[order[pos]] == new_ids
            idx = np.where(found, order[pos], -1)
        else:
            found = np.zeros(new_ids.size, dtype=bool)
            idx = np.full(new_ids.size, -1)
        n_new = int((~found).sum())
        if n_new:
            k = known.size
            self.client_ids = np.concatenate([known, new_ids[~found]])
            idx[~found] = np.arange(k, k + n_new)
            pad = np.full(n_new, round_, dtype=np.int64)
            self.first_round = np.concatenate([self.first_round, pad])
            self.last_seen_round = np.concatenate([self.last_seen_round, pad])
            for s in self.detectors.values():
                s.grow(n_new, round_)
        return idx

    def copy(self) -> DetectorState:
        return DetectorState(
            rounds_seen=self.rounds_seen,
            last_round=self.last_round,
            calibrated=dict(self.calibrated),
            calibration_samples={k: v.copy() for k, v in self.calibration_samples.items()},
            client_ids=self.client_ids.copy(),
            first_round=self.first_round.copy(),
            last_seen_round=self.last_seen_round.copy(),
            detectors={k: v.copy() for k, v in self.detectors.items()},
        )

    # -- bytes ---------------------------------------------------------------

    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {
            "client_ids": self.client_ids,
            "first_round": self.first_round,
            "last_seen_round": self.last_seen_round,
        }
        arrays.update({f"calibration_samples/{k}": v for k, v in self.calibration_samples.items()})
        header: dict[str, Any] = {
            "version": FORMAT,
            "rounds_seen": self.rounds_seen,
            "last_round": self.last_round,
            "calibrated": self.calibrated,
            "calibration_names": list(self.calibration_samples),
            "detectors": {},
        }
        for name, s in self.detectors.items():
            det_arrays, det_header = s.pack()
            header["detectors"][name] = det_header
            arrays.update({f"{name}:{k}": v for k, v in det_arrays.items()})
        arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(
        cls,
        blob: bytes,
        state_types: dict[str, type[DetectorStateBase]] | None = None,
        *,
        label: str = "",
    ) -> DetectorState:
        """Read a state; ``state_types`` (detector name -> state class) defaults to the registry's.

        ``label`` (e.g. the run id) goes into the log line of a detector whose
        stored state is dropped.
        """
        if state_types is None:
            from monitor.detectors.registry import DEFAULT

            state_types = DEFAULT.state_types()
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(bytes(arrays.pop("__header__")).decode())
        version = header.get("version")
        if version == 1:
            sections = _format1_sections(header, arrays)
        elif version == FORMAT:
            sections = {
                name: (
                    h,
                    {k.split(":", 1)[1]: v for k, v in arrays.items() if k.startswith(f"{name}:")},
                )
                for name, h in header["detectors"].items()
            }
        else:
            raise ValueError(f"unsupported detector state version {version}")
        out = cls(
            rounds_seen=header["rounds_seen"],
            last_round=header["last_round"],
            calibrated={k: float(v) for k, v in header["calibrated"].items()},
            calibration_samples={
                s: arrays[f"calibration_samples/{s}"] for s in header["calibration_names"]
            },
            client_ids=arrays["client_ids"],
            first_round=arrays["first_round"],
            last_seen_round=arrays["last_seen_round"],
        )
        for name, (det_header, det_arrays) in sections.items():
            state_type = state_types.get(name)
            if state_type is not None:
                restored = _restore(
                    name, state_type, det_header, det_arrays, out.num_clients, label
                )
                if restored is not None:
                    out.detectors[name] = restored
        return out

    def equals(self, other: DetectorState) -> bool:
        """Exact equality, NaN == NaN, dtypes included (for tests and sanity checks)."""
        if self.detectors.keys() != other.detectors.keys():
            return False
        mine = [(f.name, getattr(self, f.name)) for f in fields(self) if f.name != "detectors"]
        theirs = [(f.name, getattr(other, f.name)) for f in fields(other) if f.name != "detectors"]
        for name, s in self.detectors.items():
            o = other.detectors[name]
            if type(s) is not type(o):
                return False
            mine += [(f"{name}.{f.name}", getattr(s, f.name)) for f in fields(s)]
            theirs += [(f"{name}.{f.name}", getattr(o, f.name)) for f in fields(o)]
        return _same(mine, theirs)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
        )
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _restore(
    name: str,
    state_type: type[DetectorStateBase],
    header: dict[str, Any],
    arrays: dict[str, np.ndarray],
    num_clients: int,
    label: str,
) -> DetectorStateBase | None:
    """One detector's stored state, or None (logged) when its layout is not the current one."""
    where = f" of run {label}" if label else ""
    layout = header.get("layout")
    if layout != state_type.LAYOUT:
        log.warning(
            "stored state of detector %s%s has layout %s, this version reads layout %s: "
            "starting that detector fresh (its references and streaks restart)",
            name, where, layout, state_type.LAYOUT,
        )  # fmt: skip
        return None
    try:
        state = state_type.unpack(arrays, header)
        for f in fields(state):
            v = getattr(state, f.name)
            if f.metadata.get("per_client") and v.shape[0] != num_clients:
                raise ValueError(f"{f.name} has {v.shape[0]} rows for {num_clients} clients")
        return state
    except (KeyError, TypeError, ValueError) as exc:
        log.warning(
            "stored state of detector %s%s does not read (%s): starting that detector fresh",
            name, where, exc,
        )  # fmt: skip
        return None


_FORMAT1: dict[str, dict[str, str]] = {
    "label_drift": {
        "ref_label_counts": "ref_label_counts",
        "ref_label_rounds": "ref_label_rounds",
        "ref_label_noise_var": "ref_label_noise_var",
        "streak": "streaks/label_drift",
    },
    "feature_drift": {
        "ref_feature_rounds": "ref_feature_rounds",
        "ref_feature_noise_var": "ref_feature_noise_var",
        "streak": "streaks/feature_drift",
    },
    "data_drift": {"streak": "streaks/drift"},
    "performance_drift": {
        "ph_n": "ph_n",
        "ph_mean": "ph_mean",
        "ph_cum": "ph_cum",
        "ph_cum_min": "ph_cum_min",
        "streak": "streaks/performance_drift",
    },
    "update_anomalies": {
        "prev_sketch": "prev_sketch",
        "prev_norm": "prev_norm",
        **{
            s: f"streaks/{s}"
            for s in ("update_anomaly", "stale_update", "free_rider", "nonfinite_update")
        },
    },
    "participation": {"straggler": "streaks/straggler", "dropout": "streaks/dropout"},
    "fairness": {
        "mean_history": "fairness_mean_history",
        "worst_history": "fairness_worst_history",
    },
    "global_health": {"loss_history": "global_loss_history"},
}
"""Format 1 (one shared layout): detector -> {its layout-1 field: the format-1 array}."""


def _format1_sections(
    header: dict[str, Any], arrays: dict[str, np.ndarray]
) -> dict[str, tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """Format 1 mapped onto per-detector (header, arrays) sections of layout 1.

    A detector whose arrays are absent (a state saved before any round was
    analysed) gets no section and starts fresh.
    """
    empty = {"layout": 1, "scalars": {}, "lists": {}, "dicts": {}}
    out: dict[str, tuple[dict[str, Any], dict[str, np.ndarray]]] = {}
    for name, mapping in _FORMAT1.items():
        if not all(src in arrays for src in mapping.values()):
            continue
        out[name] = (
            json.loads(json.dumps(empty)),
            {dst: arrays[src] for dst, src in mapping.items()},
        )
    if "feature_drift" in out:
        n = int(header.get("n_feature_refs", 0))
        out["feature_drift"][0]["lists"]["ref_feature_counts"] = n
        out["feature_drift"][1].update(
            {f"ref_feature_counts/{i}": arrays[f"ref_feature_counts/{i}"] for i in range(n)}
        )
    privacy = json.loads(json.dumps(empty))
    privacy["scalars"]["dp_steps"] = int(header.get("dp_steps", 0))
    out["privacy_budget"] = (privacy, {})
    return out
