from gres_cli.cli import main

main()
