"""The platform benchmark's CPU accounting, on real processes: a component's whole tree is
counted (children it started, and children that exited and were waited for), an idle one is
near zero."""

from __future__ import annotations

import subprocess
import sys

from maquette.bench.platform_load import measure_cpu

# A parent that starts a child spinning for a second and waits for it: the child's CPU shows up
# in the parent's cutime once it has exited.
SPIN = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end: pass\n"
PARENT = (
    "import subprocess, sys, time\n"
    "subprocess.run([sys.executable, '-c', {spin!r}])\n"
    "subprocess.Popen([sys.executable, '-c', {spin_long!r}]).wait()\n"
)


def test_a_components_tree_is_counted_and_an_idle_one_is_near_zero() -> None:
    script = PARENT.format(spin=SPIN.format(s=0.8), spin_long=SPIN.format(s=10))
    busy = subprocess.Popen([sys.executable, "-c", script])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        # Over these 2 s: the first child's spin ends (waited for: the parent's cutime), the
        # second child spins throughout (a live descendant).
        cpu = measure_cpu({"busy": busy.pid, "idle": idle.pid}, 2.0)
    finally:
        for proc in (busy, idle):
            subprocess.run(["pkill", "-P", str(proc.pid)], check=False)
            proc.kill()
            proc.wait()
    assert cpu["busy"] > 40, cpu  # one spinning process is ~100 on an idle core
    assert cpu["idle"] < 5, cpu
