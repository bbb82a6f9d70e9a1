"""The serving benchmark (``npm run bench``): see bench/run.py and README.md, "Benchmark"."""
