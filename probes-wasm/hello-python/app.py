"""hello-python: the heartbeat probe, written in Python.

A template for probes in Python: copy this directory, rename the probe
(its `name` below must be its file's name, `NAME.wasm`), and build it
with componentize-py against `wit/probe.wit` (see README.md).
"""

import wit_world
from componentize_py_types import Err
from wit_world.imports import log, records, types

NAME = "hello-python"
CLASSIFICATION = f"org.example/{NAME}/ping"


class WitWorld(wit_world.WitWorld):
    def describe(self) -> types.Manifest:
        # What the probe is and what it asks for; runs with no capabilities.
        return types.Manifest(
            name=NAME,
            version="0.1.0",
            description="Heartbeat, written in Python (template)",
            classifications=[f"org.example/{NAME}/*"],
            triggers=[types.Trigger_OnStart(), types.Trigger_Manual()],
            read_paths=[],
            max_records_per_hour=60,
            sources=[],
        )

    def handle(self, e: types.Event) -> None:
        # `telemctl probe run hello-python -- fail` shows what an error does.
        if isinstance(e, types.Event_Manual) and e.value[:1] == ["fail"]:
            raise Err("asked to fail")
        kind = type(e).__name__.removeprefix("Event_").lower()
        log.log(log.Level.INFO, f"heartbeat ({kind})")
        try:
            records.send(
                types.TelemetryRecord(
                    classification=CLASSIFICATION,
                    severity=1,
                    payload_version=1,
                    payload=f"hello from Python ({kind})\n",
                    event_id=None,
                )
            )
        except Err as refused:
            # The host's own limits (the hourly budget, a full spool) are
            # not the probe's failure: note them and carry on. A record
            # the probe got wrong (not granted, invalid) is a bug: raise.
            if isinstance(refused.value, (types.SendError_RateLimited, types.SendError_Refused)):
                log.log(log.Level.DEBUG, f"record not sent: {refused.value}")
            else:
                raise
