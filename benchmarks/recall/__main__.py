"""`python -m benchmarks.recall --cases ...`."""

from benchmarks.recall.cli import main

raise SystemExit(main())
