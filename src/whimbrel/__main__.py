from whimbrel.cli import run

run()
