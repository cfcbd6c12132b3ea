"""`python -m runner.report`: the report's command line, runner.reporting.cli (the package's
modules are listed in runner/reporting/__init__.py)."""

import sys

from runner.reporting.cli import main

if __name__ == "__main__":
    sys.exit(main())
