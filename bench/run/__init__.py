"""Running the whole suite: the plan of ``elbobench run`` and its parts."""
