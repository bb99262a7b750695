"""Benchmarks behind `qknorm bench` (the scripts under bench/ call these): each prints a table of ratios
against the anchors measured in the same run and writes JSON + markdown for bench/results/."""
