"""The trainer's settings: one table of every setting; the config file, environment
and flags derived from it."""
