from vidbooth.cli.app import run

run()
