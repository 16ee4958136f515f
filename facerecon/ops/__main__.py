"""``python -m facerecon.ops [--verbose]``: build (or load from its cache) the compiled
nearest-neighbour extension and print one line saying which backend is ready.

The command lives here rather than in ``facerecon.ops.build`` because the package imports that
module: running it with ``-m`` would execute it a second time (Python warns about that).
"""

import sys

from facerecon.ops.build import main

sys.exit(main())
