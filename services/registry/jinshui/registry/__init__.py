"""Registry: joint collection under "one household, one code" (一户一码)."""
