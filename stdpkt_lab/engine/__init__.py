"""Turns descriptions into running instances: kernels, pipes, links, the exec agent."""
