"""A writer that fsyncs a 100-byte file every 5 ms until PATH.stop appears, then reports how many
writes it made and its slowest: writes through a mount wait while a prune folds moments.
    python3 benches/probe.py PATH"""
import os
import sys
import time

p = sys.argv[1]
worst = 0.0
n = 0
while not os.path.exists(p + ".stop"):
    t = time.time()
    with open(p, "w") as f:
        f.write("x" * 100)
        f.flush()
        os.fsync(f.fileno())
    worst = max(worst, time.time() - t)
    n += 1
    time.sleep(0.005)
print(f"writer during the prune: {n} fsync'd writes, slowest {worst * 1000:.0f} ms")
