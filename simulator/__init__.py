"""fedsentinel's built-in FL simulator: real models trained on real data, with faults on purpose.

Public surface::

    Scenario, FaultSpec, demo_scenario      # what to simulate (simulator.scenario)
    run_scenario(scenario, sink) -> SimulationResult
    Simulation                               # round-by-round access (benchmarks, tests)
"""

from simulator.scenario import FAULT_KINDS, FaultSpec, Scenario, demo_scenario
from simulator.simulation import Simulation, SimulationResult, build_federation, run_scenario

__all__ = [
    "FAULT_KINDS",
    "FaultSpec",
    "Scenario",
    "Simulation",
    "SimulationResult",
    "build_federation",
    "demo_scenario",
    "run_scenario",
]
