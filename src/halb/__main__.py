from halb.cli.main import run

run()
