"""Speed and scale benchmarks: each prints ratios against a baseline run in the same process.

`make bench` (python -m benchmarks) runs them all and writes benchmarks/results.md.
"""
