"""``python -m prtk.cli`` (and ``torchrun ... -m prtk.cli``): the ``prtk`` command."""

from prtk.cli.app import main

main()
