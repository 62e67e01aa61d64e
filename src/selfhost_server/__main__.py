"""``python -m selfhost_server``: the ``kiiaren-server`` command line."""

from selfhost_server.cli import run

if __name__ == "__main__":
    run()
