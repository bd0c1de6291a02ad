"""What the applications share: settings and presets, cache, phases, workspace, stage 1 / stage 2
runs, methods, forgetting curves, evaluation and report folders."""
