"""`python -m deployments.cli` runs perps-bot (the same as the console script)."""

from __future__ import annotations

import sys

from deployments.cli import main

sys.exit(main())
