"""The `sdq` command: run the service locally, talk to its API, run the worker, benchmarks and the cost model."""
