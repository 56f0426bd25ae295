"""The executor and its parts: gates, budget, retry policy, step kinds."""
