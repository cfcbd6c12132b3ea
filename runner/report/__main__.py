"""`python -m runner.report`: the report's command line (runner.report.cli)."""

import sys

from runner.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
