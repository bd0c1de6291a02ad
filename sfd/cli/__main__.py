"""`python -m sfd.cli ...` (e.g. under torchrun) is the `sfd` command."""

import sys

from sfd.cli import main

sys.exit(main())
