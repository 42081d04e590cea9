"""The `jinshui` command: run the stack on one machine, issue development tokens, and the test plugin."""
