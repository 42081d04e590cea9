from jinshui.cli.main import main

main()
