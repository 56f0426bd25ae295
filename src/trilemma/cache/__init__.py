"""The journal's caches: exact (same prompt and settings) and semantic (a similar prompt).

:mod:`trilemma.cache.keys` says what makes two calls the same; :mod:`trilemma.cache.semantic`
embeds prompts and finds the nearest earlier one. The entries live in the journal.
"""
