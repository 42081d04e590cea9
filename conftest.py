pytest_plugins = ["jinshui.cli.testing"]
