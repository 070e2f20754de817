"""``python -m outgrow.cli``: the same as the ``outgrow`` console script."""

import sys

from outgrow.cli.main import main

sys.exit(main())
