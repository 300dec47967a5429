"""``python -m polystep_neuro``: the same as the ``polystep-neuro`` command."""

import sys

from polystep_neuro.cli import main

sys.exit(main())
