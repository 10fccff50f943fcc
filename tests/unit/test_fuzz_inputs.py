"""Fuzzing the loaders: 1,000 hostile inventories and playbooks (see ``tests/fuzz_inputs.py``).

The only allowed outcomes are a valid model (that the plan and the DNS driver accept) or a
ConfigError whose every problem names the file and a line; each case within 2 s and 100 MB.
``bench/fuzz_inputs.py`` runs the same generator for 10,000 cases and more.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from drctl.model.inventory import Inventory
from tests.fuzz_inputs import Case, cases, check, example_inventory

MAX_MS = 2000
MAX_PEAK_MB = 100
SEEN: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def inventory() -> Inventory:
    return example_inventory()


@settings(max_examples=1000, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(case=cases())
def test_loading_any_input_is_total_and_bounded(fuzz_dir: Path, inventory: Inventory, case: Case) -> None:
    outcome = check(case, fuzz_dir, inventory)
    SEEN[outcome.kind] += 1
    assert outcome.kind != "other", f"{outcome.detail}\n--- input ({case.base}):\n{case.data[:4000]!r}"
    assert outcome.ms < MAX_MS, f"{outcome.ms:.0f} ms for {case.data[:2000]!r}"
    assert outcome.peak_mb < MAX_PEAK_MB, f"{outcome.peak_mb:.1f} MB for {case.data[:2000]!r}"


def test_the_fuzz_reached_valid_models_and_errors() -> None:
    """The mutations are neither all fatal nor all harmless (needs the test above, in this run)."""
    if not SEEN:
        pytest.skip("the fuzz test did not run in this session")
    assert SEEN["valid"] >= 20 and SEEN["config_error"] >= 500, SEEN
