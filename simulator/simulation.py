"""Run a scenario: build the federation, train round by round, report what happened.

One round r (rounds are numbered from 1)::

    sample clients (fixed-size without replacement; Poisson(q) under DP)
    drop the ones a dropout fault silences (reported as ``timeout`` when
        ``missing_reports: timeout``, else not at all); stale clients re-send their last message
    apply data faults -> train every remaining client locally (batched or sequential)
    d_k = w_k - w_global;  update faults act on d_k; colluding faults (ALIE, IPM)
        replace their clients' d_k by one vector crafted from the honest d_k
    statistics from the actual training: losses, accuracies, ||d_k||, sketch R^T d_k,
        label/feature histograms of the data trained on, global model on local held-out
    aggregate the finite updates: FedAvg  D = sum n_k d_k / sum n_k
                                  DP-FedAvg  D = (sum clip(d_k) + N(0, (sigma C)^2)) / (q N)
    w_global <- w_global + D; evaluate on the pooled held-out data; close the round

Randomness is split by purpose and round (``default_rng([seed, purpose, round])``)
and drawn for every client whether or not it trains, so one client's fault never
changes another client's shuffling or noise, and the same seed gives the same
statistics.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from collectors.sink import ReportSink
from collectors.stats import (
    add_histogram_noise,
    feature_bin_edges,
    feature_histograms,
    label_histograms,
    sketch,
    sketch_matrix,
)
from simulator import faults as F
from simulator.baselines import centralized_epochs, train_centralized, train_local_baselines
from simulator.data import Dataset, load_dataset
from simulator.dp import PrivacyLedger, clip_updates, dp_aggregate
from simulator.models import Params, flatten, get_params, make_model, num_params, unflatten
from simulator.partition import make_partition, split_held_out
from simulator.scenario import Scenario
from simulator.stats import fairness_summary
from simulator.telemetry import TelemetryReleases
from simulator.train import evaluate_groups, make_schedule, train

# purposes of the seeded random streams
_DATA, _PARTITION, _SAMPLE, _KEYS, _SPEED, _JITTER, _HNOISE, _DPNOISE, _CENTRAL, _LOCAL = range(10)


@dataclass
class Federation:
    """The clients' data as each holds it (after the partition's feature map), clean."""

    dataset: Dataset
    x_train: list[np.ndarray]
    y_train: list[np.ndarray]
    x_test: list[np.ndarray]
    y_test: list[np.ndarray]
    train_offsets: np.ndarray  # start of client k's rows in the federation-wide key arrays
    edges: list[np.ndarray]
    feature_std: np.ndarray

    @property
    def num_clients(self) -> int:
        return len(self.y_train)

    def pooled_train(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.x_train), np.concatenate(self.y_train)

    def pooled_test(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.x_test), np.concatenate(self.y_test)


def build_federation(scenario: Scenario) -> Federation:
    seed = scenario.seed
    dataset = load_dataset(
        scenario.dataset,
        num_clients=scenario.num_clients,
        rng=np.random.default_rng([seed, _DATA]),
        synthetic_alpha=scenario.synthetic_alpha,
        synthetic_beta=scenario.synthetic_beta,
        synthetic_iid=scenario.synthetic_iid,
        synthetic_max_examples=scenario.synthetic_max_examples,
    )
    rng = np.random.default_rng([seed, _PARTITION])
    part = make_partition(
        scenario.partition,
        dataset,
        scenario.num_clients,
        rng,
        alpha=scenario.alpha,
        feature_strength=scenario.feature_skew,
    )
    xs_tr, ys_tr, xs_te, ys_te = [], [], [], []
    for k, rows in enumerate(part.indices):
        tr, te = split_held_out(rows, scenario.test_fraction, rng)
        X = dataset.X
        if part.scale is not None and part.shift is not None:
            X_tr = X[tr] * part.scale[k] + part.shift[k]
            X_te = X[te] * part.scale[k] + part.shift[k]
        else:
            X_tr, X_te = X[tr], X[te]
        xs_tr.append(np.ascontiguousarray(X_tr, dtype=np.float32))
        xs_te.append(np.ascontiguousarray(X_te, dtype=np.float32))
        ys_tr.append(dataset.y[tr])
        ys_te.append(dataset.y[te])
    sizes = np.array([len(y) for y in ys_tr])
    pooled = np.concatenate(xs_tr)
    return Federation(
        dataset=dataset,
        x_train=xs_tr,
        y_train=ys_tr,
        x_test=xs_te,
        y_test=ys_te,
        train_offsets=np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64),
        edges=feature_bin_edges(pooled, scenario.bins),
        feature_std=pooled.std(axis=0).astype(np.float64),
    )


@dataclass
class RoundOutput:
    round: int
    reports: list[dict[str, Any]]
    close: dict[str, Any]
    sampled: list[int]
    train_seconds: float


@dataclass
class SimulationResult:
    run_id: str
    rounds: int
    final_accuracy: float
    final_loss: float
    centralized_accuracy: float | None
    client_accuracy: dict[str, float]
    local_accuracy: dict[str, float] | None
    fairness: dict[str, float]
    ground_truth: list[dict]
    truth_path: Path | None
    epsilon: float | None
    global_accuracy_history: list[float] = field(default_factory=list)
    client_accuracy_history: list[dict[str, float]] = field(default_factory=list)

    @property
    def gap(self) -> float | None:
        if self.centralized_accuracy is None:
            return None
        return self.centralized_accuracy - self.final_accuracy


def _f(x: float | torch.Tensor) -> float:
    return float(x)


class Simulation:
    """The state of one simulated run; :meth:`run_round` advances it by one round."""

    def __init__(self, scenario: Scenario, federation: Federation | None = None) -> None:
        self.scenario = scenario
        self.fed = federation or build_federation(scenario)
        ds = self.fed.dataset
        self.model = make_model(
            scenario.model, ds.num_features, ds.num_classes, scenario.hidden, seed=scenario.seed
        )
        self.init_params: Params = get_params(self.model)
        self.global_params: Params = get_params(self.model)
        self.P = num_params(self.global_params)
        self.R = sketch_matrix(self.P, scenario.sketch_dim, scenario.effective_sketch_seed)
        self.plan = F.FaultPlan(scenario)
        X_pool, y_pool = self.fed.pooled_train()
        self.ctx = F.FaultContext(
            ds.num_classes, self.fed.feature_std, X_pool, y_pool, scenario.seed
        )
        X_test, y_test = self.fed.pooled_test()
        self.X_test = torch.from_numpy(X_test)
        self.Y_test = torch.from_numpy(y_test)
        self.speed = np.random.default_rng([scenario.seed, _SPEED]).lognormal(
            0.0, scenario.wall_time.speed_sigma, self.fed.num_clients
        )
        self.total_train_rows = int(sum(len(y) for y in self.fed.y_train))
        self.last_message: dict[int, tuple[dict[str, Any], torch.Tensor, bool]] = {}
        self.ledger = (
            PrivacyLedger(scenario.dp.noise_multiplier, scenario.sample_fraction, scenario.dp.delta)
            if scenario.dp
            else None
        )
        self.local_accuracy: np.ndarray | None = None
        self.centralized = None
        self.telemetry = (
            TelemetryReleases(scenario, self.fed.num_clients, len(self.fed.edges))
            if scenario.telemetry_budget
            else None
        )
        # secure aggregation: what each client remembers (the last global model it received)
        self.last_global_seen: dict[int, torch.Tensor] = {}

    # -- baselines ---------------------------------------------------------

    def compute_baselines(self) -> None:
        s = self.scenario
        fed = self.fed
        if s.centralized_baseline:
            Xtr, ytr = fed.pooled_train()
            Xte, yte = fed.pooled_test()
            self.centralized = train_centralized(
                self.model,
                self.init_params,
                Xtr,
                ytr,
                Xte,
                yte,
                epochs=centralized_epochs(s.rounds, s.local_epochs, s.sample_fraction),
                batch_size=s.batch_size,
                lr=s.lr,
                rng=np.random.default_rng([s.seed, _CENTRAL]),
            )
        if s.local_baselines:
            self.local_accuracy = train_local_baselines(
                self.model,
                self.init_params,
                fed.x_train,
                fed.y_train,
                fed.x_test,
                fed.y_test,
                epochs=s.rounds * s.local_epochs,
                batch_size=s.batch_size,
                lr=s.lr,
                rng=np.random.default_rng([s.seed, _LOCAL]),
            )

    # -- registration --------------------------------------------------------

    def run_spec(self) -> dict[str, Any]:
        """The RunCreate body."""
        s, ds = self.scenario, self.fed.dataset
        spec: dict[str, Any] = {
            "run_id": s.run_id,
            "name": s.name or f"simulated {s.dataset} / {s.partition} / {s.algorithm}",
            "task": {
                "num_classes": ds.num_classes,
                "class_names": ds.class_names,
                "feature_names": ds.feature_names,
            },
            "feature_bin_edges": [[float(v) for v in e] for e in self.fed.edges],
            "sketch_dim": s.sketch_dim,
            "sketch_seed": s.effective_sketch_seed,
            "expected_clients": s.num_clients,
            "planned_rounds": s.rounds,
            "metadata": {
                "source": "fedsentinel-simulator",
                "dataset": s.dataset,
                "partition": s.partition,
                "alpha": s.alpha,
                "model": s.model,
                "algorithm": s.algorithm,
                "mu": s.effective_mu,
                "rounds": s.rounds,
                "sample_fraction": s.sample_fraction,
                "missing_reports": s.missing_reports,
                "local_epochs": s.local_epochs,
                "batch_size": s.batch_size,
                "lr": s.lr,
                "seed": s.seed,
                "faults": len(s.faults),
            },
        }
        if s.telemetry_budget:
            tb = s.telemetry_budget
            spec["telemetry_budget"] = {
                "epsilon": tb.epsilon,
                "delta": tb.delta,
                "planned_rounds": s.rounds,
                "every_k_rounds": tb.every_k_rounds,
            }
        if s.secure_aggregation:
            spec["secure_aggregation"] = True
        if s.dp:
            spec["dp"] = {
                "noise_multiplier": s.dp.noise_multiplier,
                "clip_norm": s.dp.clip_norm,
                "sample_rate": s.sample_fraction,
                "delta": s.dp.delta,
                "target_epsilon": s.dp.target_epsilon,
            }
        if self.centralized is not None:
            spec["centralized_accuracy"] = self.centralized.accuracy
        return spec

    # -- one round -----------------------------------------------------------

    def sample(self, r: int) -> list[int]:
        s = self.scenario
        n = self.fed.num_clients
        rng = np.random.default_rng([s.seed, _SAMPLE, r])
        if s.dp:  # Poisson sampling, as the RDP accountant assumes
            return np.flatnonzero(rng.random(n) < s.sample_fraction).tolist()
        m = max(1, round(s.sample_fraction * n))
        return np.sort(rng.choice(n, size=m, replace=False)).tolist()

    def run_round(self, r: int) -> RoundOutput:
        # Building thousands of nested report lists trips the cyclic GC over and over
        # (every container allocation counts); none of them form cycles, so pause it.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._run_round(r)
        finally:
            if was_enabled:
                gc.enable()

    def _run_round(self, r: int) -> RoundOutput:
        sampled = self.sample(r)
        trainers, stale, silent = self._who_answers(sampled, r)
        reports: dict[int, dict[str, Any]] = {}
        deltas, nonfinite, train_seconds = self._train(trainers, r, reports)
        stale_deltas, stale_bad = self._resend_stale(stale, reports)
        if stale:
            deltas = torch.cat([deltas, torch.stack(stale_deltas)])
            nonfinite = torch.cat([nonfinite, torch.tensor(stale_bad, dtype=torch.bool)])
        sizes = [reports[k]["num_examples"] for k in trainers + stale]
        aggregate = self._aggregate(deltas, nonfinite, sizes, r)
        close = self._close(aggregate, len(sampled))
        if (
            self.scenario.missing_reports == "timeout"
        ):  # the server saw no reply from a client it sampled
            for k in silent:
                reports[k] = {"client_id": self.scenario.client_id(k), "status": "timeout"}
        ordered = [reports[k] for k in sorted(reports)]
        return RoundOutput(r, ordered, close, sampled, train_seconds)

    def _who_answers(self, sampled: list[int], r: int) -> tuple[list[int], list[int], list[int]]:
        """Split the sampled clients into those that train, resend stale, or stay silent."""
        seed = self.scenario.seed
        trainers: list[int] = []
        stale: list[int] = []
        silent: list[int] = []
        for k in sampled:
            active = self.plan.active(k, r)
            if F.drops_out(active, round=r, client=k, seed=seed):
                silent.append(k)
            elif k in self.last_message and F.resends_stale(active, round=r, client=k, seed=seed):
                stale.append(k)
            else:
                trainers.append(k)
        return trainers, stale, silent

    def _round_data(self, trainers: list[int], r: int) -> tuple[list, list, list, list]:
        """The data each trainer holds this round (data faults applied)."""
        fed = self.fed
        xs_tr, ys_tr, xs_te, ys_te = [], [], [], []
        for k in trainers:
            data = (fed.x_train[k], fed.y_train[k], fed.x_test[k], fed.y_test[k])
            active = self.plan.active(k, r, F.DATA_FAULTS)
            if active:
                data = F.apply_data_faults(*data, active, round=r, client=k, ctx=self.ctx)
            xs_tr.append(data[0])
            ys_tr.append(data[1])
            xs_te.append(data[2])
            ys_te.append(data[3])
        return xs_tr, ys_tr, xs_te, ys_te

    def _train(
        self, trainers: list[int], r: int, reports: dict[int, dict[str, Any]]
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Train the trainers as one batch, apply update faults, fill their reports.

        Returns the (faulted) deltas, which of them are non-finite, and the training seconds.
        """
        s, fed, seed = self.scenario, self.fed, self.scenario.seed
        K = len(trainers)
        if not K:
            return torch.zeros((0, self.P)), torch.zeros(0, dtype=torch.bool), 0.0
        xs_tr, ys_tr, xs_te, ys_te = self._round_data(trainers, r)
        sizes = np.array([len(y) for y in ys_tr])
        keys_all = np.random.default_rng([seed, _KEYS, r]).random(
            (s.local_epochs, self.total_train_rows)
        )
        cols = np.concatenate(
            [fed.train_offsets[k] + np.arange(n) for k, n in zip(trainers, sizes, strict=True)]
        )
        schedule = make_schedule(sizes, s.local_epochs, s.batch_size, keys_all[:, cols])
        X = torch.from_numpy(np.concatenate(xs_tr))
        Y = torch.from_numpy(np.concatenate(ys_tr))
        t0 = time.perf_counter()
        local = train(
            s.engine, self.model, self.global_params, X, Y, schedule, lr=s.lr, mu=s.effective_mu
        )
        deltas = local.flat - flatten(self.global_params)
        train_seconds = time.perf_counter() - t0
        deltas, nonfinite = self._apply_update_faults(deltas, trainers, r)

        # the global model (as received) on each client's held-out data
        test_sizes = [len(y) for y in ys_te]
        group = torch.from_numpy(np.repeat(np.arange(K), test_sizes))
        ev_loss, ev_hits, ev_count = evaluate_groups(
            self.model,
            self.global_params,
            torch.from_numpy(np.concatenate(xs_te)),
            torch.from_numpy(np.concatenate(ys_te)),
            group,
            K,
        )
        client_of = np.repeat(np.arange(K), sizes)
        lab = label_histograms(np.concatenate(ys_tr), client_of, K, fed.dataset.num_classes)
        feat = feature_histograms(X.numpy(), client_of, K, fed.edges)
        lab, feat, released = self._noised_histograms(lab, feat, trainers, r)
        self._fill_reports(
            reports,
            trainers,
            r,
            sizes=sizes,
            deltas=deltas,
            nonfinite=nonfinite,
            train_loss=local.train_loss(),
            train_acc=local.train_accuracy(),
            evaluation=(ev_loss, ev_hits, ev_count),
            histograms=(lab, feat, released),
            seen=local.seen.numpy(),
        )
        return deltas, nonfinite, train_seconds

    def _apply_update_faults(
        self, deltas: torch.Tensor, trainers: list[int], r: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        nonfinite = torch.zeros(len(trainers), dtype=torch.bool)
        for i, k in enumerate(trainers):
            active = self.plan.active(k, r, F.UPDATE_FAULTS)
            if active:
                deltas[i], nonfinite[i] = F.apply_update_faults(
                    deltas[i], active, round=r, client=k, seed=self.scenario.seed
                )
        groups = F.colluding_groups(self.plan, trainers, r)
        if groups:
            deltas = F.apply_colluding_faults(deltas, nonfinite, groups)
        return deltas, nonfinite

    def _noised_histograms(
        self, lab: np.ndarray, feat: np.ndarray, trainers: list[int], r: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Histograms as the clients send them, and which clients release them this round."""
        s, fed = self.scenario, self.fed
        released = np.ones(len(trainers), dtype=bool)
        if self.telemetry is not None:
            released = self.telemetry.release(trainers, r)
            rng = np.random.default_rng([s.seed, _HNOISE, r])
            lab, feat = self.telemetry.noise(lab, feat, trainers, rng, fed.num_clients)
        elif s.histogram_noise:
            hn = s.histogram_noise
            rng = np.random.default_rng([s.seed, _HNOISE, r])
            # noise drawn for every client so a client's noise is independent of who trains
            lab_noise = add_histogram_noise(
                np.zeros((fed.num_clients, *lab.shape[1:])), hn.mechanism, hn.scale, rng
            )
            feat_noise = add_histogram_noise(
                np.zeros((fed.num_clients, *feat.shape[1:])), hn.mechanism, hn.scale, rng
            )
            lab = lab + lab_noise[trainers]
            feat = feat + feat_noise[trainers]
        if not (s.histogram_noise or s.telemetry_budget):
            # counts: small Python ints are cached, floats are not
            lab, feat = lab.astype(np.int64), feat.astype(np.int64)
        return lab, feat, released

    def _fill_reports(
        self,
        reports: dict[int, dict[str, Any]],
        trainers: list[int],
        r: int,
        *,
        sizes: np.ndarray,
        deltas: torch.Tensor,
        nonfinite: torch.Tensor,
        train_loss: torch.Tensor,
        train_acc: torch.Tensor,
        evaluation: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        histograms: tuple[np.ndarray, np.ndarray, np.ndarray],
        seen: np.ndarray,
    ) -> None:
        """One report per trainer, remembered as its last message (for stale resends)."""
        s, fed = self.scenario, self.fed
        norms = deltas.norm(dim=1)
        clipped = norms > s.dp.clip_norm if s.dp else None
        lab, feat, released = histograms
        nbins = [len(e) - 1 for e in fed.edges]
        wt = s.wall_time
        jitter = np.random.default_rng([s.seed, _JITTER, r]).lognormal(
            0.0, wt.jitter_sigma, fed.num_clients
        )
        # one bulk conversion to Python floats (per-element float() is slow at 1000s of clients)
        norms_l, sketches_l = norms.tolist(), sketch(deltas, self.R).tolist()
        tl_l, ta_l = train_loss.tolist(), train_acc.tolist()
        el_l, eh_l, ec_l = (t.tolist() for t in evaluation)
        scalars = (
            self._client_scalars(trainers, deltas, flatten(self.global_params))
            if s.secure_aggregation
            else None
        )
        lab_l, feat_l = lab.tolist(), feat.tolist()
        for i, k in enumerate(trainers):
            factor = F.wall_time_factor(self.plan.active(k, r, ("straggler",)))
            wall = (
                wt.overhead_seconds + wt.seconds_per_example * seen[i] * self.speed[k] * jitter[k]
            ) * factor
            rep: dict[str, Any] = {
                "client_id": s.client_id(k),
                "status": "ok",
                "num_examples": int(sizes[i]),
                "train_loss": float("nan") if nonfinite[i] else tl_l[i],
                "train_accuracy": ta_l[i],
                "eval_loss": el_l[i] / ec_l[i] if ec_l[i] else None,
                "eval_accuracy": eh_l[i] / ec_l[i] if ec_l[i] else None,
                "eval_examples": int(ec_l[i]),
                "wall_time_seconds": float(wall),
                "update_norm": norms_l[i],
                "update_sketch": sketches_l[i],
                "label_histogram": lab_l[i],
                "feature_histograms": [row[:nb] for row, nb in zip(feat_l[i], nbins, strict=True)],
            }
            if s.histogram_noise:
                rep["histogram_noise"] = {
                    "mechanism": s.histogram_noise.mechanism,
                    "scale": s.histogram_noise.scale,
                }
            if self.telemetry is not None and released[i]:
                rep["histogram_noise"] = self.telemetry.declaration(k)
            if s.histograms != "all" or not released[i]:
                rep.pop("feature_histograms")
            if s.histograms == "none" or not released[i]:
                rep.pop("label_histogram")
            if scalars is not None:
                del rep["update_sketch"]
                rep.update(scalars[i])
            if clipped is not None:
                rep["clipped"] = bool(clipped[i])
            if self.local_accuracy is not None and np.isfinite(self.local_accuracy[k]):
                rep["local_accuracy"] = float(self.local_accuracy[k])
            reports[k] = rep
            self.last_message[k] = (rep, deltas[i].clone(), bool(nonfinite[i]))

    def _resend_stale(
        self, stale: list[int], reports: dict[int, dict[str, Any]]
    ) -> tuple[list[torch.Tensor], list[bool]]:
        """Stale clients re-send their last message, update included."""
        deltas, bad = [], []
        for k in stale:
            rep, delta, nonfinite = self.last_message[k]
            reports[k] = dict(rep)
            if self.scenario.secure_aggregation:  # the scalars are computed on what it sends
                reports[k].update(self._stale_scalars(k, delta))
            deltas.append(delta)
            bad.append(nonfinite)
        return deltas, bad

    def _aggregate(
        self, deltas: torch.Tensor, nonfinite: torch.Tensor, sizes: list[int], r: int
    ) -> torch.Tensor | None:
        """Aggregate the finite updates that arrived (DP-FedAvg or weighted FedAvg) and step."""
        s = self.scenario
        finite = ~nonfinite & torch.isfinite(deltas).all(dim=1)
        keep = deltas[finite]
        weights = torch.tensor(sizes, dtype=torch.float32)[finite] if sizes else torch.zeros(0)
        aggregate: torch.Tensor | None = None
        if s.dp:
            clipped_deltas, _ = clip_updates(keep, s.dp.clip_norm)
            aggregate = dp_aggregate(
                clipped_deltas,
                noise_multiplier=s.dp.noise_multiplier,
                clip_norm=s.dp.clip_norm,
                expected_clients=s.sample_fraction * self.fed.num_clients,
                generator=torch.Generator().manual_seed(
                    int(np.random.default_rng([s.seed, _DPNOISE, r]).integers(2**62))
                ),
            )
        elif len(keep):
            aggregate = (weights[:, None] * keep).sum(dim=0) / weights.sum()
        if aggregate is not None:
            new_flat = flatten(self.global_params) + aggregate
            self.global_params = {
                n: p.clone() for n, p in unflatten(new_flat, self.global_params).items()
            }
        return aggregate

    def _close(self, aggregate: torch.Tensor | None, num_sampled: int) -> dict[str, Any]:
        g_loss, g_acc = self.global_eval()
        close: dict[str, Any] = {
            "global_eval_loss": g_loss,
            "global_eval_accuracy": g_acc,
            "aggregate_update_norm": _f(aggregate.norm()) if aggregate is not None else None,
            "aggregate_sketch": sketch(aggregate[None, :], self.R)[0].tolist()
            if aggregate is not None
            else None,
            "num_sampled": num_sampled,
        }
        if self.ledger is not None:
            close["epsilon"] = self.ledger.step()
        return close

    # -- secure aggregation ------------------------------------------------------

    def _client_scalars(
        self, trainers: list[int], deltas: torch.Tensor, global_now: torch.Tensor
    ) -> list[dict[str, Any]]:
        """What :func:`collectors.flower.mod.update_scalars` computes on each client."""
        from monitor.signals.update_scalars import update_scalars

        out = []
        g = global_now.double().numpy()
        for i, k in enumerate(trainers):
            prev_g = self.last_global_seen.get(k)
            prev_u = self.last_message.get(k)
            out.append(
                update_scalars(
                    deltas[i].double().numpy(),
                    None if prev_g is None else prev_g.double().numpy(),
                    g,
                    None if prev_u is None else prev_u[1].double().numpy(),
                )
            )
            self.last_global_seen[k] = global_now.clone()
        return out

    def _stale_scalars(self, k: int, delta: torch.Tensor) -> dict[str, Any]:
        """A stale client sends its previous update again: the mod sees a repeated update."""
        global_now = flatten(self.global_params)
        return self._client_scalars([k], delta[None, :], global_now)[0]

    # -- evaluation ------------------------------------------------------------

    def global_eval(self) -> tuple[float, float]:
        """The global model on the pooled (clean) held-out data: (mean CE, accuracy)."""
        loss, hits, count = evaluate_groups(
            self.model,
            self.global_params,
            self.X_test,
            self.Y_test,
            torch.zeros(len(self.Y_test), dtype=torch.int64),
            1,
        )
        n = max(float(count[0]), 1.0)
        acc = float(hits[0]) / n
        return float(loss[0]) / n, min(max(acc, 0.0), 1.0)

    def client_accuracies(self, r: int) -> dict[str, float]:
        """The current global model on every client's held-out data as it is in round ``r``."""
        fed = self.fed
        xs, ys = [], []
        for k in range(fed.num_clients):
            data = (fed.x_train[k][:0], fed.y_train[k][:0], fed.x_test[k], fed.y_test[k])
            active = self.plan.active(k, r, F.DATA_FAULTS)
            if active:
                data = F.apply_data_faults(*data, active, round=r, client=k, ctx=self.ctx)
            xs.append(data[2])
            ys.append(data[3])
        sizes = [len(y) for y in ys]
        group = torch.from_numpy(np.repeat(np.arange(fed.num_clients), sizes))
        _, hits, count = evaluate_groups(
            self.model,
            self.global_params,
            torch.from_numpy(np.concatenate(xs)),
            torch.from_numpy(np.concatenate(ys)),
            group,
            fed.num_clients,
        )
        return {
            self.scenario.client_id(k): float(hits[k] / count[k])
            for k in range(fed.num_clients)
            if count[k] > 0
        }


def write_ground_truth(path: str | Path, scenario: Scenario, truth: list[dict]) -> Path:
    """``{"run_id", "seed", "faults": [{client_id, fault, onset_round, end_round, severity, options}]}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "run_id": scenario.run_id,
        "seed": scenario.seed,
        "rounds": scenario.rounds,
        "num_clients": scenario.num_clients,
        "faults": truth,
    }
    path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    return path


def run_scenario(
    scenario: Scenario,
    sink: ReportSink,
    *,
    progress: bool = True,
    truth_path: str | Path | None = None,
    track_clients: bool = False,
) -> SimulationResult:
    """Simulate ``scenario`` and send every statistic to ``sink``.

    Calls ``sink.register_run`` once, then per round ``sink.report`` (only the
    clients that answered; skipped when none did) and ``sink.close_round``.
    Writes the ground truth to ``truth_path`` when given. ``track_clients``
    keeps every client's accuracy under the global model after every round
    (``SimulationResult.client_accuracy_history``; costs one evaluation per round).
    """
    sim = Simulation(scenario)
    sim.compute_baselines()
    truth = sim.plan.ground_truth()
    written = write_ground_truth(truth_path, scenario, truth) if truth_path is not None else None
    sink.register_run(sim.run_spec())
    history: list[float] = []
    client_history: list[dict[str, float]] = []

    def one(r: int) -> None:
        out = sim.run_round(r)
        if out.reports:
            sink.report(scenario.run_id, r, out.reports)
        sink.close_round(scenario.run_id, r, out.close)
        history.append(out.close["global_eval_accuracy"])
        if track_clients:
            client_history.append(sim.client_accuracies(r))

    if progress:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("acc {task.fields[acc]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        ) as bar:
            task = bar.add_task(f"simulating {scenario.run_id}", total=scenario.rounds, acc="-")
            for r in range(1, scenario.rounds + 1):
                one(r)
                bar.update(task, advance=1, acc=f"{history[-1]:.3f}")
    else:
        for r in range(1, scenario.rounds + 1):
            one(r)

    final_loss, final_acc = sim.global_eval()
    client_acc = sim.client_accuracies(scenario.rounds)
    local = None
    if sim.local_accuracy is not None:
        local = {
            scenario.client_id(k): float(a)
            for k, a in enumerate(sim.local_accuracy)
            if np.isfinite(a)
        }
    return SimulationResult(
        run_id=scenario.run_id,
        rounds=scenario.rounds,
        final_accuracy=final_acc,
        final_loss=final_loss,
        centralized_accuracy=sim.centralized.accuracy if sim.centralized else None,
        client_accuracy=client_acc,
        local_accuracy=local,
        fairness=fairness_summary(np.array(list(client_acc.values()))),
        ground_truth=truth,
        truth_path=written,
        epsilon=sim.ledger.epsilon() if sim.ledger else None,
        global_accuracy_history=history,
        client_accuracy_history=client_history,
    )
