"""secprune on Flower: a ServerApp and a ClientApp that run any strategy with secprune's own secure aggregation.

``secprune serve`` / ``secprune client`` start them without writing Flower code; the app folder for
``flwr run`` is :data:`APP_DIR`. See :mod:`secprune.flower.driver` for the stages and README for commands.
"""

from pathlib import Path

APP_DIR = Path(__file__).parent / "app"
