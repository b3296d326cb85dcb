"""Child process of the crash-recovery test: runs one saga of crash_sagas until it is killed.

usage: crash_child.py {compensate,resume} SAGA_ID EFFECTS_FILE [--fail-step STEP]

Storage and lease come from SAGAZ_STORAGE_URL and SAGAZ_LEASE_SECONDS; the boundary to pause at
from SAGAZ_CRASH_PAUSE_AT (see crash_sagas). Prints the final status if it gets that far.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from crash_sagas import SAGAS, PauseAfterCommit

import sagaz
from sagaz import SagaConfig


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=sorted(SAGAS))
    parser.add_argument("saga_id")
    parser.add_argument("effects")
    parser.add_argument("--fail-step")
    args = parser.parse_args(argv)
    sagaz.configure(SagaConfig.from_env(listeners=[PauseAfterCommit()]))
    context = {"effects": args.effects}
    if args.fail_step:
        context["fail_step"] = args.fail_step
    result = await SAGAS[args.mode].execute(context, saga_id=args.saga_id)
    print(result.status.value, flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
