"""Run the app in-process under Flower's simulation engine (Ray backend).

cd examples/flower_digits
python -m flower_digits.simulate --monitor http://127.0.0.1:8000 --fault label-drift
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from flower_digits.task import FAULTS, DigitsConfig


def backend_config(num_cpus: int | None = None, client_cpus: int = 1) -> dict[str, Any]:
    """``client_cpus`` per simulated client; Ray gets the machine's cores (or ``num_cpus``).

    ``client_cpus == num_cpus`` gives one worker: clients run one after the other
    and replies arrive in a fixed order (bit-for-bit reproducible aggregation).
    """
    return {
        "client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": num_cpus or os.cpu_count() or 1,
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.ERROR,
        },
    }


def simulate(
    server_app: ServerApp,
    client_app: ClientApp,
    num_clients: int,
    num_cpus: int | None = None,
    client_cpus: int = 1,
) -> None:
    from flwr.simulation import run_simulation

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=num_clients,
        backend_config=backend_config(num_cpus, client_cpus),  # type: ignore[arg-type]
    )


def main(argv: list[str] | None = None) -> None:
    from flower_digits.client_app import make_client_app
    from flower_digits.server_app import make_server_app

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--monitor", help="fedsentinel URL (omit for an unmonitored run)")
    p.add_argument("--run-id", default="flower-digits")
    p.add_argument("--clients", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--alpha", type=float, default=0.5, help="Dirichlet concentration (smaller: more non-IID)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fault", choices=FAULTS, default="none")
    p.add_argument("--fault-client", type=int, default=0)
    p.add_argument("--fault-round", type=int, default=3)
    p.add_argument(
        "--crash-client", type=int, default=-1, help="this client fails in --crash-round"
    )
    p.add_argument("--crash-round", type=int, default=2)
    a = p.parse_args(argv)
    cfg = DigitsConfig(
        num_clients=a.clients,
        rounds=a.rounds,
        alpha=a.alpha,
        seed=a.seed,
        fault=a.fault,
        fault_client=a.fault_client,
        fault_round=a.fault_round,
        crash_client=a.crash_client,
        crash_round=a.crash_round,
    )
    monitored = a.monitor is not None
    simulate(
        make_server_app(cfg, monitor=a.monitor, run_id=a.run_id),
        make_client_app(cfg, monitored=monitored),
        cfg.num_clients,
    )


if __name__ == "__main__":
    main()
