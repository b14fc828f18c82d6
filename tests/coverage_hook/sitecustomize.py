"""Measures coverage in every Python process of a test run, the commands the tests launch included (`make coverage`
puts this folder on PYTHONPATH, so each process imports it at startup). Elsewhere it does nothing."""

import os

_ROOT = os.environ.get("VIDBOOTH_COVERAGE")
if _ROOT:
    import coverage

    _coverage = coverage.Coverage(data_file=os.path.join(_ROOT, ".coverage-data", ".coverage"), data_suffix=True,
                                  auto_data=True, source=[os.path.join(_ROOT, "vidbooth")], config_file=False)
    # a process that imports no vidbooth (a test's helper script) would say so on its stderr, which tests read
    _coverage.set_option("run:disable_warnings", ["no-data-collected", "module-not-imported"])
    _coverage.start()
