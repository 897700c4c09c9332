"""``python -m robustlab`` runs the command line."""

import sys

from robustlab.cli import main

sys.exit(main())
