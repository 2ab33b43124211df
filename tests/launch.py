"""``python tests/launch.py ARGS``: xpgrad's own ``main()``, with some datasets' mirrors replaced.

``XPGRAD_TEST_MIRRORS='{"kmnist": ["http://127.0.0.1:PORT/"]}'`` gives the named
datasets only these mirrors, so a download test in a subprocess talks to a
loopback server and never to the internet. ``XPGRAD_TEST_ADDRESS_SPACE=N``
caps the process's address space at N bytes above what it uses once xpgrad is
imported, to run out of memory where a test wants it. Nothing else differs
from the ``xpgrad`` console script.
"""

import json
import os
import resource
import sys
from dataclasses import replace

from xpgrad import (
    cli,
    data,
    training,  # noqa: F401 - imported before the address space is capped
)

for name, mirrors in json.loads(os.environ.get("XPGRAD_TEST_MIRRORS", "{}")).items():
    data.DATASETS[name] = replace(data.DATASETS[name], mirrors=tuple(mirrors))

if os.environ.get("XPGRAD_TEST_ADDRESS_SPACE"):
    with open("/proc/self/status") as status:
        used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    cap = used + int(os.environ["XPGRAD_TEST_ADDRESS_SPACE"])
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

sys.exit(cli.main())
