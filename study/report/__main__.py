"""``python -m study.report``: see study/report/__init__.py."""

from study.report.cli import main

main()
