"""Scenario files: YAML and TOML load the same thing; mistakes are named."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from simulator.scenario import FAULT_KINDS, FaultSpec, Scenario, demo_scenario

YAML = """
run_id: yaml-run
dataset: digits
partition: dirichlet
alpha: 0.3
num_clients: 12
rounds: 15
algorithm: fedprox
mu: 0.05
dp: {noise_multiplier: 1.1, clip_norm: 1.0}
faults:
  - kind: label_drift
    clients: [3, c004]
    onset_round: 10
    severity: 0.6
    target_class: 2
  - {kind: straggler, clients: [1], slowdown: 5}
"""

TOML = """
run_id = "yaml-run"
dataset = "digits"
partition = "dirichlet"
alpha = 0.3
num_clients = 12
rounds = 15
algorithm = "fedprox"
mu = 0.05

[dp]
noise_multiplier = 1.1
clip_norm = 1.0

[[faults]]
kind = "label_drift"
clients = [3, "c004"]
onset_round = 10
severity = 0.6
target_class = 2

[[faults]]
kind = "straggler"
clients = [1]
slowdown = 5
"""


def test_yaml_and_toml_agree(tmp_path) -> None:
    (tmp_path / "s.yaml").write_text(YAML)
    (tmp_path / "s.toml").write_text(TOML)
    a = Scenario.from_file(tmp_path / "s.yaml")
    b = Scenario.from_file(tmp_path / "s.toml")
    assert a == b
    assert a.faults[0].options == {"target_class": 2}
    assert [a.client_index(c) for c in a.faults[0].clients] == [3, 4]
    assert a.faults[1].onset_round == 1 and a.faults[1].options == {"slowdown": 5}
    assert a.effective_mu == 0.05 and a.dp.delta == 1e-5
    assert a.sketch_dim == 64 and a.bins == 10


def test_defaults_and_ids() -> None:
    s = Scenario(num_clients=1500)
    assert s.client_id(7) == "c0007" and s.client_index("c0007") == 7
    assert Scenario().client_id(3) == "c003"
    assert Scenario(algorithm="fedavg", mu=0.5).effective_mu == 0.0
    assert len(FAULT_KINDS) == 16
    assert demo_scenario().faults


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"faults": [{"kind": "label_flipp", "clients": [1]}]}, "label_flipp"),
        ({"faults": [{"kind": "label_flip", "clients": [10]}]}, "outside 0..9"),
        ({"faults": [{"kind": "label_flip", "clients": ["x7"]}]}, "neither an index"),
        (
            {"faults": [{"kind": "label_flip", "clients": [1], "onset_round": 30}]},
            "after the last round",
        ),
        ({"faults": [{"kind": "straggler", "clients": [1], "scale": 3}]}, "unknown option 'scale'"),
        ({"faults": [{"kind": "noisy_labels", "clients": [1], "severity": 2}]}, "must be <= 1"),
        ({"faults": [{"kind": "label_flip", "clients": []}]}, "at least one client"),
        ({"partition": "natural"}, "no natural split"),
        ({"num_clients": 0}, "greater than or equal to 1"),
        ({"rounds": 5, "lr": -1}, "greater than 0"),
        ({"colour": "red"}, "Extra inputs"),
    ],
)
def test_mistakes_are_named(data: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Scenario.model_validate(data)


def test_from_file_rejects_other_suffixes(tmp_path) -> None:
    (tmp_path / "s.json").write_text("{}")
    with pytest.raises(ValueError, match="must end in"):
        Scenario.from_file(tmp_path / "s.json")


def test_fault_options_roundtrip() -> None:
    f = FaultSpec.model_validate({"kind": "exploding_update", "clients": [0], "scale": 1e3})
    assert f.options == {"scale": 1e3}
    assert FaultSpec.model_validate(f.model_dump()) == f
    assert f.active(1) and not FaultSpec(
        kind="dropout", clients=[0], onset_round=3, end_round=4
    ).active(5)


def test_a_fault_listing_a_client_twice_is_refused() -> None:
    import pytest
    from pydantic import ValidationError

    from simulator.scenario import FaultSpec, Scenario

    with pytest.raises(ValidationError, match="lists a client twice"):
        Scenario(
            num_clients=5,
            rounds=3,
            faults=[FaultSpec(kind="exploding_update", clients=[3, "c003"], onset_round=1)],
        )


def test_dp_needs_a_positive_noise_multiplier() -> None:
    import pytest
    from pydantic import ValidationError

    from simulator.scenario import DPSettings

    with pytest.raises(ValidationError):
        DPSettings(noise_multiplier=0, clip_norm=1.0)
