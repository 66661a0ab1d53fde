"""``python -m prtk``: the ``prtk`` command line."""

from prtk.cli import main

main()
