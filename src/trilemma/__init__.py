"""trilemma."""
