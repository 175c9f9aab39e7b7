"""pytest plugin for the mutation suite: keep only the tests of the tiers a mutant is graded with.

Loaded next to grader.plugin (`-p grader.instructor.mutants.select --mutant-tiers interpreter,gpu`). Tests of
the other tiers are deselected, so they count neither as earned nor as available points.
"""
from grader import tiers


def pytest_addoption(parser):
    parser.getgroup("grader").addoption("--mutant-tiers", default=None,
                                        help="comma-separated tiers to keep (mutation suite)")


def pytest_collection_modifyitems(config, items):
    wanted = config.getoption("mutant_tiers")
    if not wanted:
        return
    keep = set(wanted.split(","))
    dropped = [item for item in items if tiers.of(item) not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if tiers.of(item) in keep]
