"""``python -m study.sweep``: see study/sweep/__init__.py."""

import sys

from study.sweep.cli import main

sys.exit(main())
