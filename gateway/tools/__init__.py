"""Offline jobs run from the CLI: `semcache calibrate` and `semcache tune`."""
