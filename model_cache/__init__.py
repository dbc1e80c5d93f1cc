"""The node-local model cache and the tiny test model builder."""
