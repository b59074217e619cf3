"""The mutation harness, shared by the session, and its kill-rate summary at the end of the run."""

from __future__ import annotations

import json
import os

import pytest

from tests.mutation.harness import Harness

_HARNESS = pytest.StashKey[Harness]()


@pytest.fixture(scope="session")
def harness(request, tmp_path_factory) -> Harness:
    """One harness per session: each model is optimized once, each case runs once."""
    instance = Harness(tmp_path_factory.mktemp("mutation"))
    request.config.stash[_HARNESS] = instance
    return instance


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    instance = config.stash.get(_HARNESS, None)
    if instance is not None and instance.outcomes:
        terminalreporter.write_sep("-", "mutation kill rate")
        terminalreporter.write_line(instance.summary())
        path = os.environ.get("GRAPHOPT_MUTATION_REPORT")
        if path:
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(instance.to_dict(), handle, indent=2)
                handle.write("\n")
