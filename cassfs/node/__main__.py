"""``python -m cassfs.node start|stop|status``: manage the local Cassandra development node."""

from cassfs.node.launcher import cli

if __name__ == "__main__":
    cli(prog_name="python -m cassfs.node")
