"""The deterministic simulator (issue 21): docs/simulation.md."""
