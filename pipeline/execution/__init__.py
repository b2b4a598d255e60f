"""Running a plan on Ray: the driver, the one actor pool, the model actor, progress and estimates.

This is the only package that imports Ray. Everything it hands to an actor runs through
`pipeline.processing`, which is plain Python and runs the same without Ray.
"""
