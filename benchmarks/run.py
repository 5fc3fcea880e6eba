"""`make bench`: the kit's cases against NT (ratio ntc/NT), then every benchmarks/bench_*.py.

Each benchmark script is standalone (`python benchmarks/bench_X.py --help`); this runs them in
turn with their default (full) settings, or `--quick` ones with `make bench QUICK=1`.
"""

import os
import subprocess
import sys
from pathlib import Path

from ntc import bench

if __name__ == '__main__':
    quick = os.environ.get('QUICK') == '1'
    print('== bench kit cases (float32, jitted, steady state) ==', flush=True)
    bench.main([] if quick else ['--compare'])
    for script in sorted(Path(__file__).parent.glob('bench_*.py')):
        print(f'\n== {script.name} ==', flush=True)
        subprocess.run([sys.executable, str(script)] + (['--quick'] if quick else []), check=False)
