"""On-demand benchmarks of r3 (speed and memory). Run: ``python -m benchmarks.run [--only NAME ...] [--quick]``."""
