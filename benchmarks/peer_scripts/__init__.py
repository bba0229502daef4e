"""Baselines that `benchmarks/bench_peers.py` runs as their own processes, most of them in the peers' venv
(`benchmarks/peers_setup.sh`). Each prints one JSON object on its last line of output."""
