"""``python -m ringkit.sim ...``: the same commands as ``ringkit sim ...``."""

from ringkit.cli.sim import sim

sim(prog_name="python -m ringkit.sim")
