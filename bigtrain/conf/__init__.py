"""The built-in Hydra presets, composed as `pkg://bigtrain.conf` (a package so wheels carry them)."""
