"""Child process of the versioning contract test: starts v1 sagas and waits to be killed.

usage: versioned_child.py NAME EFFECTS MARKER SAGA_ID=PAUSE_AT...

Storage and lease come from SAGAZ_STORAGE_URL and SAGAZ_LEASE_SECONDS.
"""

from __future__ import annotations

import asyncio
import sys

from versioned_sagas import set_pausing, v1

import sagaz
from sagaz import SagaConfig


async def main(argv: list[str]) -> None:
    name, effects, marker, *runs = argv
    sagaz.configure(SagaConfig.from_env())
    set_pausing(True)
    saga = v1(name)
    await asyncio.gather(*(
        saga.execute({"effects": effects, "marker": marker, "pause_at": pause},
                     saga_id=saga_id)
        for saga_id, pause in (run.split("=", 1) for run in runs)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
