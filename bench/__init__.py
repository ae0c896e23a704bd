"""The benchmark behind BENCHMARKS.md: run it with bench/run (see ``bench/run --help``)."""
