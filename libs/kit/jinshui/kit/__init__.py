"""What every Jinshui service is built from."""
