"""Stand-in for `wandb` on an offline machine that lacks it (benchmarks/tools/device_check.sh puts this folder on
PYTHONPATH only when `import wandb` fails there).

avalanche-lib imports wandb at import time (avalanche/evaluation/metrics/confusion_matrix.py) but uses it only in
its Weights & Biases logger, which the harness never builds; the real wheel (20 MB plus its requirements) would
take a third of the 64 MiB a device call may carry. Any attribute use fails loudly instead of doing nothing.
"""


def __getattr__(name):
    raise ImportError(
        f"wandb.{name}: this is the offline stand-in from benchmarks/tools/offline_stubs (device_check.sh); "
        "install the real wandb to use the Weights & Biases logger"
    )
