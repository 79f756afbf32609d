"""The launchers by name, as `run_all.py --launcher` offers them (see `benchmarks.run.launch`).

Each is launcher(cells, methods, ctx, dry_run=False, options=LaunchOptions) -> Outcome. Ray and submitit are
imported only when their launcher runs, so the local launcher needs neither.
"""

from benchmarks.run.launch import run_local
from benchmarks.run.ray_launch import run_ray
from benchmarks.run.slurm_launch import run_slurm

LAUNCHERS = {"local": run_local, "ray": run_ray, "slurm": run_slurm}
