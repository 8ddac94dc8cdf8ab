from fscsync.cli.main import run

run()
