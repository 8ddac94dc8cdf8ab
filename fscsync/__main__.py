from fscsync.cli import run

run()
