"""``python -m study.evaluate``: see study/evaluate/cli.py."""

from study.evaluate.cli import main

main()
