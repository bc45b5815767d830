"""``python -m cassfs``: the ``cassfs`` command."""

from cassfs.cli import main

main()
