"""The leaderboard: pages, tables, plots and CSV rendered from the result records alone."""
from pathlib import Path

#: numbers the references report, shown beside the harness's rows (see the file's header)
REPORTED = Path(__file__).parent / "reported.yaml"
