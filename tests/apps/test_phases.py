"""`Phases`: wall and CPU seconds per phase; a sleeping phase takes wall time and almost no CPU."""

from __future__ import annotations

import time

from sfd.apps.harness.phases import Phases


def test_phases_record_wall_and_cpu_seconds_apart(capsys) -> None:
    phases = Phases("sfd test", 2)
    with phases.phase("wait", "waiting"):
        time.sleep(0.3)
    with phases.phase("work", "working"):
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
    wall, cpu = phases.finish(), phases.finish_cpu()
    assert set(wall) == set(cpu) == {"wait", "work", "total"}
    # Orderings only, none that a loaded machine can break: sleeping costs wall time and (almost)
    # no CPU, spinning costs CPU time, and CPU time never runs ahead of the wall clock here.
    assert wall["wait"] >= 0.3 and cpu["work"] >= 0.3
    assert cpu["wait"] < cpu["work"] and cpu["total"] >= cpu["work"]
    assert "[sfd test] 1/2 waiting" in capsys.readouterr().err
