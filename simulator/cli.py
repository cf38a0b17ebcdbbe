"""``fedsentinel simulate``: run a scenario against the service or into a JSON-lines file.

Registered on the main command by ``main.add_command(simulate)`` (``from simulator.cli import simulate``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click
import yaml
from pydantic import ValidationError

from simulator.scenario import FAULT_KINDS, FEDERATION_FAULTS, Scenario, demo_scenario


def parse_fault(text: str) -> dict[str, Any]:
    """``kind:clients=3,7:onset=10:severity=0.8[:end=20][:option=value]`` -> a fault mapping.

    ``onset``/``end`` are short for ``onset_round``/``end_round``; a value with
    commas is a list; other values are read as YAML scalars (ints, floats, strings).
    A federation-wide fault (``federation_covariate_shift:onset=10``) names no clients.
    """
    parts = [p.strip() for p in text.split(":")]
    kind = parts[0]
    if kind not in FAULT_KINDS:
        raise click.BadParameter(
            f"unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}",
            param_hint="--fault",
        )
    fault: dict[str, Any] = {"kind": kind}
    aliases = {"onset": "onset_round", "end": "end_round", "client": "clients"}
    for part in parts[1:]:
        if not part:
            continue
        if "=" not in part:
            raise click.BadParameter(f"{text!r}: {part!r} is not key=value", param_hint="--fault")
        key, value = (s.strip() for s in part.split("=", 1))
        key = aliases.get(key, key)
        if key == "clients" or "," in value:
            fault[key] = [_scalar(v) for v in value.split(",") if v.strip()]
        else:
            fault[key] = _scalar(value)
    if "clients" not in fault and kind not in FEDERATION_FAULTS:
        raise click.BadParameter(
            f"{text!r}: name the clients, e.g. {kind}:clients=3,7", param_hint="--fault"
        )
    return fault


def _scalar(value: str) -> Any:
    try:
        return yaml.safe_load(value.strip())
    except yaml.YAMLError:
        return value.strip()


def _validation_message(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "scenario"
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(msg if where == "scenario" else f"{where}: {msg}")
    return "invalid scenario: " + "; ".join(lines)


def build_scenario(
    scenario_path: Path | None, overrides: dict[str, Any], faults: list[str], no_faults: bool
) -> Scenario:
    """The scenario file (or the demo), with CLI overrides applied and validated once."""
    if scenario_path is not None:
        try:
            base = Scenario.from_file(scenario_path).model_dump(exclude_unset=True)
        except ValidationError as exc:
            raise click.BadParameter(_validation_message(exc), param_hint="--scenario") from None
        except (ValueError, OSError, yaml.YAMLError) as exc:
            raise click.BadParameter(f"{scenario_path}: {exc}", param_hint="--scenario") from None
    else:
        base = demo_scenario().model_dump(exclude_unset=True)
    data = dict(base)
    data.update({k: v for k, v in overrides.items() if v is not None})
    if no_faults:
        data["faults"] = []
    data["faults"] = list(data.get("faults", [])) + [parse_fault(f) for f in faults]
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise click.UsageError(_validation_message(exc)) from None


class _Tee:
    def __init__(self, *sinks: Any) -> None:
        self.sinks = sinks

    def register_run(self, spec: dict[str, Any]) -> None:
        for s in self.sinks:
            s.register_run(spec)

    def report(self, run_id: str, round: int, reports: list[dict[str, Any]]) -> None:
        for s in self.sinks:
            s.report(run_id, round, reports)

    def close_round(self, run_id: str, round: int, summary: dict[str, Any]) -> None:
        for s in self.sinks:
            s.close_round(run_id, round, summary)


@click.command()
@click.option(
    "--scenario",
    "scenario_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Scenario file (.yaml/.yml/.toml). Default: the built-in demo.",
)
@click.option("--url", help="fedsentinel service to send to, e.g. http://127.0.0.1:8080.")
@click.option(
    "--api-key", envvar="FEDSENTINEL_API_KEY", help="API key for --url (or FEDSENTINEL_API_KEY)."
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write JSON lines for `fedsentinel replay` (overwritten).",
)
@click.option(
    "--truth",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ground-truth file. Default: next to --out (NAME.truth.json), else ./data/RUN.truth.json.",
)
@click.option(
    "--spool-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="SDK spool for --url while the service is down. Default: a temporary directory.",
)
@click.option("--run-id", help="Override the run id.")
@click.option("--clients", "num_clients", type=int, help="Override the number of clients.")
@click.option("--rounds", type=int, help="Override the number of rounds.")
@click.option("--alpha", type=float, help="Override the Dirichlet alpha.")
@click.option(
    "--partition", type=click.Choice(["iid", "dirichlet", "quantity", "feature", "natural"])
)
@click.option("--seed", type=int, help="Override the seed.")
@click.option("--dataset", type=click.Choice(["digits", "synthetic", "breast_cancer", "wine"]))
@click.option("--model", type=click.Choice(["logreg", "mlp"]))
@click.option("--engine", type=click.Choice(["batched", "sequential"]))
@click.option(
    "--sample-fraction",
    type=click.FloatRange(0, 1, min_open=True),
    help="Share of the clients sampled per round (partial participation).",
)
@click.option(
    "--missing-reports",
    type=click.Choice(["omit", "timeout"]),
    help="A sampled client that does not answer: not reported (omit) or reported as timeout.",
)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    metavar="KIND:clients=3,7:onset=10:severity=0.8",
    help="Add a fault (repeatable). Extra key=value pairs are the kind's options.",
)
@click.option("--no-faults", is_flag=True, help="Drop the scenario's faults (a healthy run).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def simulate(
    scenario_path: Path | None,
    url: str | None,
    api_key: str | None,
    out: Path | None,
    truth: Path | None,
    spool_dir: Path | None,
    run_id: str | None,
    num_clients: int | None,
    rounds: int | None,
    alpha: float | None,
    partition: str | None,
    seed: int | None,
    dataset: str | None,
    model: str | None,
    engine: str | None,
    sample_fraction: float | None,
    missing_reports: str | None,
    faults: tuple[str, ...],
    no_faults: bool,
    no_progress: bool,
) -> None:
    """Simulate a federation (real training, injected faults) and report it to fedsentinel."""
    from rich.console import Console

    from collectors import JsonlWriter, MonitorClient, MonitorError
    from simulator.simulation import run_scenario

    if url is None and out is None:
        raise click.UsageError(
            "give --url (send to a running service) or --out (write JSON lines), or both"
        )
    overrides = {
        "run_id": run_id,
        "num_clients": num_clients,
        "rounds": rounds,
        "alpha": alpha,
        "partition": partition,
        "seed": seed,
        "dataset": dataset,
        "model": model,
        "engine": engine,
        "sample_fraction": sample_fraction,
        "missing_reports": missing_reports,
    }
    scenario = build_scenario(scenario_path, overrides, list(faults), no_faults)
    if truth is None:
        truth = (
            out.with_name(out.name.removesuffix(".jsonl") + ".truth.json")
            if out
            else Path("data") / f"{scenario.run_id}.truth.json"
        )

    sinks: list[Any] = []
    closers: list[Any] = []
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        writer = JsonlWriter(out)
        sinks.append(writer)
        closers.append(writer)
    client = None
    if url is not None:
        spool = spool_dir or Path(tempfile.mkdtemp(prefix="fedsentinel-spool-"))
        client = MonitorClient(url, api_key=api_key, spool_dir=spool)
        sinks.append(client)
        closers.append(client)
    console = Console(stderr=True)
    try:
        result = run_scenario(scenario, _Tee(*sinks), progress=not no_progress, truth_path=truth)
        if client is not None:
            client.flush()
    except MonitorError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        for c in closers:
            c.close()
    _print_summary(console, scenario, result)
    if client is not None and client.pending():
        console.print(
            f"[yellow]{client.pending()} records still spooled in {client.spool.path}: the service was unreachable[/]"
        )


def _print_summary(console: Any, scenario: Scenario, result: Any) -> None:
    from rich.table import Table

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    table = Table(
        title=f"run {scenario.run_id}: {scenario.rounds} rounds, {scenario.num_clients} clients"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("global accuracy", pct(result.final_accuracy))
    table.add_row("centralized baseline", pct(result.centralized_accuracy))
    table.add_row("gap (centralized - federated)", pct(result.gap))
    f = result.fairness
    if f:
        table.add_row("client accuracy mean / worst", f"{f['mean']:.3f} / {f['worst']:.3f}")
        table.add_row("worst-decile mean / Jain", f"{f['worst_decile_mean']:.3f} / {f['jain']:.3f}")
    if result.epsilon is not None:
        table.add_row("epsilon spent", f"{result.epsilon:.3f}")
    if result.truth_path is not None:
        table.add_row("ground truth", str(result.truth_path))
    console.print(table)
    if scenario.faults:
        faults = Table(title="injected faults")
        for col in ("fault", "clients", "onset", "severity"):
            faults.add_column(col)
        for spec in scenario.faults:
            ids = (
                ", ".join(scenario.client_id(scenario.client_index(c)) for c in spec.clients)
                or "all"
            )
            faults.add_row(spec.kind, ids, str(spec.onset_round), f"{spec.severity:g}")
        console.print(faults)
    else:
        console.print("healthy scenario: no faults injected")
