"""`python -m trustfleet_server.cli`: the same as the `trustfleet` command."""

import sys

from trustfleet_server.cli import main

sys.exit(main())
