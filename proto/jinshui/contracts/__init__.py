"""Jinshui's event contracts: the CloudEvents envelope, streams and subjects, and the event models."""
