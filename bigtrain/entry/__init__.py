"""Entry points: the console scripts (cli), which launcher started the process (launcher),
process-wide setup (process), and one training run assembled from its components (run, assemble)."""
