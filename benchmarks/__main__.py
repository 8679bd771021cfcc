"""`python -m benchmarks [--quick] [--only NAME,...]`: see benchmarks/runner.py."""

from benchmarks.runner import main

raise SystemExit(main())
