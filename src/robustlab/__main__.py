"""``python -m robustlab`` runs the command line (see :mod:`robustlab._launch`)."""

import sys

from robustlab._launch import main

sys.exit(main())
